#!/usr/bin/env python3
"""Fault-injection scenario driver for dagster-sqs-worker (issue 8).

Runs a seeded workload of N Dagster runs across K real daemons against a private PostgreSQL
cluster and a private fauxqs server (both restartable), while injecting faults:

  fp_kill:<point>    a daemon incarnation armed with DSW_FAILPOINTS="<point>=kill@n" (or abort)
  fp_fail:<point>    an incarnation whose <point> fails every few hits (-EIO via the callback)
  wedge              heartbeat_lease=sleep:3000 (the loop blocks longer than claims.ttl)
  kill9              kill -9 of a daemon
  sigstop            SIGSTOP of a daemon for 2-4 x claims.ttl, then SIGCONT
  pg_terminate       pg_terminate_backend of every client session
  pg_restart         pg_ctl -m immediate stop, a pause, start (crash restart)
  sqs_restart        the fauxqs server killed and restarted on the same port (it loses its state)
  dup_send           a second message for a run (before, during or after its execution)
  hostile            bodies that must be rejected (junk, bad ids, unknown runs, deep nesting...)
plus children that crash (exit 3), fail, hang (ignore SIGTERM, bounded by dagster/max_runtime),
exit early, and run longer than the queue's visibility timeout.

Everything observed goes to OUT (history): daemon JSON logs, incarnations, faults, sends,
child lifetimes (child_starts + a /proc monitor), metrics scrapes, the final database and
queue state. tests/fault/check.py verifies the invariants over it; the driver runs it at the
end and exits with its status.

usage: driver.py --bin DAEMON --fake FAKE_DAGSTER --out DIR [--runs N] [--daemons K]
                 [--faults F] [--seed S] [--load-seconds T] [--settle-seconds T]
                 [--wrapper 'valgrind ...'] [--kinds k1,k2,...]
Environment: DSW_VECTORS (tests/vectors), PGBIN (default: newest /usr/lib/postgresql/*/bin).
"""
import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "support"))
import dswtest  # noqa: E402  (the Postgres, fauxqs and SQS set-up shared with bench and harness)
from dswtest import free_port  # noqa: E402
POINTS = ["after_receive", "after_claim", "after_spawn", "after_record", "before_delete",
          "heartbeat_lease", "heartbeat_visibility"]
ALL_KINDS = ["fp_kill", "fp_fail", "wedge", "kill9", "sigstop", "pg_terminate", "pg_restart",
             "sqs_restart", "dup_send", "hostile"]
TTL_S = 2.0


def now():
    return time.time()


