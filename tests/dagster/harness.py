#!/usr/bin/python3
"""The real-Dagster layer for one Dagster tree: the real daemon binary runs real
`dagster api execute_run` children against real PostgreSQL and moto, the runs are created,
launched, canceled and resumed through Dagster's own API (tests/dagster/harness_launcher.py is
the run launcher), and after every scenario Dagster's own reads must succeed. run.py starts it
once per tree with that tree's environment; it writes one JSON result per scenario.

usage: harness.py --build DIR --db NAME --work DIR --out FILE [--only a,b] [--tree LABEL]
Environment: DSW_TEST_PG_CONNINFO (a server where NAME can be created), DSW_TEST_MOTO_URL,
and an importable dagster + dagster_postgres (this interpreter).

No fixed sleeps: every wait is a condition polled against a deadline.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "support"))
import dswtest  # noqa: E402  (the Postgres and SQS set-up shared with bench and the fault driver)
from dswtest import conninfo_with_db, free_port  # noqa: E402

import psycopg2  # noqa: E402  (Debian's python3-psycopg2, which dagster-postgres needs anyway)

OURS = '"[dagster-sqs-worker] '  # the start of every message the daemon writes
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")

# Scenarios that fail until a fix another helper is building lands (issue 13): they are run and
# reported, but their failure does not fail the layer. A pass is reported as such.
KNOWN = {
    # "scenario": "what is being fixed, where",
}


class Failed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failed(what)


def wait(pred, timeout, what, every=0.1):
    """pred() until truthy, or Failed after timeout seconds. Returns pred's value."""
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() >= deadline:
            raise Failed("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(every)


class Db:
    def __init__(self, conninfo):
        self.conninfo = conninfo
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None or c.closed:
            c = self.local.c = psycopg2.connect(self.conninfo)
            c.autocommit = True
        return c

    def q(self, sql, *args):
        with self.conn().cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def status(self, run_id):
        r = self.q("SELECT status FROM runs WHERE run_id = %s", run_id)
        return r[0][0] if r else None

    def claim(self, run_id):
        r = self.q("SELECT state, exit_code, term_signal, outcome, worker_id, child_pid, "
                   "extract(epoch FROM now() - heartbeat_at) FROM dagster_sqs_worker.run_claims "
                   "WHERE run_id = %s", run_id)
        if not r:
            return None
        k = ("state", "exit_code", "term_signal", "outcome", "worker_id", "child_pid", "age")
        return dict(zip(k, r[0]))

    def events(self, run_id):
        """(id, type, ours, event json) in id order."""
        return [(i, t, e.find(OURS) >= 0, e) for i, t, e in self.q(
            "SELECT id, dagster_event_type, event FROM event_logs WHERE run_id = %s ORDER BY id",
            run_id)]

    def has_event(self, run_id, etype, step=None):
        if step:
            return bool(self.q("SELECT 1 FROM event_logs WHERE run_id = %s AND "
                               "dagster_event_type = %s AND step_key = %s", run_id, etype, step))
        return bool(self.q("SELECT 1 FROM event_logs WHERE run_id = %s AND dagster_event_type = "
                           "%s", run_id, etype))


def marked_pids(mark):
    """Every live process whose environment holds DSW_HARNESS_MARK=mark."""
    want = ("DSW_HARNESS_MARK=" + mark).encode()
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % p, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/stat" % p) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if want in env and state != "Z":
            out.append(int(p))
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return "?"


class Sqs(dswtest.Sqs):
    """moto, for the scenarios' queues."""

    def queue(self, name):
        return self.create_queue(name)


class Daemon:
    """One real dagster-sqs-worker process, configured from the environment."""

    def __init__(self, h, name, queue_url, command=None, **over):
        self.h = h
        self.name = name
        self.mark = "%s-%s" % (name, uuid.uuid4().hex[:8])
        self.port = free_port()
        self.log = os.path.join(h.work, "daemon-%s.log" % self.mark)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": h.work,
            "LANG": "C.UTF-8", "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "PYTHONDONTWRITEBYTECODE": "1", "DAGSTER_HOME": h.home,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "DSW_QUEUE_URL": queue_url, "DSW_QUEUE_ENDPOINT": h.moto,
            "DSW_QUEUE_REGION": "us-east-1", "DSW_QUEUE_WAIT_TIME": "1s",
            "DSW_QUEUE_VISIBILITY_TIMEOUT": "60s", "DSW_QUEUE_HEARTBEAT": "10s",
            "DSW_POSTGRES_CONNINFO": h.conninfo, "DSW_CLAIMS_TTL": "2s",
            "DSW_CLAIMS_HEARTBEAT": "500ms", "DSW_CLAIMS_SWEEP": "1s",
            "DSW_RUNS_MAX_CONCURRENT": "4", "DSW_RUNS_COMMAND": command or h.dagster_cmd,
            "DSW_RUNS_DAGSTER_HOME": h.home, "DSW_RUNS_CANCEL_POLL": "200ms",
            "DSW_RUNS_KILL_GRACE": "5s", "DSW_RUNS_REQUEUE_DELAY": "1s",
            "DSW_RUNS_DRAIN_TIMEOUT": "5s", "DSW_RUNS_ENV_DSW_HARNESS_MARK": self.mark,
            "DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO": h.conninfo,
            "DSW_HTTP_LISTEN": "127.0.0.1:%d" % self.port, "DSW_LOG_FORMAT": "json",
            "DSW_LOG_LEVEL": "info",
        }
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "DSW_TRAMPOLINE"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(over)
        self.env = env
        self.proc = None

    def start(self):
        with open(self.log, "a") as lf:
            self.proc = subprocess.Popen([self.h.bin, "run"], env=self.env, stdout=lf, stderr=lf,
                                         start_new_session=True)
        wait(lambda: self.healthy(), 30, "daemon %s /healthz" % self.name)
        return self

    def healthy(self):
        if self.proc.poll() is not None:
            raise Failed("daemon %s exited with %s: %s" % (self.name, self.proc.returncode,
                                                           self.tail()))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.port, timeout=1):
                return True
        except Exception:
            return False

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5) as r:
            return r.read().decode()

    def metric(self, name, labels=""):
        total = 0.0
        for ln in self.metrics().splitlines():
            m = re.match(r"^%s(\{[^}]*\})?\s+([0-9.eE+-]+)$" % re.escape(name), ln.strip())
            if m and labels in (m.group(1) or ""):
                total += float(m.group(2))
        return total

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever a run of this daemon left behind is a failure of that scenario (checked
        # there); here it is only cleaned up so it cannot disturb the next one.
        for p in marked_pids(self.mark):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass

    def tail(self, n=15):
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Harness:
    def __init__(self, opt):
        self.opt = opt
        self.build = os.path.abspath(opt.build)
        self.bin = os.path.join(self.build, "dagster-sqs-worker")
        self.fake = os.path.join(self.build, "fake_dagster")
        self.work = os.path.abspath(opt.work)
        os.makedirs(self.work, exist_ok=True)
        self.moto = os.environ["DSW_TEST_MOTO_URL"]
        self.conninfo, kv = conninfo_with_db(os.environ["DSW_TEST_PG_CONNINFO"], opt.db)
        self.pg_url = "postgresql://%s:%s@%s:%s/%s" % (
            kv.get("user", "postgres"), kv.get("password", ""), kv.get("host", "127.0.0.1"),
            kv.get("port", "5432"), opt.db)
        self.home = os.path.join(self.work, "dagster_home")
        os.makedirs(self.home, exist_ok=True)
        self.sqs = Sqs(self.moto)
        self.default_queue = self.sqs.queue("dsw-real-%s-default" % uuid.uuid4().hex[:8])
        with open(os.path.join(self.home, "dagster.yaml"), "w") as f:
            f.write("storage:\n  postgres:\n    postgres_url: \"%s\"\n"
                    "run_launcher:\n  module: harness_launcher\n  class: HarnessRunLauncher\n"
                    "  config:\n    queue_url: \"%s\"\n    endpoint_url: \"%s\"\n"
                    "telemetry:\n  enabled: false\n" % (self.pg_url, self.default_queue,
                                                         self.moto))
        # The run worker command: this interpreter's dagster, whatever provided it.
        self.dagster_cmd = os.path.join(self.work, "dagster")
        with open(self.dagster_cmd, "w") as f:
            f.write('#!/bin/sh\nexec %s -m dagster "$@"\n' % sys.executable)
        os.chmod(self.dagster_cmd, 0o755)
        os.environ["DAGSTER_HOME"] = self.home
        os.environ["PYTHONPATH"] = HERE + (":" + os.environ["PYTHONPATH"]
                                           if os.environ.get("PYTHONPATH") else "")
        import dagster

        self.version = dagster.__version__
        from dagster import DagsterInstance

        self.instance = DagsterInstance.get()  # creates Dagster's tables in the empty database
        self.db = Db(self.conninfo)
        try:
            dswtest.db_init(self.bin, dswtest.worker_env(self.conninfo, self.default_queue,
                                                         self.moto, dagster_home=self.home))
        except RuntimeError as e:
            raise Failed(str(e))
        self.lock = threading.Lock()

    def new_instance(self):
        from dagster import DagsterInstance

        return DagsterInstance.get()

    # -- runs through Dagster's own API --
    def create(self, inst, job_name, run_config=None, tags=None):
        import jobs
        from dagster import reconstructable
        from dagster._core.storage.dagster_run import DagsterRunStatus

        recon = reconstructable(getattr(jobs, job_name))
        # One at a time: two runs of a job insert the same snapshot row, and Dagster's
        # check-then-insert races.
        with self.lock:
            return inst.create_run_for_job(job_def=recon.get_definition(),
                                           run_config=run_config or {}, tags=tags or {},
                                           job_code_origin=recon.get_python_origin(),
                                           status=DagsterRunStatus.NOT_STARTED)

    def launch(self, inst, job_name, queue, form="taskiq", run_config=None, tags=None):
        """create_run_for_job, then instance.launch_run: PIPELINE_STARTING + STARTING, and the
        launcher puts the message on the queue."""
        t = dict(tags or {}, **{"dsw/harness_form": form, "dsw/harness_queue": queue})
        run = self.create(inst, job_name, run_config, t)
        inst.launch_run(run.run_id, workspace=None)  # re-raises what the launcher raised
        return run.run_id

    def await_terminal(self, run_id, timeout=120):
        return wait(lambda: self.db.status(run_id) in TERMINAL and self.db.status(run_id), timeout,
                    "run %s to finish (status %s)" % (run_id, self.db.status(run_id)))

    def await_done(self, run_id, timeout=60):
        """The daemon's record: the claim is done (exit code recorded)."""
        return wait(lambda: (self.db.claim(run_id) or {}).get("state") == "done" and
                    self.db.claim(run_id), timeout, "the daemon's record of run %s" % run_id)

    def reads(self, inst, run_id):
        """Dagster's own reads of the run; any exception fails the scenario."""
        run = inst.get_run_by_id(run_id)
        expect(run is not None, "get_run_by_id found nothing")
        logs = inst.all_logs(run_id)
        stats = inst.get_run_stats(run_id)
        nrec = None
        if hasattr(inst, "get_records_for_run"):
            nrec = len(inst.get_records_for_run(run_id, limit=100000).records)
            expect(nrec == len(logs), "get_records_for_run: %d records, all_logs %d" %
                   (nrec, len(logs)))
        steps = inst.get_run_step_stats(run_id)
        types = [e.dagster_event.event_type_value for e in logs if e.is_dagster_event]
        return {"status": run.status.value, "types": types, "n_logs": len(logs),
                "steps": {s.step_key: s.status.value if s.status else None for s in steps},
                "steps_succeeded": stats.steps_succeeded, "steps_failed": stats.steps_failed,
                "records": nrec, "logs": logs}


# ---- checks shared by scenarios --------------------------------------------------------------

def finished(h, inst, run_id, status, exit_code=None, ours_terminal=None, timeout=120,
             outcome=None):
    """Await the outcome and the daemon's record, then Dagster's reads. ours_terminal: True =
    the terminal event must be the daemon's, False = the run's own."""
    got = h.await_terminal(run_id, timeout)
    claim = h.await_done(run_id)
    expect(got == status, "status %s, want %s" % (got, status))
    if outcome is not None:
        expect(claim["outcome"] == outcome, "the daemon's outcome %r, want %r" % (
            claim["outcome"], outcome))
    if exit_code is not None:
        expect(claim["exit_code"] == exit_code, "exit code %s (signal %s), want %s" % (
            claim["exit_code"], claim["term_signal"], exit_code))
    r = h.reads(inst, run_id)
    expect(r["status"] == status, "Dagster reads status %s" % r["status"])
    ev = h.db.events(run_id)
    term = [e for e in ev if e[1] in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE",
                                      "PIPELINE_CANCELED")]
    expect(len(term) == 1, "%d terminal events: %s" % (len(term), [e[1] for e in ev]))
    if ours_terminal is not None:
        expect(term[0][2] == ours_terminal, "terminal event written by %s" %
               ("the daemon" if term[0][2] else "the run"))
    expect(ev[-1][2], "the last event is not the daemon's record: %s" % ev[-1][3][:200])
    expect(any(e[2] and e[1] == "ENGINE_EVENT" and "Run worker " in e[3] for e in ev),
           "no exit record from the daemon")
    r["claim"] = {k: claim[k] for k in ("exit_code", "term_signal", "outcome")}
    return r


