#!/usr/bin/python3
"""The step scenarios of the real-Dagster layer (issue 18, docs/STEPS contract): real daemons run
real `dagster api execute_step` children sent by dagster_sqs_worker's `sqs_executor` from a real
run worker, against real PostgreSQL and moto. run.py starts it once per tree after harness.py,
with the same arguments; it writes one JSON result per scenario, as harness.py does.

The run worker runs under a daemon too: the run is launched through Dagster's own API with the
harness's launcher (an `execute_job` TaskIQ envelope, as harness.py's scenarios), a daemon runs
`dagster api execute_run`, and that run worker's executor sends one `execute_step` message per
step to the queue the run's executor config names (tests/dagster/jobs_steps.py
steps_run_config; the daemon passes the AWS credentials it needs through runs.env).

  steps:baseline   the fan-out job in-process and with the multiprocess executor (no daemon):
                   its wall time, to compare with steps:fanout
  steps:fanout     2 daemons on one queue (runs and steps), 4 slots each -> SUCCESS, every step
                   started once, one step claim per step (attempt 1, exited 0), steps on both
  steps:warm       steps:fanout with runs.warm = 4 on both daemons -> SUCCESS, every step once,
                   the run worker and steps handed to warm runners (at least one step)
  steps:retry      a step failing once under RetryPolicy(max_retries=1) -> UP_FOR_RETRY,
                   RESTARTED, SUCCESS, claims for attempts 1 and 2, run SUCCESS; and a step that
                   always fails -> STEP_FAILURE, run FAILURE
  steps:kill9      kill -9 of the daemon that runs the step (its own steps queue; the run worker
                   is on another daemon) -> the step fails its health check and the run fails
                   within claims.ttl + sweep (ttl 4 s, sweep 2 s); the claim ends `lost`
  steps:terminate  terminate the run while 3 steps run -> every step claim stopped/canceled,
                   no step process left, run CANCELED
  steps:duplicate  every step message delivered twice (a relay between the executor's queue
                   and the daemons') -> each step started once, one claim each, SUCCESS

usage: harness_steps.py --build DIR --db NAME --work DIR --out FILE [--only a,b] [--tree LABEL]
(--only: scenario names, or `steps` for all of them.) No fixed sleeps: every wait is a condition.
"""
import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PYPKG = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
sys.path.insert(0, HERE)
sys.path.insert(0, PYPKG)
from harness import Daemon, Failed, Harness, cmdline, expect, marked_pids, wait  # noqa: E402

PREFIX = "steps"
STEP_TYPES = ("STEP_START", "STEP_RESTARTED", "STEP_SUCCESS", "STEP_FAILURE",
              "STEP_UP_FOR_RETRY")
FAN_KEYS = None  # filled from jobs_steps in main()


# ---- reads -----------------------------------------------------------------------------------

def step_claims(h, rid):
    """Every step claim of a run, as dicts, in (step_key, attempt) order."""
    k = ("step_key", "attempt", "worker_id", "state", "exit_code", "term_signal", "outcome",
         "message_id", "receive_count", "stop_requested", "age")
    return [dict(zip(k, r)) for r in h.db.q(
        "SELECT step_key, attempt, worker_id, state, exit_code, term_signal, outcome, "
        "message_id, receive_count, stop_requested_at IS NOT NULL, "
        "extract(epoch FROM now() - heartbeat_at)::float8 "
        "FROM dagster_sqs_worker.step_claims WHERE run_id = %s ORDER BY step_key, attempt", rid)]


def step_counts(h, rid):
    """{step_key: {event type: count}} of the run's step events."""
    out = {}
    for key, t, n in h.db.q("SELECT step_key, dagster_event_type, count(*) FROM event_logs "
                            "WHERE run_id = %s AND step_key IS NOT NULL AND dagster_event_type "
                            "IS NOT NULL GROUP BY 1, 2", rid):
        out.setdefault(key, {})[t] = n
    return out