class History:
    """Append-only JSON-lines files under OUT, thread-safe."""

    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def add(self, name, **rec):
        rec.setdefault("t", now())
        with self.lock:
            with open(os.path.join(self.out, name + ".jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")


def lit(s):
    return "'" + s.replace("'", "''") + "'"


# ---- SQS (fauxqs) ----------------------------------------------------------------------------

class Sqs:
    """The private fauxqs server and the scenario's queues by name (runs, quarantine, template);
    restartable on the same port (it loses its state)."""

    def __init__(self, out, port=None):
        self.server = dswtest.Fauxqs(os.path.join(out, "fauxqs.log"), port)
        self.port, self.endpoint = self.server.port, self.server.endpoint
        self.client = dswtest.Sqs(self.endpoint, tries=1, pause=0.3, timeout=10)
        self.urls = {}

    def start(self):
        self.server.start()
        for name in ("runs", "quarantine", "template"):
            self.urls[name] = self.client.create_queue(name)

    def kill(self):
        self.server.kill()

    def call(self, action, body, tries=1):
        return self.client.call(action, body, tries=tries)

    def send(self, queue, body):
        return self.client.send(self.urls[queue], body, tries=5)

    def counts(self, queue):
        return self.client.depth(self.urls[queue], tries=3)

    def drain(self, queue):
        """Every message left in queue (received with a long visibility), as bodies."""
        return self.client.drain(self.urls[queue], tries=3)


# ---- daemons ---------------------------------------------------------------------------------

class Daemon:
    """One daemon slot; each (re)start is an incarnation with its own log and metrics port."""

    def __init__(self, drv, slot):
        self.drv = drv
        self.slot = slot
        self.proc = None
        self.inc = None
        self.fp = ""
        self.stopped_until = 0.0
        self.restart_at = 0.0
        self.next_fp = ""
        self.lock = threading.Lock()

    def start(self, fp=""):
        d = self.drv
        n = d.next_incarnation()
        self.inc = "d%d.%d" % (self.slot, n)
        self.fp = fp
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_EC2_METADATA_DISABLED": "true",
            "DSW_QUEUE_URL": d.sqs.urls["runs"], "DSW_QUEUE_ENDPOINT": d.sqs.endpoint,
            "DSW_QUEUE_QUARANTINE_URL": d.sqs.urls["quarantine"],
            "DSW_QUEUE_REGION": "us-east-1", "DSW_QUEUE_WAIT_TIME": "1s",
            "DSW_QUEUE_VISIBILITY_TIMEOUT": "10s", "DSW_QUEUE_HEARTBEAT": "2s",
            "DSW_POSTGRES_CONNINFO": d.pg.conninfo, "DSW_POSTGRES_CONNECT_TIMEOUT": "2s",
            "DSW_CLAIMS_TTL": "2s", "DSW_CLAIMS_HEARTBEAT": "500ms", "DSW_CLAIMS_SWEEP": "1s",
            "DSW_RUNS_MAX_CONCURRENT": "4", "DSW_RUNS_COMMAND": d.args.fake,
            "DSW_RUNS_DAGSTER_HOME": "/tmp", "DSW_RUNS_CANCEL_POLL": "200ms",
            "DSW_RUNS_KILL_GRACE": "1s", "DSW_RUNS_REQUEUE_DELAY": "1s",
            "DSW_RUNS_DRAIN_TIMEOUT": "20s", "DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO": d.pg.conninfo,
            "DSW_RUNS_ENV_ASAN_OPTIONS": "detect_leaks=0",
            "DSW_HTTP_LISTEN": "127.0.0.1:%d" % self.port, "DSW_LOG_FORMAT": "json",
            "DSW_LOG_LEVEL": "info",
        }
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "DSW_TRAMPOLINE"):
            if k in os.environ:
                env[k] = os.environ[k]
        if fp:
            env["DSW_FAILPOINTS"] = fp
        argv = shlex.split(d.args.wrapper) if d.args.wrapper else []
        if d.args.wrapper:
            argv = [a.replace("%INC%", self.inc) for a in argv]
        argv += [d.args.bin, "run"]
        self.log = os.path.join(d.out, "logs", self.inc + ".log")
        with open(self.log, "w") as lf:
            self.proc = subprocess.Popen(argv, env=env, stdout=lf, stderr=lf,
                                         start_new_session=True)
        self.started = now()
        d.hist.add("incarnations", inc=self.inc, slot=self.slot, pid=self.proc.pid,
                   failpoints=fp, port=self.port, event="start")

    def scrape(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port,
                                        timeout=2) as r:
                return r.read().decode()
        except Exception:
            return None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def metrics_sums(text):
    """The accounting counters of one /metrics text."""
    out = {"received": 0.0, "deleted": 0.0, "rejected": 0.0, "released": 0.0, "deferred": 0.0,
           "in_flight": 0.0, "slots": 0.0}
    names = {"dsw_messages_received_total": "received", "dsw_messages_deleted_total": "deleted",
             "dsw_messages_rejected_total": "rejected",
             "dsw_messages_released_total": "released",
             "dsw_messages_deferred_total": "deferred", "dsw_runs_in_flight": "in_flight",
             "dsw_slots": "slots"}
    for ln in text.splitlines():
        if ln.startswith("#") or not ln.strip():
            continue
        m = re.match(r"^([a-z_]+)(\{[^}]*\})?\s+([0-9.eE+-]+)$", ln.strip())
        if m and m.group(1) in names:
            out[names[m.group(1)]] += float(m.group(3))
    return out


# ---- the driver ------------------------------------------------------------------------------

