"""The step jobs of the real-Dagster layer (tests/dagster/harness_steps.py): jobs whose steps
dagster_sqs_worker's `sqs_executor` sends to the queue as `execute_step` messages, each run by
a daemon as a supervised `dagster api execute_step` child. Written for the 1.3 and 1.7 trees
(only @op, @job, RetryPolicy and Config-free op config).

  fanout_sqs / fanout_inproc / fanout_mp
              the same graph with three executors: `root`, then FAN_WIDTH parallel ops
              `fan_0`.. (each naps FAN_NAP s and returns its index + the root's value), then
              `fan_in` (their sum; FAN_EXPECT)
  retry_sqs   `flaky` fails on its first attempt and succeeds on the second under
              RetryPolicy(max_retries=1) (op config `marker_dir`: a file there marks attempt 1),
              then `after_flaky`                                    -> SUCCESS
  fail_sqs    `always_fails` raises (RetryPolicy none)                -> STEP_FAILURE, FAILURE
  long_sqs    LONG_WIDTH parallel ops `long_0`.. that nap `seconds` (config, default 120)
  long_one_sqs  one op `long_one` that naps `seconds`
  one_sqs     one op `one` that returns at once

The *_sqs jobs use `sqs_executor` itself; its configuration is the run's own `execution`
config (steps_run_config: queue url, endpoint, region, claims ttl, health interval), stored with
the run, so the harness, the run worker and the step children all see the same one whatever
their environment. Without dagster_sqs_worker.executor the *_sqs jobs still load (the
in-process and multiprocess jobs must run without it); executing one fails and says why.
"""
import os
import time

from dagster import (
    Field,
    RetryPolicy,
    executor,
    in_process_executor,
    job,
    multiprocess_executor,
    op,
)

FAN_WIDTH = 6
FAN_NAP = 1.5
FAN_ROOT = 10
FAN_EXPECT = sum(FAN_ROOT + i for i in range(FAN_WIDTH))
LONG_WIDTH = 3


def _nap(seconds):
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.05)


def steps_run_config(queue_url, endpoint_url, claims_ttl, region="us-east-1",
                     health_check_interval=1, max_concurrent=16, run_config=None):
    """A run config with the sqs_executor's execution config (claims_ttl: the daemon's
    claims.ttl in seconds)."""
    cfg = dict(run_config or {})
    cfg["execution"] = {"config": {
        "queue_url": queue_url, "endpoint_url": endpoint_url, "region": region,
        "claims_ttl": float(claims_ttl), "health_check_interval": int(health_check_interval),
        "max_concurrent": int(max_concurrent)}}
    return cfg


def _unavailable(why):
    @executor(name="sqs_executor_unavailable")
    def sqs_executor_unavailable(_init_context):
        raise Exception("dagster_sqs_worker.executor.sqs_executor is not importable: " + why)

    return sqs_executor_unavailable


def _steps_executor():
    try:
        from dagster_sqs_worker.executor import sqs_executor
    except Exception as e:  # not built yet, or broken: the *_sqs jobs say so when run
        return _unavailable("%s: %s" % (type(e).__name__, e))
    return sqs_executor


STEPS_EXECUTOR = _steps_executor()


# ---- the fan-out ---------------------------------------------------------------------------

@op
def root():
    return FAN_ROOT


def _fan_op(i):
    @op(name="fan_%d" % i)
    def fan(x):
        _nap(FAN_NAP)
        return x + i

    return fan


FAN_OPS = [_fan_op(i) for i in range(FAN_WIDTH)]


@op
def fan_in(values):
    total = sum(values)
    if total != FAN_EXPECT:
        raise Exception("fan_in got %r (sum %d, want %d)" % (values, total, FAN_EXPECT))
    return total


def _fanout():
    """The graph of the three fan-out jobs (called in each @job body: a decorated job is what
    reconstructable() accepts)."""
    r = root()
    fan_in([f(r) for f in FAN_OPS])


@job(executor_def=STEPS_EXECUTOR)
def fanout_sqs():
    _fanout()


@job(executor_def=in_process_executor)
def fanout_inproc():
    _fanout()


@job(executor_def=multiprocess_executor)
def fanout_mp():
    _fanout()


# ---- retries and failures ------------------------------------------------------------------

@op(config_schema={"marker_dir": Field(str)}, retry_policy=RetryPolicy(max_retries=1))
def flaky(context):
    """Attempt 1 (no marker yet) writes the marker and raises; attempt 2 returns."""
    marker = os.path.join(context.op_config["marker_dir"], "flaky-attempt-1")
    if not os.path.exists(marker):
        with open(marker + ".tmp", "w") as f:
            f.write("%d %d" % (os.getpid(), context.retry_number))
        os.rename(marker + ".tmp", marker)
        raise Exception("flaky fails on its first attempt (retry_number %d)" %
                        context.retry_number)
    with open(os.path.join(context.op_config["marker_dir"], "flaky-attempt-2"), "w") as f:
        f.write("%d %d" % (os.getpid(), context.retry_number))
    return context.retry_number


@op
def after_flaky(n):
    return n + 1


@job(executor_def=STEPS_EXECUTOR)
def retry_sqs():
    after_flaky(flaky())


@op
def always_fails():
    raise Exception("always_fails fails as the harness asks")


@job(executor_def=STEPS_EXECUTOR)
def fail_sqs():
    always_fails()


# ---- long steps (kill -9, terminate) -------------------------------------------------------

def _long_op(name):
    @op(name=name, config_schema={"seconds": Field(float, default_value=120.0)})
    def long_step(context):
        _nap(context.op_config["seconds"])
        return 1

    return long_step


LONG_OPS = [_long_op("long_%d" % i) for i in range(LONG_WIDTH)]
LONG_ONE = _long_op("long_one")


@job(executor_def=STEPS_EXECUTOR)
def long_sqs():
    for o in LONG_OPS:
        o()


@job(executor_def=STEPS_EXECUTOR)
def long_one_sqs():
    LONG_ONE()


@op
def one():
    return 1


@job(executor_def=STEPS_EXECUTOR)
def one_sqs():
    one()