def durations(h, rid):
    """(PIPELINE_START -> terminal, first fan_* STEP_START -> last fan_* STEP_SUCCESS) in
    seconds from the event log's timestamps."""
    r = h.db.q(
        "SELECT extract(epoch FROM max(timestamp) FILTER (WHERE dagster_event_type IN "
        "('PIPELINE_SUCCESS', 'PIPELINE_FAILURE', 'PIPELINE_CANCELED')) - min(timestamp) "
        "FILTER (WHERE dagster_event_type = 'PIPELINE_START'))::float8, "
        "extract(epoch FROM max(timestamp) FILTER (WHERE dagster_event_type = 'STEP_SUCCESS' "
        "AND step_key LIKE 'fan\\_%%') - min(timestamp) FILTER (WHERE dagster_event_type = "
        "'STEP_START' AND step_key LIKE 'fan\\_%%'))::float8 "
        "FROM event_logs WHERE run_id = %s", rid)[0]
    return (round(r[0], 2) if r[0] is not None else None,
            round(r[1], 2) if r[1] is not None else None)


def worker_pid(worker_id):
    """The daemon pid in a worker id (host:pid:start)."""
    try:
        return int(worker_id.rsplit(":", 2)[1])
    except (AttributeError, IndexError, ValueError):
        return None


def step_pids(d):
    """The live `api execute_step` processes a daemon started."""
    return [p for p in marked_pids(d.mark) if "execute_step" in cmdline(p)]


# ---- runs ------------------------------------------------------------------------------------

def launch(h, inst, job_name, queue, steps_queue, ttl=2.0, run_config=None):
    """A run of a jobs_steps job, launched through Dagster's own API: the harness's launcher
    puts its execute_job envelope on `queue`; the run's executor config sends its steps to
    `steps_queue` and judges claims with the daemons' claims.ttl `ttl`."""
    import jobs_steps
    from dagster import reconstructable
    from dagster._core.storage.dagster_run import DagsterRunStatus

    recon = reconstructable(getattr(jobs_steps, job_name))
    cfg = jobs_steps.steps_run_config(steps_queue, h.moto, ttl, run_config=run_config)
    tags = {"dsw/harness_form": "taskiq", "dsw/harness_queue": queue}
    with h.lock:  # Dagster's snapshot check-then-insert races (as Harness.create says)
        run = inst.create_run_for_job(job_def=recon.get_definition(), run_config=cfg,
                                      tags=tags, job_code_origin=recon.get_python_origin(),
                                      status=DagsterRunStatus.NOT_STARTED)
    inst.launch_run(run.run_id, workspace=None)
    return run.run_id


def steps_env(ttl="2s", **over):
    """Daemon settings of a step scenario: 4 slots, the AWS credentials the run worker's
    executor needs to send step messages (runs.env), claims.ttl as the run config says."""
    env = {
        "DSW_RUNS_MAX_CONCURRENT": "4",
        "DSW_RUNS_ENV_AWS_ACCESS_KEY_ID": "testing",
        "DSW_RUNS_ENV_AWS_SECRET_ACCESS_KEY": "testing",
        "DSW_RUNS_ENV_AWS_EC2_METADATA_DISABLED": "true",
        "DSW_CLAIMS_TTL": ttl,
    }
    env.update(over)
    return env


def finish(h, rid, status, timeout=180):
    got = h.await_terminal(rid, timeout)
    claim = h.await_done(rid, timeout=60)
    expect(got == status, "run status %s, want %s (steps %s)" % (got, status,
                                                                 step_counts(h, rid)))
    return claim


def await_steps_done(h, rid, keys, timeout=30):
    """Every step claim of the run done (the daemons' exit records), and one for each key."""
    def ready():
        c = step_claims(h, rid)
        return (c and all(x["state"] == "done" for x in c) and
                keys <= {x["step_key"] for x in c} and c)
    return wait(ready, timeout, "the step claims of %s to be done (%s)" % (
        rid, [(x["step_key"], x["attempt"], x["state"]) for x in step_claims(h, rid)]))


