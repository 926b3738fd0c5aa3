"""The Dagster jobs of the real-Dagster layer (tests/dagster/harness.py). Written for every
Dagster the layer runs on (the 1.3 and 1.7 trees, a pip-installed one): only @op, @job,
executors and Config-free op config.

  ok_job      in-process, one op that succeeds                         -> SUCCESS, exit 0
  fail_job    in-process, one op that raises                           -> FAILURE, exit 1
  crash_job   in-process, one op that calls os._exit(3)                -> STARTED, exit 3
  slow_job    in-process, one op that sleeps `seconds` (config); with `once_file` it sleeps
              only the first time (the file marks an attempt), so a resumed run finishes
  slow_exit_job  in-process, succeeds at once; the run worker then takes `seconds` (config) to
              exit (an atexit hook), after its RUN_SUCCESS is written
  mp_job      multiprocess (Dagster's default executor): `first` then `second`; `second`
              sleeps `seconds` and, with `pid_dir`, first starts a grandchild that calls
              setsid() and double-forks (its pid in pid_dir/grandchild), and writes its own
              pid to pid_dir/step

Every process of a run inherits DSW_HARNESS_MARK from the daemon's runs.env, which is how the
harness finds what is still alive.
"""
import os
import time

from dagster import Definitions, Field, in_process_executor, job, multiprocess_executor, op


def _nap(seconds):
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.05)


@op
def ok_op():
    return 1


@op
def fail_op():
    raise Exception("fail_op fails as the harness asks")


@op
def crash_op():
    os._exit(3)


@op(config_schema={"seconds": Field(float, default_value=60.0),
                   "once_file": Field(str, default_value="")})
def slow_op(context):
    once = context.op_config["once_file"]
    if once:
        if os.path.exists(once):
            return 0
        with open(once, "w") as f:
            f.write(str(os.getpid()))
    _nap(context.op_config["seconds"])
    return 1


@op(config_schema={"seconds": Field(float, default_value=7.0)})
def slow_exit_op(context):
    """Succeeds at once; the run worker then takes `seconds` to exit (an atexit hook)."""
    import atexit

    atexit.register(_nap, context.op_config["seconds"])
    return 1


@op
def first(context):
    return 1


def _grandchild(pid_dir):
    """setsid + double fork: the grandchild leaves the run's process group and session."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        _nap(600)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    gpid = os.read(r, 32).decode()
    os.close(r)
    with open(os.path.join(pid_dir, "grandchild.tmp"), "w") as f:
        f.write(gpid)
    os.rename(os.path.join(pid_dir, "grandchild.tmp"), os.path.join(pid_dir, "grandchild"))


@op(config_schema={"seconds": Field(float, default_value=0.0),
                   "pid_dir": Field(str, default_value="")})
def second(context, x):
    pid_dir = context.op_config["pid_dir"]
    if pid_dir:
        _grandchild(pid_dir)
        with open(os.path.join(pid_dir, "step.tmp"), "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.path.join(pid_dir, "step.tmp"), os.path.join(pid_dir, "step"))
    _nap(context.op_config["seconds"])
    return x + 1


@job(executor_def=in_process_executor)
def ok_job():
    ok_op()


@job(executor_def=in_process_executor)
def fail_job():
    fail_op()


@job(executor_def=in_process_executor)
def crash_job():
    crash_op()


@job(executor_def=in_process_executor)
def slow_job():
    slow_op()


@job(executor_def=in_process_executor)
def slow_exit_job():
    slow_exit_op()


@job(executor_def=multiprocess_executor)
def mp_job():
    second(first())


defs = Definitions(jobs=[ok_job, fail_job, crash_job, slow_job, slow_exit_job, mp_job])