def summary(r):
    return "%s exit=%s steps=%s" % (r["status"], r["claim"]["exit_code"], r["steps"])


# ---- scenarios -------------------------------------------------------------------------------

def sc_success(h, q, inst):
    rid = h.launch(inst, "ok_job", q)
    r = finished(h, inst, rid, "SUCCESS", 0, ours_terminal=False, outcome="exited")
    expect(r["steps"] == {"ok_op": "SUCCESS"}, "step stats %s" % r["steps"])
    return r


def sc_failure(h, q, inst):
    rid = h.launch(inst, "fail_job", q)
    r = finished(h, inst, rid, "FAILURE", 1, ours_terminal=False, outcome="exited")
    expect(r["steps"] == {"fail_op": "FAILURE"}, "step stats %s" % r["steps"])
    return r


def sc_crash(h, q, inst):
    rid = h.crash_run = h.launch(inst, "crash_job", q)
    return finished(h, inst, rid, "FAILURE", 3, ours_terminal=True)


def sc_crash_reason(h, q, inst):
    """Our PIPELINE_FAILURE as current Dagster writes one: failure_reason where the tree's
    JobFailureData has it, and the dagster/failure_reason tag."""
    rid = wait(lambda: getattr(h, "crash_run", None), 120, "the crash scenario's run")
    h.await_done(rid, timeout=120)
    from dagster._core.events import JobFailureData

    logs = inst.all_logs(rid)
    fail = [e for e in logs if e.is_dagster_event and
            e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
    expect(len(fail) == 1, "%d PIPELINE_FAILURE events" % len(fail))
    data = fail[0].dagster_event.event_specific_data
    if "failure_reason" in JobFailureData._fields:
        expect(data is not None and getattr(data, "failure_reason", None) is not None and
               data.failure_reason.value == "UNEXPECTED_TERMINATION",
               "PIPELINE_FAILURE event_specific_data %r (want failure_reason "
               "UNEXPECTED_TERMINATION)" % (data,))
    tags = inst.get_run_by_id(rid).tags
    expect(tags.get("dagster/failure_reason") == "UNEXPECTED_TERMINATION",
           "run tag dagster/failure_reason = %r" % tags.get("dagster/failure_reason"))
    return {"status": "FAILURE", "claim": {"exit_code": 3}, "steps": {}}


def running(h, rid, step="slow_op", timeout=90):
    wait(lambda: h.db.has_event(rid, "STEP_START", step), timeout,
         "run %s to be in step %s (status %s)" % (rid, step, h.db.status(rid)))


def sc_cancel(h, q, inst):
    """Cancel through Dagster's own API while the step runs: the launcher's terminate (as the UI
    calls it) -> report_run_canceling -> CANCELING -> SIGTERM -> the run writes CANCELED."""
    rid = h.launch(inst, "slow_job", q, run_config={"ops": {"slow_op": {"config": {
        "seconds": 120.0}}}})
    running(h, rid)
    t0 = time.time()
    expect(inst.run_launcher.terminate(rid), "terminate returned False")
    r = finished(h, inst, rid, "CANCELED", 0, ours_terminal=False, timeout=60)
    r["cancel_s"] = round(time.time() - t0, 2)  # terminate -> CANCELED and our exit record
    return r


def sc_external_fail(h, q, inst):
    """Run monitoring (or a person) marks the run FAILURE while it runs: the daemon stops the
    child and records its exit without overwriting the outcome."""
    rid = h.launch(inst, "slow_job", q, run_config={"ops": {"slow_op": {"config": {
        "seconds": 120.0}}}})
    running(h, rid)
    inst.report_run_failed(inst.get_run_by_id(rid), "marked failed by the harness")
    claim = h.await_done(rid, timeout=15)  # cancel_poll + kill_grace (5 s) + slack
    expect(h.db.status(rid) == "FAILURE", "status %s" % h.db.status(rid))
    ours = [e[1] for e in h.db.events(rid) if e[2] and e[1] != "ENGINE_EVENT"]
    expect(not ours, "the daemon wrote %s over an outcome someone else recorded" % ours)
    r = h.reads(inst, rid)
    r["claim"] = {k: claim[k] for k in ("exit_code", "term_signal", "outcome")}
    return r


def sc_slow_exit(h, q, inst):
    """A run worker that takes longer than the daemon's wait for a terminal status to exit
    after writing its own RUN_SUCCESS (an atexit hook: uploads, flushes, pool shutdown) is
    finishing its own run, not one someone else ended: it must be left to exit 0. Fails while
    src/execution.c's terminal_elsewhere() treats any SUCCESS/FAILURE the run worker outlives by
    min(runs.kill_grace, 5 s) as set by someone else (outcome 'external', SIGTERM); the run's
    own terminal event carries the run worker's pid, an outside one does not."""
    rid = h.launch(inst, "slow_exit_job", q, run_config={"ops": {"slow_exit_op": {"config": {
        "seconds": 7.0}}}})
    return finished(h, inst, rid, "SUCCESS", 0, ours_terminal=False, outcome="exited")


# "success" is the taskiq (dagster-taskiq execute_job) form.
FORMS = ["taskiq_string", "legacy", "legacy_path", "bare", "celery", "celery_plain",
         "celery_gzip"]


def sc_form(form):
    def run(h, q, inst):
        rid = h.launch(inst, "ok_job", q, form=form)
        return finished(h, inst, rid, "SUCCESS", 0, ours_terminal=False)
    return run


def sc_kill9(h, inst):
    """kill -9 of the daemon that runs a multiprocess job whose step started a setsid'd,
    double-forked grandchild; a second daemon's sweeper records FAILURE within ttl + sweep; 2 s
    later no process of the run is alive and the run's last event is the daemon's."""
    q = h.sqs.queue("dsw-real-kill9-%s" % uuid.uuid4().hex[:8])
    pid_dir = os.path.join(h.work, "kill9-pids-%s" % uuid.uuid4().hex[:8])
    os.makedirs(pid_dir)
    a = Daemon(h, "kill9a", q).start()
    b = None
    try:
        rid = h.launch(inst, "mp_job", q, run_config={"ops": {"second": {"config": {
            "seconds": 30.0, "pid_dir": pid_dir}}}})
        wait(lambda: os.path.exists(os.path.join(pid_dir, "step")) and
             os.path.exists(os.path.join(pid_dir, "grandchild")), 120,
             "the step and its grandchild to start")
        b = Daemon(h, "kill9b", q).start()
        before = marked_pids(a.mark)
        expect(len(before) >= 3, "only %d processes of the run found" % len(before))
        t0 = time.time()
        a.kill9()
        ttl, sweep = 2.0, 1.0
        h.await_terminal(rid, timeout=ttl + sweep + 15)
        dt = time.time() - t0
        expect(h.db.status(rid) == "FAILURE", "status %s" % h.db.status(rid))
        expect(dt <= ttl + sweep + 5, "FAILURE after %.1f s (ttl %.0f + sweep %.0f)" % (
            dt, ttl, sweep))
        t_fail = time.time()
        wait(lambda: time.time() >= t_fail + 2.0, 3, "2 s")  # the bound under test, not a sync
        alive = marked_pids(a.mark)
        ev = h.db.events(rid)
        fail_id = [e[0] for e in ev if e[1] == "PIPELINE_FAILURE"]
        after = [e[1] or "log" for e in ev if fail_id and e[0] > fail_id[-1] and not e[2]]
        r = h.reads(inst, rid)
        r["claim"] = {"exit_code": None, "outcome": (h.db.claim(rid) or {}).get("outcome")}
        r["failure_after_s"] = round(dt, 2)
        expect(not alive, "%d of the run's %d processes alive 2 s after FAILURE: %s" % (
            len(alive), len(before), "; ".join("%d %s" % (p, cmdline(p)) for p in alive)))
        # Nothing the run wrote after our record (a surviving step would write STEP_SUCCESS).
        expect(ev[-1][2], "the last event is not the daemon's: %s" % ev[-1][3][:160])
        expect(not after, "events written by the run after our PIPELINE_FAILURE: %s" % after)
        return r
    finally:
        a.stop()
        if b:
            b.stop()


def sc_resume(h, inst):
    """runs.resume = on: the owner is killed mid-step, Dagster's own resume_run (as run
    monitoring calls it) sends resume_job, a second daemon takes the stale claim over and runs
    `dagster api resume_run`; the step (which sleeps only on its first attempt) finishes."""
    q = h.sqs.queue("dsw-real-resume-%s" % uuid.uuid4().hex[:8])
    once = os.path.join(h.work, "resume-once-%s" % uuid.uuid4().hex[:8])
    a = Daemon(h, "resumea", q).start()
    b = None
    try:
        rid = h.launch(inst, "slow_job", q, run_config={"ops": {"slow_op": {"config": {
            "seconds": 120.0, "once_file": once}}}})
        running(h, rid)
        wait(lambda: os.path.exists(once), 60, "the step's first attempt to begin")
        a.kill9()
        wait(lambda: not marked_pids(a.mark), 10, "the killed daemon's run worker to die")
        wait(lambda: (h.db.claim(rid) or {}).get("age", 0) > 3.0, 20, "the claim to go stale")
        expect(h.db.status(rid) == "STARTED", "status %s" % h.db.status(rid))
        inst.resume_run(rid, workspace=None, attempt_number=1)
        b = Daemon(h, "resumeb", q, DSW_RUNS_RESUME="on", DSW_CLAIMS_SWEEP="1h").start()
        r = finished(h, inst, rid, "SUCCESS", 0, ours_terminal=False)
        kinds = h.db.q("SELECT kind, attempt FROM dagster_sqs_worker.run_claims WHERE run_id = "
                       "%s", rid)
        expect(kinds and kinds[0][0] == "resume", "claim kind %s" % kinds)
        expect(b.metric("dsw_runs_started_total", 'kind="resume"') >= 1, "no resume counted")
        return r
    finally:
        a.stop()
        if b:
            b.stop()


def sc_warm(h, inst):
    """runs.warm = 1: a multiprocess job handed to a warm runner."""
    q = h.sqs.queue("dsw-real-warm-%s" % uuid.uuid4().hex[:8])
    d = Daemon(h, "warm", q, DSW_RUNS_WARM="1", DSW_RUNS_PYTHON=sys.executable).start()
    try:
        wait(lambda: d.metric("dsw_warm_runners_ready") >= 1, 90, "a ready warm runner")
        rid = h.launch(inst, "mp_job", q)
        r = finished(h, inst, rid, "SUCCESS", 0, ours_terminal=False)
        expect(r["steps"] == {"first": "SUCCESS", "second": "SUCCESS"}, "steps %s" % r["steps"])
        warm = d.metric("dsw_run_start_seconds_count", 'mode="warm"')
        expect(warm >= 1, "the run was not started by a warm runner (warm starts %s)" % warm)
        return r
    finally:
        d.stop()


# ---- equivalence with the stand-in -----------------------------------------------------------

RUN_LEVEL = ("PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS", "PIPELINE_FAILURE",
             "PIPELINE_CANCELED", "PIPELINE_CANCELING")
STEP_LEVEL = ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")


def shape(h, rid):
    """What the stand-in must write as real Dagster does, from one finished run."""
    ev = h.db.events(rid)
    run_ev = [(t, ours) for _, t, ours, _ in ev if t in RUN_LEVEL]
    msgs = []
    for _, t, ours, e in ev:
        if t == "ENGINE_EVENT" and not ours:
            m = json.loads(e).get("dagster_event", {}).get("message") or ""
            for pat in ("Started process for run", "Process for run exited",
                        "Executing steps in process", "Finished steps in process"):
                if m.startswith(pat):
                    msgs.append(pat)
    c = h.db.claim(rid)
    return {"status": h.db.status(rid), "exit_code": c["exit_code"],
            "term_signal": c["term_signal"], "outcome": c["outcome"], "run_events": run_ev,
            "steps": [t for _, t, _, _ in ev if t in STEP_LEVEL],
            "engine": msgs, "types": sorted({t for _, t, _, _ in ev if t}),
            "ours": [t for _, t, o, _ in ev if o]}


def sc_equivalence(h, inst):
    """success / failure / crash / cancel with the stand-in (fake_dagster) and with real
    Dagster through the same daemon configuration: statuses, exit codes, the run-level event
    sequence, who wrote the terminal event, the step events (start/success/failure), the run
    worker's engine messages and the daemon's own events must be identical; the stand-in may
    leave out event types (outputs, resources, captured logs) but not add any; Dagster must read
    the stand-in's rows."""
    q_real = h.sqs.queue("dsw-real-eq-%s" % uuid.uuid4().hex[:8])
    q_fake = h.sqs.queue("dsw-fake-eq-%s" % uuid.uuid4().hex[:8])
    real = Daemon(h, "eqreal", q_real).start()
    fake = Daemon(h, "eqfake", q_fake, command=h.fake).start()
    cases = [("success", "ok_job", "success", None), ("failure", "fail_job", "failure", None),
             ("crash", "crash_job", "crash", None),
             ("cancel", "slow_job", "sleep:120",
              {"ops": {"slow_op": {"config": {"seconds": 120.0}}}})]
    try:
        ids = {}
        for name, job, beh, cfg in cases:
            ids[name] = (h.launch(inst, job, q_real, run_config=cfg),
                         h.launch(inst, job, q_fake, run_config=cfg,
                                  tags={"dsw/test_behavior": beh}))
        rr, rf = ids["cancel"]
        running(h, rr)
        wait(lambda: h.db.has_event(rf, "STEP_START"), 60, "the stand-in's cancel run to start")
        inst.run_launcher.terminate(rr)
        inst.run_launcher.terminate(rf)
        diffs = []
        for name, _, _, _ in cases:
            for rid in ids[name]:
                h.await_terminal(rid)
                h.await_done(rid)
            a, b = shape(h, ids[name][0]), shape(h, ids[name][1])
            if os.environ.get("DSW_HARNESS_VERBOSE"):
                print("equivalence %s\n  real     %s\n  stand-in %s" % (name, a, b), flush=True)
            for k in ("status", "exit_code", "term_signal", "outcome", "run_events", "ours",
                      "steps", "engine"):
                if a[k] != b[k]:
                    diffs.append("%s.%s: real %s, stand-in %s" % (name, k, a[k], b[k]))
            extra = set(b["types"]) - set(a["types"])
            if extra:
                diffs.append("%s.types: the stand-in writes %s, real Dagster does not" % (
                    name, sorted(extra)))
            h.reads(inst, ids[name][1])  # Dagster reads the stand-in's rows
        expect(not diffs, "the stand-in differs from real Dagster: " + "; ".join(diffs))
        return {"status": "same", "claim": {"exit_code": "0/1/3/0"}, "steps": {}}
    finally:
        real.stop()
        fake.stop()


# ---- the driver ------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--tree", default="")
    opt = ap.parse_args()
    only = set(filter(None, opt.only.split(",")))
    results = []

    def record(name, fn, *args):
        if only and name not in only and name.split(":")[0] not in only:
            return
        t0 = time.time()
        res = {"scenario": name, "known": KNOWN.get(name)}
        try:
            r = fn(*args)
            extra = " ".join("%s=%s" % (k, r[k]) for k in ("cancel_s", "failure_after_s")
                             if k in r)
            res.update(ok=True, detail=(summary(r) if "claim" in r and "steps" in r else "") +
                       (" " + extra if extra else ""))
        except Failed as e:
            res.update(ok=False, detail=str(e))
        except Exception as e:
            res.update(ok=False, detail="%s: %s" % (type(e).__name__, e),
                       trace=traceback.format_exc()[-2000:])
        res["wall_s"] = round(time.time() - t0, 1)
        with lock:
            results.append(res)
            print("[%s] %-14s %s %5.1fs %s" % (opt.tree, name, "ok  " if res["ok"] else "FAIL",
                                              res["wall_s"], res["detail"][:300]), flush=True)

    lock = threading.Lock()
    h = Harness(opt)
    print("[%s] dagster %s (%s)" % (opt.tree, h.version, sys.executable), flush=True)

    # Group 1: one daemon, the scenarios concurrently (4 slots).
    group = [("success", sc_success), ("failure", sc_failure), ("crash", sc_crash),
             ("crash_reason", sc_crash_reason), ("cancel", sc_cancel),
             ("external_fail", sc_external_fail), ("slow_exit", sc_slow_exit)] + [("form:" + f, sc_form(f)) for f in FORMS]
    group = [g for g in group if not only or g[0] in only or g[0].split(":")[0] in only]
    if group:
        q = h.sqs.queue("dsw-real-main-%s" % uuid.uuid4().hex[:8])
        d = Daemon(h, "main", q, DSW_RUNS_MAX_CONCURRENT="4").start()
        threads = []
        try:
            for name, fn in group:
                t = threading.Thread(target=lambda n=name, f=fn: record(n, f, h, q,
                                                                        h.new_instance()))
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        finally:
            d.stop()
    for name, fn in (("kill9", sc_kill9), ("resume", sc_resume), ("warm", sc_warm),
                     ("equivalence", sc_equivalence)):
        record(name, fn, h, h.instance)
    order = [g[0] for g in group] + ["kill9", "resume", "warm", "equivalence"]
    results.sort(key=lambda r: order.index(r["scenario"]) if r["scenario"] in order else 99)
    with open(opt.out, "w") as f:
        json.dump({"version": h.version, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