def exactly_once(h, rid, keys, claims):
    """Every step key started once and succeeded once; one claim each, attempt 1, exit 0."""
    counts = step_counts(h, rid)
    bad = {k: counts.get(k) for k in keys if (counts.get(k) or {}).get("STEP_START") != 1 or
           (counts.get(k) or {}).get("STEP_SUCCESS") != 1}
    expect(not bad, "steps not started/succeeded exactly once: %s" % bad)
    by_key = {}
    for c in claims:
        by_key.setdefault(c["step_key"], []).append(c)
    expect(set(by_key) == set(keys), "step claims for %s, want %s" % (sorted(by_key),
                                                                      sorted(keys)))
    many = {k: [(c["attempt"], c["outcome"]) for c in v] for k, v in by_key.items()
            if len(v) != 1}
    expect(not many, "more than one step claim: %s" % many)
    wrong = [(c["step_key"], c["attempt"], c["outcome"], c["exit_code"], c["term_signal"])
             for c in claims if c["attempt"] != 1 or c["outcome"] != "exited" or
             c["exit_code"] != 0]
    expect(not wrong, "step claims not attempt 1 / exited 0: %s" % wrong)


def fan_run(h, inst, q):
    """The fan-out job launched on queue q (runs and steps): SUCCESS, the run worker exited 0,
    every step exactly once. (run id, step keys, step claims, launch->SUCCESS seconds)."""
    t0 = time.time()
    rid = launch(h, inst, "fanout_sqs", q, q)
    claim = finish(h, rid, "SUCCESS")
    call = time.time() - t0
    expect(claim["exit_code"] == 0, "run worker exit %s" % claim["exit_code"])
    keys = set(FAN_KEYS)
    claims = await_steps_done(h, rid, keys)
    exactly_once(h, rid, keys, claims)
    return rid, keys, claims, call


# ---- scenarios -------------------------------------------------------------------------------

def sc_baseline(h, inst):
    """The fan-out job without the daemon, on the same PostgreSQL instance: in-process, and
    multiprocess with max_concurrent = the fan width and with Dagster's default (CPUs)."""
    import jobs_steps
    from dagster import execute_job, reconstructable

    out = {}
    cases = (("inproc", "fanout_inproc", {}),
             ("mp", "fanout_mp", {"execution": {"config": {
                 "max_concurrent": jobs_steps.FAN_WIDTH}}}),
             ("mp_default", "fanout_mp", {}))
    for name, job, cfg in cases:
        cfg = dict(cfg, loggers={"console": {"config": {"log_level": "WARNING"}}})
        t0 = time.time()
        res = execute_job(reconstructable(getattr(jobs_steps, job)), instance=inst,
                          run_config=cfg)
        wall = time.time() - t0
        expect(res.success, "%s: the run failed" % job)
        expect(h.db.status(res.run_id) == "SUCCESS", "%s: status %s" % (
            job, h.db.status(res.run_id)))
        run_s, fan_s = durations(h, res.run_id)
        out[name] = {"wall_s": round(wall, 2), "run_s": run_s, "fan_s": fan_s}
    return {"detail": " ".join("%s: run %.1fs (fan %.1fs, call %.1fs)" % (
        k, v["run_s"], v["fan_s"], v["wall_s"]) for k, v in out.items()), "times": out}


def sc_fanout(h, inst):
    """2 daemons on one queue (runs and steps), 4 slots each: the run worker on one, its 8
    steps spread over both; each runs exactly once."""
    import jobs_steps

    q = h.sqs.queue("dsw-steps-fan-%s" % uuid.uuid4().hex[:8])
    a = Daemon(h, "stepfana", q, **steps_env()).start()
    b = Daemon(h, "stepfanb", q, **steps_env()).start()
    try:
        rid, keys, claims, call = fan_run(h, inst, q)
        pids = {worker_pid(c["worker_id"]) for c in claims}
        expect(pids <= {a.proc.pid, b.proc.pid}, "step claims of unknown workers %s" % pids)
        per = {d.name: sum(1 for c in claims if worker_pid(c["worker_id"]) == d.proc.pid)
               for d in (a, b)}
        expect(all(per.values()), "the steps ran on one daemon only: %s" % per)
        r = h.reads(inst, rid)
        expect(r["steps_succeeded"] == len(keys), "Dagster counts %s steps succeeded" %
               r["steps_succeeded"])
        run_s, fan_s = durations(h, rid)
        return {"detail": "SUCCESS, %d steps once each, per daemon %s; run %.1fs (fan %.1fs, "
                          "launch->SUCCESS %.1fs)" % (len(keys), per, run_s, fan_s, call),
                "times": {"sqs": {"wall_s": round(call, 2), "run_s": run_s, "fan_s": fan_s}},
                "per_daemon": per, "fan_width": jobs_steps.FAN_WIDTH}
    finally:
        a.stop()
        b.stop()