class Driver:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        if os.path.exists(self.out):
            shutil.rmtree(self.out)
        os.makedirs(os.path.join(self.out, "logs"))
        os.makedirs(os.path.join(self.out, "metrics"))
        os.chmod(self.out, 0o755)
        self.hist = History(self.out)
        self.rng = random.Random(args.seed)
        self.vectors = os.environ.get("DSW_VECTORS") or os.path.join(SRC, "tests", "vectors")
        self.pg = dswtest.Cluster(self.vectors, prefix="dsw-fault-pg.")
        self.sqs = Sqs(self.out)
        self.daemons = []
        self.inc_n = 0
        self.inc_lock = threading.Lock()
        self.stop = threading.Event()
        self.faults_enabled = True
        self.runs = []
        self.sqs_lock = threading.Lock()
        self.pg_lock = threading.Lock()
        self.services_down = threading.Event()  # set while pg or sqs is being restarted

    def next_incarnation(self):
        with self.inc_lock:
            self.inc_n += 1
            return self.inc_n

    # -- setup --
    def setup(self):
        self.pg.init()
        self.sqs.start()
        self.pg.q("CREATE SCHEMA IF NOT EXISTS dagster_sqs_worker_test; CREATE TABLE IF NOT "
                  "EXISTS dagster_sqs_worker_test.child_starts (run_id text, pid int, started_at "
                  "timestamptz DEFAULT now(), argv_kind text)")
        env = dswtest.worker_env(self.pg.conninfo, self.sqs.urls["template"], self.sqs.endpoint)
        dswtest.db_init(self.args.bin, env)
        # The envelope template: enqueue one scratch run, read its message back.
        tmpl = "00000000-0000-4000-8000-00000000f8f8"
        self.make_runs([(tmpl, "success", None)])
        subprocess.run([self.args.bin, "enqueue", tmpl], env=env, check=True,
                       capture_output=True)
        r = self.sqs.call("ReceiveMessage", {"QueueUrl": self.sqs.urls["template"],
                                             "MaxNumberOfMessages": 1, "WaitTimeSeconds": 1})
        self.template = r["Messages"][0]["Body"]
        self.template_id = tmpl
        self.pg.q("DELETE FROM event_logs WHERE run_id = %s; DELETE FROM run_tags WHERE run_id = "
                  "%s; DELETE FROM runs WHERE run_id = %s" % (lit(tmpl), lit(tmpl), lit(tmpl)))

    def make_runs(self, runs):
        row = json.load(open(os.path.join(self.vectors, "runs_row.json")))
        sql = ["BEGIN;"]
        for rid, behavior, max_runtime in runs:
            status = self.rng.choice(["NOT_STARTED", "STARTING"])
            body = json.loads(row["run_body"])
            body["run_id"] = rid
            body["status"] = {"__enum__": "PipelineRunStatus." + status}
            body["tags"] = {"dsw/test_behavior": behavior}
            sql.append("INSERT INTO runs (run_id, pipeline_name, status, run_body) VALUES "
                       "(%s, %s, %s, %s);" % (lit(rid), lit(row["pipeline_name"]), lit(status),
                                              lit(json.dumps(body))))
            sql.append("INSERT INTO run_tags (run_id, key, value) VALUES (%s, "
                       "'dsw/test_behavior', %s);" % (lit(rid), lit(behavior)))
            if max_runtime:
                sql.append("INSERT INTO run_tags (run_id, key, value) VALUES (%s, "
                           "'dagster/max_runtime', %s);" % (lit(rid), lit(str(max_runtime))))
        sql.append("COMMIT;")
        self.pg.q(None, input="\n".join(sql))

    def envelope(self, rid):
        body = self.template.replace(self.template_id, rid)
        return re.sub(r'"task_id": "[0-9a-f]{32}"',
                      '"task_id": "%032x"' % self.rng.getrandbits(128), body, count=1)

    def send_run(self, rid, kind):
        for _ in range(60):
            try:
                with self.sqs_lock:
                    mid = self.sqs.send("runs", self.envelope(rid))
                self.hist.add("sends", run_id=rid, message_id=mid, kind=kind)
                return mid
            except Exception:
                time.sleep(0.5)  # the server is being restarted
        self.hist.add("sends", run_id=rid, message_id=None, kind=kind, failed=True)
        return None

    # -- workload --
    def workload(self):
        n = self.args.runs
        runs = []
        for i in range(n):
            rid = "%08x-%04x-4%03x-8%03x-%012x" % (self.rng.getrandbits(32),
                                                  self.rng.getrandbits(16),
                                                  self.rng.getrandbits(12),
                                                  self.rng.getrandbits(12),
                                                  self.rng.getrandbits(48))
            x = self.rng.random()
            mr = None
            if x < 0.55:
                b = "success"
            elif x < 0.65:
                b = "failure"
            elif x < 0.73:
                b = "crash"
            elif x < 0.85:
                b = "sleep:%.1f" % self.rng.uniform(0.5, 4)
            elif x < 0.90:
                b = "sleep:%d" % self.rng.randint(11, 14)  # longer than the visibility timeout
            elif x < 0.94:
                b, mr = "ignore_sigterm:600", 3  # hangs; max_runtime makes the daemon kill it
            elif x < 0.97:
                b, mr = "sleep:600", 3
            else:
                b = "exit_early"
            runs.append((rid, b, mr))
        self.make_runs(runs)
        self.runs = [r[0] for r in runs]
        json.dump([{"run_id": r[0], "behavior": r[1], "max_runtime": r[2]} for r in runs],
                  open(os.path.join(self.out, "runs.json"), "w"))

    def sender(self):
        """Send every run's message, spread over the load phase."""
        gap = self.args.load_seconds / max(1, len(self.runs)) * 0.8
        for rid in self.runs:
            if self.stop.is_set():
                return
            self.send_run(rid, "initial")
            time.sleep(gap)

    # -- monitors --
    def child_monitor(self):
        """Lifetimes of fake_dagster children: starts from child_starts, ends from /proc."""
        seen = {}
        alive = {}
        last_q = 0.0
        while not self.stop.is_set() or alive:
            t = now()
            if t - last_q > 0.2 and not self.services_down.is_set():
                last_q = t
                try:
                    rows = self.pg.q("SELECT run_id, pid, extract(epoch FROM started_at), "
                                     "argv_kind FROM dagster_sqs_worker_test.child_starts",
                                     tries=1)
                except Exception:
                    rows = []
                for rid, pid, st, kind in rows:
                    key = (rid, int(pid))
                    if key in seen:
                        continue
                    seen[key] = True
                    alive[key] = (float(st), kind)
            for key in list(alive):
                rid, pid = key
                gone = True
                try:
                    with open("/proc/%d/stat" % pid) as f:
                        st = f.read()
                    state = st[st.rindex(")") + 2]
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        cmd = f.read()
                    gone = state in "ZX" or rid.encode() not in cmd
                except OSError:
                    pass
                if gone:
                    started, kind = alive.pop(key)
                    self.hist.add("children", run_id=rid, pid=pid, started=started, ended=now(),
                                  argv_kind=kind)
            if self.stop.is_set() and now() - last_q > 30:
                break
            time.sleep(0.05)

    def metrics_monitor(self):
        while not self.stop.is_set():
            for d in self.daemons:
                if d.alive() and now() >= d.stopped_until:
                    txt = d.scrape()
                    if txt:
                        s = metrics_sums(txt)
                        self.hist.add("scrapes", inc=d.inc, **s)
            time.sleep(1.0)

    def supervisor(self):
        """Restart daemons that died (failpoint kill/abort, kill -9) after a short pause."""
        while not self.stop.is_set():
            for d in self.daemons:
                with d.lock:
                    if d.proc is not None and d.proc.poll() is not None:
                        rc = d.proc.returncode
                        self.hist.add("incarnations", inc=d.inc, slot=d.slot, event="exit", rc=rc,
                                      failpoints=d.fp)
                        d.proc = None
                        d.restart_at = now() + self.rng.uniform(0.3, 1.5)
                    if d.proc is None and not self.stop.is_set() and now() >= d.restart_at:
                        fp, d.next_fp = d.next_fp, ""
                        d.start(fp if self.faults_enabled else "")
            time.sleep(0.1)

    # -- faults --
    def fault(self, kind):
        rng = self.rng
        live = [d for d in self.daemons if d.alive() and now() >= d.stopped_until]
        detail = {}
        if kind in ("fp_kill", "fp_fail", "wedge"):
            if not live:
                return False
            d = rng.choice(live)
            point = POINTS[self.point_i % len(POINTS)]  # every point in turn
            self.point_i += 1
            if kind == "fp_kill":
                act = "abort" if rng.random() < 0.2 else "kill"
                spec = "%s=%s@%d" % (point, act, rng.randint(1, 3))
                kind = "fp_kill:" + point
            elif kind == "fp_fail":
                spec = "%s=fail%%%d" % (point, rng.randint(2, 4))
                kind = "fp_fail:" + point
            else:
                spec = "heartbeat_lease=sleep:3000@%d" % rng.randint(2, 12)
            with d.lock:
                d.next_fp = spec
                old = d.inc
                if d.proc:
                    d.proc.kill()  # replaced at once by an incarnation armed with spec
                    d.proc.wait()
                    self.hist.add("incarnations", inc=old, slot=d.slot, event="exit", rc=-9,
                                  failpoints=d.fp, replaced=True)
                    d.proc = None
                    d.restart_at = 0
            detail = {"slot": d.slot, "replaced": old, "spec": spec}
        elif kind == "kill9":
            if not live:
                return False
            d = rng.choice(live)
            with d.lock:
                if not d.proc:
                    return False
                detail = {"inc": d.inc, "pid": d.proc.pid}
                d.proc.kill()
        elif kind == "sigstop":
            if not live:
                return False
            d = rng.choice(live)
            secs = rng.uniform(2 * TTL_S, 4 * TTL_S)
            detail = {"inc": d.inc, "seconds": secs}
            d.stopped_until = now() + secs + 0.5
            self.hist.add("faults", kind=kind, **detail)
            os.kill(d.proc.pid, signal.SIGSTOP)
            time.sleep(secs)
            try:
                os.kill(d.proc.pid, signal.SIGCONT)
            except Exception:
                pass
            return True
        elif kind == "pg_terminate":
            r = self.pg.q("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                          "backend_type = 'client backend' AND pid <> pg_backend_pid()")
            detail = {"terminated": int(r[0][0])}
        elif kind == "pg_restart":
            pause = rng.uniform(0.5, 3.0)
            detail = {"down_seconds": pause}
            self.hist.add("faults", kind=kind, **detail)
            with self.pg_lock:
                self.services_down.set()
                self.pg.stop("immediate")
                time.sleep(pause)
                self.pg.start()
                self.services_down.clear()
            return True
        elif kind == "sqs_restart":
            pause = rng.uniform(0.5, 2.0)
            try:
                vis, inv = self.sqs.counts("runs")
            except Exception:
                vis, inv = -1, -1
            detail = {"down_seconds": pause, "visible": vis, "in_flight": inv}
            self.hist.add("faults", kind=kind, phase="down", **detail)
            with self.sqs_lock:
                self.sqs.kill()
                time.sleep(pause)
                self.sqs.start()
            self.hist.add("sqs_restarts", up=now())
            return True
        elif kind == "dup_send":
            if not self.sent_runs():
                return False
            rid = rng.choice(self.sent_runs())
            detail = {"run_id": rid}
            self.send_run(rid, "duplicate")
        elif kind == "hostile":
            n = rng.randint(1, 4)
            bodies = [self.hostile_body() for _ in range(n)]
            mids = []
            for b in bodies:
                try:
                    with self.sqs_lock:
                        mids.append(self.sqs.send("runs", b))
                except Exception:
                    pass
            for m in mids:
                self.hist.add("sends", run_id=None, message_id=m, kind="hostile")
            detail = {"count": len(mids)}
        self.hist.add("faults", kind=kind, **detail)
        return True

    def sent_runs(self):
        try:
            with open(os.path.join(self.out, "sends.jsonl")) as f:
                return list({json.loads(ln)["run_id"] for ln in f if '"initial"' in ln})
        except OSError:
            return []

    def hostile_body(self):
        rng = self.rng
        unknown = "%08x-0000-4000-8000-%012x" % (rng.getrandbits(32), rng.getrandbits(48))
        choices = [
            "not json at all",
            "{}",
            '{"task_name": "execute_job"}',
            "[" * 5000 + "]" * 5000,
            self.envelope(unknown),  # a well-formed envelope for a run that does not exist
            self.envelope("../../etc/passwd"),
            self.envelope("x" * 300),
            self.template.replace(self.template_id, '", "injected": "1'),
            '{"task_id": 1, "task_name": null, "kwargs": []}',
            "\u00e9\u0000\u2028" * 100,
            "A" * rng.randint(1000, 200000),
            json.dumps({"__class__": "ExecuteRunArgs", "pipeline_run_id": unknown}),
        ]
        return rng.choice(choices)

    def injector(self):
        kinds = [k for k in (self.args.kinds.split(",") if self.args.kinds else ALL_KINDS)]
        weights = {"fp_kill": 6, "fp_fail": 3, "wedge": 1, "kill9": 3, "sigstop": 2,
                   "pg_terminate": 2, "pg_restart": 1, "sqs_restart": 1, "dup_send": 3,
                   "hostile": 2}
        total = self.args.faults
        if total <= 0:
            return
        gap = self.args.load_seconds / total
        done = 0
        self.point_i = self.rng.randrange(len(POINTS))
        # Every kind once first (in a seeded order), then at random by weight.
        first = list(kinds)
        self.rng.shuffle(first)
        time.sleep(min(3.0, gap))
        deadline = now() + self.args.load_seconds
        while done < total and not self.stop.is_set():
            kind = first.pop(0) if first else self.rng.choices(kinds, [weights[k] for k in kinds])[0]
            if kind == "sqs_restart" and self.sqs_restarts >= self.args.max_sqs_restarts:
                continue
            try:
                ok = self.fault(kind)
            except Exception as e:  # a fault that could not be applied is logged, not fatal
                self.hist.add("fault_errors", kind=kind, err=repr(e))
                ok = False
            if ok:
                done += 1
                if kind == "sqs_restart":
                    self.sqs_restarts += 1
            left = deadline - now()
            time.sleep(max(0.2, min(gap * self.rng.uniform(0.5, 1.5), left / max(1, total - done))))

    # -- settle and finish --
    def all_done(self):
        rows = self.pg.q("SELECT count(*) FILTER (WHERE status NOT IN ('SUCCESS','FAILURE',"
                         "'CANCELED')) FROM runs")
        open_runs = int(rows[0][0])
        try:
            vis, inv = self.sqs.counts("runs")
        except Exception:
            return False, open_runs, -1
        return vis + inv == 0, open_runs, vis + inv

    def run(self):
        a = self.args
        t0 = now()
        self.setup()
        self.workload()
        self.sqs_restarts = 0
        self.hist.add("phases", phase="start")
        self.daemons = [Daemon(self, i) for i in range(a.daemons)]
        for d in self.daemons:
            d.start()
        threads = [threading.Thread(target=f, daemon=True) for f in
                   (self.child_monitor, self.metrics_monitor, self.supervisor)]
        for t in threads:
            t.start()
        snd = threading.Thread(target=self.sender, daemon=True)
        snd.start()
        self.injector()
        snd.join()
        # Settle: no more faults; every daemon clean (failpoints that never fired are disarmed).
        self.faults_enabled = False
        self.hist.add("phases", phase="settle")
        for d in self.daemons:
            with d.lock:
                d.next_fp = ""
                if d.proc and d.fp:
                    d.proc.kill()
                    d.proc.wait()
                    self.hist.add("incarnations", inc=d.inc, slot=d.slot, event="exit", rc=-9,
                                  failpoints=d.fp, disarmed=True)
                    d.proc = None
                    d.restart_at = 0
        deadline = now() + a.settle_seconds
        quiet_since = None
        while now() < deadline:
            empty, open_runs, depth = self.all_done()
            if empty and (open_runs == 0 or self.sqs_restarts > 0):
                quiet_since = quiet_since or now()
                if open_runs == 0 or now() - quiet_since > 3 * TTL_S + 3:
                    break
            else:
                quiet_since = None
            time.sleep(1.0)
        self.hist.add("phases", phase="quiet", open_runs=open_runs, depth=depth)
        # Final metrics, then a graceful stop of every daemon.
        time.sleep(1.5)
        for d in self.daemons:
            if d.alive():
                txt = d.scrape()
                if txt:
                    with open(os.path.join(self.out, "metrics", d.inc + ".txt"), "w") as f:
                        f.write(txt)
                    self.hist.add("final_scrapes", inc=d.inc, **metrics_sums(txt))
        self.stop.set()
        for d in self.daemons:
            with d.lock:
                if d.alive():
                    d.proc.send_signal(signal.SIGTERM)
        for d in self.daemons:
            if d.proc:
                try:
                    rc = d.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    rc = d.proc.wait()
                self.hist.add("incarnations", inc=d.inc, slot=d.slot, event="exit", rc=rc,
                              failpoints=d.fp, final=True)
        for t in threads:
            t.join(timeout=40)
        self.dump()
        self.hist.add("phases", phase="end", seconds=now() - t0)

    def dump(self):
        """The final state: runs, terminal events, claims, starts, and what the queues hold."""
        st = {}
        st["runs"] = self.pg.q("SELECT run_id, status FROM runs")
        st["terminal_events"] = self.pg.q(
            "SELECT run_id, dagster_event_type, extract(epoch FROM timestamp) FROM event_logs "
            "WHERE dagster_event_type IN ('PIPELINE_SUCCESS','PIPELINE_FAILURE',"
            "'PIPELINE_CANCELED') ORDER BY id")
        st["refusals"] = self.pg.q(
            "SELECT run_id, extract(epoch FROM timestamp) FROM event_logs WHERE event LIKE "
            "'%started a new run worker while the run was already in state%' OR event LIKE "
            "'%Ignoring a run worker that started after the run had already finished%'")
        st["claims"] = self.pg.q("SELECT run_id, state, fencing_token, worker_id, outcome, "
                                 "attempt FROM dagster_sqs_worker.run_claims")
        st["starts"] = self.pg.q("SELECT run_id, pid, extract(epoch FROM started_at), argv_kind "
                                 "FROM dagster_sqs_worker_test.child_starts")
        st["queue_left"] = self.sqs.drain("runs")
        st["quarantine"] = self.sqs.drain("quarantine")
        json.dump(st, open(os.path.join(self.out, "final.json"), "w"))

    def cleanup(self):
        self.stop.set()
        for d in self.daemons:
            if d.proc and d.proc.poll() is None:
                try:
                    os.kill(d.proc.pid, signal.SIGCONT)
                except Exception:
                    pass
                d.proc.kill()
                d.proc.wait()
        self.sqs.kill()
        self.pg.stop("immediate")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--fake", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--daemons", type=int, default=3)
    ap.add_argument("--faults", type=int, default=15)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--load-seconds", type=float, default=60)
    ap.add_argument("--settle-seconds", type=float, default=90)
    ap.add_argument("--max-sqs-restarts", type=int, default=2)
    ap.add_argument("--wrapper", default="")
    ap.add_argument("--kinds", default="")
    ap.add_argument("--keep", action="store_true", help="keep the pg data directory")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    a.fake = os.path.abspath(a.fake)
    drv = Driver(a)
    try:
        drv.run()
    finally:
        drv.cleanup()
        if not a.keep:
            drv.pg.remove()
    rc = subprocess.run([sys.executable, os.path.join(HERE, "check.py"), drv.out]).returncode
    sys.exit(rc)


if __name__ == "__main__":
    main()