def sc_retry(h, inst):
    """flaky: attempt 1 fails, RetryPolicy(max_retries=1) -> attempt 2 succeeds; always_fails
    -> STEP_FAILURE and the run fails. Both runs at once on one daemon."""
    q = h.sqs.queue("dsw-steps-retry-%s" % uuid.uuid4().hex[:8])
    marker = os.path.join(h.work, "retry-%s" % uuid.uuid4().hex[:8])
    os.makedirs(marker)
    d = Daemon(h, "stepretry", q, **steps_env()).start()
    try:
        rid = launch(h, inst, "retry_sqs", q, q, run_config={"ops": {"flaky": {"config": {
            "marker_dir": marker}}}})
        fid = launch(h, inst, "fail_sqs", q, q)
        finish(h, rid, "SUCCESS")
        claims = await_steps_done(h, rid, {"flaky", "after_flaky"})
        counts = step_counts(h, rid)
        fl = counts.get("flaky", {})
        want = {"STEP_START": 1, "STEP_UP_FOR_RETRY": 1, "STEP_RESTARTED": 1, "STEP_SUCCESS": 1}
        expect({k: fl.get(k) for k in want} == want and not fl.get("STEP_FAILURE"),
               "flaky's events %s, want %s and no STEP_FAILURE" % (fl, want))
        att = [(c["step_key"], c["attempt"]) for c in claims]
        expect(att == [("after_flaky", 1), ("flaky", 1), ("flaky", 2)],
               "step claims %s, want after_flaky/1, flaky/1, flaky/2" % att)
        expect(all(c["outcome"] == "exited" for c in claims), "step outcomes %s" % [
            (c["step_key"], c["attempt"], c["outcome"]) for c in claims])
        expect(os.path.exists(os.path.join(marker, "flaky-attempt-2")), "attempt 2 never ran")
        fclaim = finish(h, fid, "FAILURE")
        fcl = await_steps_done(h, fid, {"always_fails"})
        fc = step_counts(h, fid).get("always_fails", {})
        expect(fc.get("STEP_START") == 1 and fc.get("STEP_FAILURE") == 1,
               "always_fails' events %s" % fc)
        expect([(c["attempt"], c["outcome"]) for c in fcl] == [(1, "exited")],
               "always_fails' claims %s" % fcl)
        r = h.reads(inst, fid)
        expect(r["steps_failed"] == 1, "Dagster counts %s steps failed" % r["steps_failed"])
        h.reads(inst, rid)
        return {"detail": "retry SUCCESS (flaky exits %s); always_fails FAILURE (step exit %s, "
                          "run worker exit %s)" % (
                              [c["exit_code"] for c in claims if c["step_key"] == "flaky"],
                              fcl[0]["exit_code"], fclaim["exit_code"])}
    finally:
        d.stop()


def sc_kill9(h, inst):
    """The run worker on daemon R (runs queue), the step on daemon S (its own steps queue);
    kill -9 of S while the step runs: the executor finds the claim stale and fails the step,
    the run fails within claims.ttl + sweep; R's sweeper closes the claim as lost; nothing of
    S's step is left alive."""
    ttl, sweep = 4.0, 2.0
    qr = h.sqs.queue("dsw-steps-k9r-%s" % uuid.uuid4().hex[:8])
    qs = h.sqs.queue("dsw-steps-k9s-%s" % uuid.uuid4().hex[:8])
    timing = dict(DSW_CLAIMS_SWEEP="2s", DSW_CLAIMS_HEARTBEAT="1s")
    r_d = Daemon(h, "stepk9r", qr, **steps_env(ttl="4s", **timing)).start()
    s_d = Daemon(h, "stepk9s", qs, **steps_env(ttl="4s", **timing)).start()
    try:
        rid = launch(h, inst, "long_one_sqs", qr, qs, ttl, run_config={"ops": {"long_one": {
            "config": {"seconds": 300.0}}}})
        wait(lambda: h.db.has_event(rid, "STEP_START", "long_one") and
             [c for c in step_claims(h, rid) if c["state"] == "running"], 120,
             "long_one to run (claims %s)" % step_claims(h, rid))
        c = step_claims(h, rid)
        expect(worker_pid(c[0]["worker_id"]) == s_d.proc.pid, "the step runs on %s" %
               c[0]["worker_id"])
        expect(step_pids(s_d), "no execute_step process under daemon S")
        t0 = time.time()
        s_d.kill9()
        h.await_terminal(rid, timeout=ttl + sweep + 30)
        dt = time.time() - t0
        expect(h.db.status(rid) == "FAILURE", "status %s" % h.db.status(rid))
        expect(dt <= ttl + sweep + 6, "FAILURE %.1f s after the kill (ttl %.0f + sweep %.0f)" %
               (dt, ttl, sweep))
        fails = [json.loads(e).get("dagster_event", {}).get("message") or "" for _, t, _, e in
                 h.db.events(rid) if t == "STEP_FAILURE"]
        expect(len(fails) == 1, "%d STEP_FAILURE events for long_one" % len(fails))
        expect("health" in fails[0].lower(), "the STEP_FAILURE is not a failed health check: "
               "%r" % fails[0][:300])
        wait(lambda: not step_pids(s_d), 10, "the killed daemon's step process to die")
        lost = wait(lambda: [x for x in step_claims(h, rid) if x["state"] == "done"],
                    ttl + 3 * sweep + 10, "the stale step claim to be closed (%s)" %
                    step_claims(h, rid))
        expect([(x["attempt"], x["outcome"]) for x in lost] == [(1, "lost")],
               "step claims %s, want long_one/1 lost" % lost)
        rc = h.await_done(rid)
        h.reads(inst, rid)
        return {"detail": "FAILURE %.1fs after kill -9 (ttl %.0f + sweep %.0f); %r; claim lost;"
                          " run worker exit %s" % (dt, ttl, sweep, fails[0][:160],
                                                    rc["exit_code"]),
                "failure_after_s": round(dt, 2)}
    finally:
        r_d.stop()
        s_d.stop()


def sc_terminate(h, inst):
    """Terminate (the launcher's terminate: CANCELING) while 3 steps run on 2 daemons: every
    step claim ends stopped or canceled, no step process is left, the run is CANCELED."""
    q = h.sqs.queue("dsw-steps-term-%s" % uuid.uuid4().hex[:8])
    a = Daemon(h, "stepterma", q, **steps_env()).start()
    b = Daemon(h, "steptermb", q, **steps_env()).start()
    try:
        import jobs_steps

        keys = {"long_%d" % i for i in range(jobs_steps.LONG_WIDTH)}
        rid = launch(h, inst, "long_sqs", q, q, run_config={"ops": {
            k: {"config": {"seconds": 300.0}} for k in keys}})
        wait(lambda: keys <= {c["step_key"] for c in step_claims(h, rid)
                              if c["state"] == "running"} and
             all(h.db.has_event(rid, "STEP_START", k) for k in keys), 120,
             "the 3 long steps to run (claims %s)" % step_claims(h, rid))
        t0 = time.time()
        expect(inst.run_launcher.terminate(rid), "terminate returned False")
        finish(h, rid, "CANCELED", timeout=60)
        claims = await_steps_done(h, rid, keys, timeout=60)
        dt = time.time() - t0
        bad = [(c["step_key"], c["outcome"]) for c in claims
               if c["outcome"] not in ("stopped", "canceled")]
        expect(not bad, "step claims not stopped/canceled: %s" % bad)
        expect(len(claims) == len(keys), "%d step claims for %d steps" % (len(claims),
                                                                         len(keys)))
        wait(lambda: not step_pids(a) and not step_pids(b), 15,
             "no execute_step process left (%s)" % (step_pids(a) + step_pids(b)))
        counts = step_counts(h, rid)
        ok = [k for k in keys if (counts.get(k) or {}).get("STEP_SUCCESS")]
        expect(not ok, "steps succeeded after terminate: %s" % ok)
        h.reads(inst, rid)
        return {"detail": "CANCELED, steps %s, %.1fs after terminate" % (
            sorted((c["step_key"], c["outcome"], c["stop_requested"]) for c in claims), dt),
            "cancel_s": round(dt, 2)}
    finally:
        a.stop()
        b.stop()


def warm_starts(d, kind):
    """How many `kind` (execute_run, execute_step) children the daemon started warm and cold,
    from its log's spawn lines ("... started (pid N, execute_step, warm)")."""
    with open(d.log, errors="replace") as f:
        text = f.read()
    return {m: len(re.findall(r"%s, %s\)" % (kind, m), text)) for m in ("warm", "cold")}


def sc_warm(h, inst):
    """steps:fanout with runs.warm = 4 on both daemons: the run worker and its steps are handed
    to ready warm runners (docs/warm-runners.md); every step still runs exactly once."""
    q = h.sqs.queue("dsw-steps-warm-%s" % uuid.uuid4().hex[:8])
    warm = dict(DSW_RUNS_WARM="4", DSW_RUNS_PYTHON=sys.executable)
    a = Daemon(h, "stepwarma", q, **steps_env(**warm)).start()
    b = Daemon(h, "stepwarmb", q, **steps_env(**warm)).start()
    try:
        wait(lambda: a.metric("dsw_warm_runners_ready") >= 4 and
             b.metric("dsw_warm_runners_ready") >= 4, 180, "4 ready warm runners per daemon")
        rid, keys, claims, call = fan_run(h, inst, q)
        steps = [warm_starts(d, "execute_step") for d in (a, b)]
        runs = [warm_starts(d, "execute_run") for d in (a, b)]
        sw = sum(x["warm"] for x in steps)
        sc = sum(x["cold"] for x in steps)
        expect(sw + sc == len(keys), "%d step starts logged, want %d" % (sw + sc, len(keys)))
        expect(sum(x["warm"] for x in runs) == 1, "the run worker started %s" % runs)
        # Each daemon had 4 ready runners before the run: at least the root step (the first,
        # alone) found one.
        expect(sw >= 1, "no step was started by a warm runner (%d cold)" % sc)
        r = h.reads(inst, rid)
        expect(r["steps_succeeded"] == len(keys), "Dagster counts %s steps succeeded" %
               r["steps_succeeded"])
        run_s, fan_s = durations(h, rid)
        return {"detail": "SUCCESS, %d steps once each, %d warm + %d cold; run %.1fs (fan %.1fs,"
                          " launch->SUCCESS %.1fs)" % (len(keys), sw, sc, run_s, fan_s, call),
                "times": {"sqs_warm": {"wall_s": round(call, 2), "run_s": run_s,
                                       "fan_s": fan_s}},
                "warm_steps": sw, "cold_steps": sc}
    finally:
        a.stop()
        b.stop()


class Relay(threading.Thread):
    """Every message of queue `src` sent twice to `dst` (same body), then deleted from src."""

    def __init__(self, h, src, dst):
        super().__init__(daemon=True)
        self.h, self.src, self.dst = h, src, dst
        self.received = self.sent = 0
        self.tasks = []
        self.stop_ev = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop_ev.is_set():
                for m in self.h.sqs.receive(self.src, 10, visibility=30, wait=1):
                    self.received += 1
                    try:
                        self.tasks.append(json.loads(m["Body"]).get("task_name"))
                    except ValueError:
                        self.tasks.append(None)
                    for _ in range(2):
                        self.h.sqs.send(self.dst, m["Body"])
                        self.sent += 1
                    self.h.sqs.call("DeleteMessage", {"QueueUrl": self.src,
                                                      "ReceiptHandle": m["ReceiptHandle"]})
        except Exception as e:  # reported by the scenario
            self.error = "%s: %s" % (type(e).__name__, e)


def sc_duplicate(h, inst):
    """The fan-out job with every step message delivered twice to 2 daemons: each step runs
    once (one STEP_START, one claim), the copies are deleted, the run succeeds."""
    qr = h.sqs.queue("dsw-steps-dupr-%s" % uuid.uuid4().hex[:8])
    qi = h.sqs.queue("dsw-steps-dupi-%s" % uuid.uuid4().hex[:8])
    qs = h.sqs.queue("dsw-steps-dups-%s" % uuid.uuid4().hex[:8])
    relay = Relay(h, qi, qs)
    relay.start()
    r_d = Daemon(h, "stepdupr", qr, **steps_env()).start()
    s1 = Daemon(h, "stepdups1", qs, **steps_env()).start()
    s2 = Daemon(h, "stepdups2", qs, **steps_env()).start()
    try:
        rid = launch(h, inst, "fanout_sqs", qr, qi)
        finish(h, rid, "SUCCESS")
        keys = set(FAN_KEYS)
        claims = await_steps_done(h, rid, keys)
        exactly_once(h, rid, keys, claims)
        wait(lambda: h.sqs.depth(qs) == (0, 0) and h.sqs.depth(qi) == (0, 0), 30,
             "every copy deleted (steps queue %s, relay queue %s)" % (h.sqs.depth(qs),
                                                                     h.sqs.depth(qi)))
        expect(relay.error is None, "the relay failed: %s" % relay.error)
        expect(relay.received == len(keys) and relay.sent == 2 * len(keys),
               "relayed %d messages (%d sent), want %d (%d)" % (
                   relay.received, relay.sent, len(keys), 2 * len(keys)))
        expect(set(relay.tasks) == {"execute_step"}, "relayed tasks %s" % set(relay.tasks))
        h.reads(inst, rid)
        per = {d.name: sum(1 for c in claims if worker_pid(c["worker_id"]) == d.proc.pid)
               for d in (s1, s2)}
        return {"detail": "SUCCESS, %d steps once each from %d messages, per daemon %s" % (
            len(keys), relay.sent, per)}
    finally:
        relay.stop_ev.set()
        r_d.stop()
        s1.stop()
        s2.stop()


SCENARIOS = [("baseline", sc_baseline), ("fanout", sc_fanout), ("warm", sc_warm),
             ("retry", sc_retry), ("kill9", sc_kill9), ("terminate", sc_terminate),
             ("duplicate", sc_duplicate)]
NAMES = [PREFIX + ":" + n for n, _ in SCENARIOS]


def selected(only):
    """The scenario names --only selects (all for an empty --only or `steps`)."""
    if not only or PREFIX in only:
        return list(NAMES)
    return [n for n in NAMES if n in only]


def main():
    ap = argparse.ArgumentParser()
    for a in ("--build", "--db", "--work", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--tree", default="")
    opt = ap.parse_args()
    names = selected(set(filter(None, opt.only.split(","))))
    results = []
    version = "?"
    if names:
        h = Harness(opt)
        version = h.version
        # The run workers and the step children import dagster_sqs_worker (the executor).
        os.environ["PYTHONPATH"] = PYPKG + ":" + os.environ["PYTHONPATH"]
        import jobs_steps

        global FAN_KEYS
        FAN_KEYS = ["root", "fan_in"] + ["fan_%d" % i for i in range(jobs_steps.FAN_WIDTH)]
        print("[%s] dagster %s: step scenarios %s (executor %s)" % (
            opt.tree, h.version, ", ".join(names), jobs_steps.STEPS_EXECUTOR.name), flush=True)
        times = {}
        for name, fn in SCENARIOS:
            full = PREFIX + ":" + name
            if full not in names:
                continue
            t0 = time.time()
            res = {"scenario": full, "known": None}
            try:
                r = fn(h, h.instance)
                times.update(r.get("times", {}))
                res.update(ok=True, detail=r.get("detail", ""))
            except Failed as e:
                res.update(ok=False, detail=str(e))
            except Exception as e:
                res.update(ok=False, detail="%s: %s" % (type(e).__name__, e),
                           trace=traceback.format_exc()[-2000:])
            res["wall_s"] = round(time.time() - t0, 1)
            results.append(res)
            print("[%s] %-16s %s %5.1fs %s" % (opt.tree, full, "ok  " if res["ok"] else "FAIL",
                                              res["wall_s"], res["detail"][:400]), flush=True)
            if not res["ok"] and res.get("trace") and os.environ.get("DSW_HARNESS_VERBOSE"):
                print(res["trace"], flush=True)
        if times:
            print("[%s] fan-out job (%d x %.1f s steps): %s" % (
                opt.tree, jobs_steps.FAN_WIDTH, jobs_steps.FAN_NAP, "; ".join(
                    "%s run %.1fs fan %.1fs" % (k, v["run_s"], v["fan_s"])
                    for k, v in times.items())), flush=True)
    with open(opt.out, "w") as f:
        json.dump({"version": version, "results": results}, f, indent=1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
