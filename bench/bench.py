#!/usr/bin/python3
"""Benchmark: dagster-sqs-worker against a Celery 5 peer (see bench/README.md). Driven by
bench/run.sh, which starts the services and builds; this file measures and prints the table.

Phases (each bounded in time):
  limits     the queue servers' receive+delete rate (bench_sqs --drain, batches of 10) and the
             rate at which this machine spawns and reaps the child with S at a time
  throughput N runs enqueued first, then the worker started: runs/s from first receive to last
             delete, worker CPU and RSS, SQS requests and Postgres statements per run
  latency    K messages sent one at a time at a steady pace to the running, idle worker:
             SentTimestamp (sender's clock when SendMessage returned) -> child main()
  idle       the worker alone on an empty queue for IDLE seconds: RSS, CPU, SQS requests
  scale      the daemon with 500 slots and 500 runs whose child sleeps: RSS, CPU %, SQS req/s
"""
import argparse
import glob
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import psycopg2
import psycopg2.extras

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "support"))
import dswtest  # noqa: E402  (the Postgres and SQS set-up shared with the fault driver and harness)
from dswtest import Sqs, free_port  # noqa: E402,F401  (Sqs: the AWS JSON 1.0 client below)

CLK = os.sysconf("SC_CLK_TCK")
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


# ---- processes -------------------------------------------------------------------------------

def cpu_s(pid):
    """utime + stime of one process (not its children), seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except OSError:
        return 0.0


def status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Worker:
    """A worker under measurement: the processes that are the worker (the daemon alone; Celery's
    main process and its pool), never the run children."""

    def __init__(self, proc, kind):
        self.proc, self.kind = proc, kind

    def pids(self):
        if self.kind == "daemon":
            return [self.proc.pid]
        # Celery: the main process and its pool processes (the runs are their children).
        return [self.proc.pid] + children(self.proc.pid)

    def cpu(self):
        return sum(cpu_s(p) for p in self.pids())

    def rss_kb(self):
        return sum(status_kb(p, "VmRSS") for p in self.pids())

    def pss_kb(self):
        return sum(pss_kb(p) for p in self.pids())


class Sampler(threading.Thread):
    def __init__(self, worker, every=0.1):
        super().__init__(daemon=True)
        self.w, self.every, self.stop_ev = worker, every, threading.Event()
        self.peak_rss = 0
        self.rss = []

    def run(self):
        while not self.stop_ev.is_set():
            r = self.w.rss_kb()
            self.rss.append(r)
            self.peak_rss = max(self.peak_rss, r)
            self.stop_ev.wait(self.every)

    def stop(self):
        self.stop_ev.set()
        self.join()


def http_get(port, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def stop_proc(p, timeout=60, perf=None):
    if perf is not None and perf.poll() is None:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)  # the daemon's second signal skips the drain wait
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---- the bench ---------------------------------------------------------------------------------

class Bench:
    def __init__(self, o):
        self.o = o
        self.out = o.out
        os.makedirs(self.out, exist_ok=True)
        # BENCH_DAEMON: another daemon binary (e.g. an older commit's, for before/after rows)
        self.daemon = os.environ.get("BENCH_DAEMON") or os.path.join(o.build, "dagster-sqs-worker")
        self.child = os.path.join(o.build, "fake_dagster")
        self.pg_admin = o.pg
        self.pg_worker = o.pg + " user=bench_worker"
        self.db = psycopg2.connect(self.pg_admin)
        self.db.autocommit = True
        row = json.load(open(os.path.join(o.vectors, "runs_row.json")))
        self.job = row["pipeline_name"]
        self.body = json.loads(row["run_body"])
        self.moto_log = o.moto_log
        self.results = {}
        self.seq = 0

    def sql(self, q, args=None):
        with self.db.cursor() as c:
            c.execute(q, args)
            return c.fetchall() if c.description else None

    def setup(self):
        if not self.sql("SELECT 1 FROM pg_roles WHERE rolname = 'bench_worker'"):
            self.sql("CREATE ROLE bench_worker LOGIN SUPERUSER")
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        dswtest.db_init(self.daemon, dswtest.worker_env(self.pg_worker, "http://x/1/q"))

    def name(self, what):
        self.seq += 1
        return "bench-%s-%d-%d" % (what, os.getpid(), self.seq)

    def make_runs(self, n, behavior, status="STARTING"):
        ids = [str(uuid.uuid4()) for _ in range(n)]
        rows, tags = [], []
        for rid in ids:
            b = dict(self.body)
            b["run_id"] = rid
            b["status"] = {"__enum__": "PipelineRunStatus." + status}
            b["tags"] = {"dsw/test_behavior": behavior}
            rows.append((rid, self.job, status, json.dumps(b)))
            tags.append((rid, "dsw/test_behavior", behavior))
        with self.db.cursor() as c:
            psycopg2.extras.execute_values(
                c, "INSERT INTO runs (run_id, pipeline_name, status, run_body) VALUES %s", rows,
                page_size=500)
            psycopg2.extras.execute_values(
                c, "INSERT INTO run_tags (run_id, key, value) VALUES %s", tags, page_size=500)
        return ids

    def packed(self, rid):
        return {"__class__": "ExecuteRunArgs", "instance_ref": None,
                "pipeline_origin": self.body["pipeline_code_origin"], "pipeline_run_id": rid,
                "set_exit_code_on_failure": True}

    def taskiq(self, rid):
        return json.dumps({"task_id": uuid.uuid4().hex, "task_name": "execute_job", "labels": {},
                           "labels_types": None, "args": [],
                           "kwargs": {"execute_job_args_packed": self.packed(rid)}})

    def terminal_count(self, ids):
        return self.sql("SELECT count(*) FROM runs WHERE run_id = ANY(%s) AND status = ANY(%s)",
                        (ids, list(TERMINAL)))[0][0]

    def failed_count(self, ids):
        return self.sql("SELECT count(*) FROM runs WHERE run_id = ANY(%s) AND status <> 'SUCCESS'",
                        (ids,))[0][0]

    def pgss_reset(self):
        try:
            self.sql("SELECT pg_stat_statements_reset()")
        except psycopg2.Error:
            pass

    def pgss_worker_calls(self):
        try:
            r = self.sql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_roles r "
                     "ON r.oid = s.userid WHERE r.rolname = 'bench_worker'")
        except psycopg2.Error:  # not preloaded (a run outside bench/run.sh)
            return 0
        return int(r[0][0])

    def pgss_top(self, n=12):
        try:
            return [(int(c), q[:110]) for c, q in self.sql(
                "SELECT calls, regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements s "
                "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = 'bench_worker' "
                "ORDER BY calls DESC LIMIT %s", (n,))]
        except psycopg2.Error:
            return []

    def moto_lines(self):
        try:
            with open(self.moto_log, "rb") as f:
                return sum(1 for line in f if b'"POST ' in line or b'"GET ' in line)
        except OSError:
            return 0

    def start_log(self, path):
        starts = {}
        try:
            with open(path) as f:
                for line in f:
                    p = line.split()
                    if len(p) == 3:
                        starts.setdefault(p[0], float(p[1]))
        except OSError:
            pass
        return starts

    # ---- workers ----

    def start_daemon(self, endpoint, url, slots, tag, extra=None):
        port = free_port()
        startlog = os.path.join(self.out, tag.replace("/", "-") + ".starts")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "LANG": "C.UTF-8",
            "DSW_QUEUE_URL": url, "DSW_QUEUE_ENDPOINT": endpoint, "DSW_QUEUE_REGION": "us-east-1",
            "DSW_POSTGRES_CONNINFO": self.pg_worker, "DSW_RUNS_DAGSTER_HOME": "/tmp",
            "DSW_RUNS_COMMAND": self.child, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
            "DSW_HTTP_LISTEN": "127.0.0.1:%d" % port, "DSW_RUNS_MAX_CONCURRENT": str(slots),
            "DSW_LOG_FORMAT": "json", "DSW_RUNS_ENV_DSW_FAKE_PG_CONNINFO": self.pg_admin,
            "DSW_RUNS_ENV_DSW_FAKE_START_LOG": startlog,
        }
        env.update(extra or {})
        logf = open(os.path.join(self.out, tag.replace("/", "-") + ".log"), "wb")
        cmd = [self.daemon, "run"]
        cg = None
        if "callgrind" in tag:
            # instructions are repeatable on a loaded machine; the run workers are not traced
            # and start through dsw-exec (under valgrind /proc/self/exe is valgrind's)
            cg = os.path.join(self.out, tag.replace("/", "-") + ".callgrind")
            cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg] + cmd
            env["DSW_TRAMPOLINE"] = os.path.join(os.path.dirname(self.daemon), "dsw-exec")
        p = subprocess.Popen(cmd, env=env, stdout=logf, stderr=logf,
                             stdin=subprocess.DEVNULL)
        w = Worker(p, "daemon")
        w.port, w.log, w.startlog, w.callgrind = port, logf.name, startlog, cg
        w.perf = None
        if os.environ.get("BENCH_PERF"):
            w.perf = subprocess.Popen(["perf", "record", "-g", "-q", "-p", str(p.pid), "-o",
                                       os.path.join(self.out, tag.replace("/", "-") + ".perf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + (120 if cg else 30)
        while time.time() < deadline:
            if p.poll() is not None:
                raise RuntimeError("daemon exited %s; see %s" % (p.returncode, logf.name))
            try:
                if http_get(port, "/readyz")[0] == 200:
                    w.ready_t = time.time()
                    w.cpu0 = w.cpu()
                    if cg:  # count from "ready": start-up is not charged to the runs
                        subprocess.run(["callgrind_control", "-z", str(p.pid)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    return w
            except OSError:
                pass
            time.sleep(0.01)
        stop_proc(p)
        raise RuntimeError("daemon not ready in 30 s; see %s" % logf.name)

    def metrics(self, w):
        st, text = http_get(w.port, "/metrics")
        m = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
        return m

    @staticmethod
    def msum(m, prefix, label=None):
        return sum(v for k, v in m.items()
                   if (k == prefix or k.startswith(prefix + "{")) and (label is None or label in k))

    @staticmethod
    def log_ts(ts):
        t = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        return t + float("0" + ts[19:-1])

    def daemon_event_times(self, w, event):
        out = {}
        with open(w.log) as f:
            for line in f:
                if line.startswith("{") and ('"event": "%s"' % event) in line:
                    try:
                        j = json.loads(line)
                    except ValueError:
                        continue
                    if j.get("run_id"):
                        out.setdefault(j["run_id"], self.log_ts(j["ts"]))
        return out

    def daemon_log_times(self, w):
        """Times of the first receive and the last delete in the daemon's JSON log."""
        rec, dele = [], []
        with open(w.log) as f:
            for line in f:
                if not line.startswith("{"):
                    continue
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                ev = j.get("event")
                if ev in ("receive", "delete"):
                    t = self.log_ts(j["ts"])
                    (rec if ev == "receive" else dele).append(t)
        return (min(rec) if rec else None), (max(dele) if dele else None), len(rec), len(dele)

    def celery_env(self, moto, queue, url, tag):
        port = urllib.parse.urlsplit(moto).port
        return dict(
            os.environ, PYTHONPATH=HERE, BENCH_BROKER="sqs://x:y@127.0.0.1:%d" % port,
            BENCH_QUEUE=queue, BENCH_QUEUE_URL=url, BENCH_PG=self.pg_worker,
            BENCH_CHILD=self.child, BENCH_EVENTS=os.path.join(self.out, tag.replace("/", "-") + ".events"),
            DSW_FAKE_PG_CONNINFO=self.pg_admin,
            DSW_FAKE_START_LOG=os.path.join(self.out, tag.replace("/", "-") + ".starts"))

    def start_celery(self, env, slots, tag):
        logf = open(os.path.join(self.out, tag.replace("/", "-") + ".log"), "wb")
        p = subprocess.Popen(
            ["/usr/bin/python3", "-m", "celery", "-A", "celery_peer", "worker", "-P", "prefork",
             "-c", str(slots), "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-l", "info", "-n", "bench@%h"],
            env=env, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, cwd=HERE)
        w = Worker(p, "celery")
        w.log, w.startlog, w.events = logf.name, env["DSW_FAKE_START_LOG"], env["BENCH_EVENTS"]
        deadline = time.time() + 60
        while time.time() < deadline:
            if p.poll() is not None:
                raise RuntimeError("celery exited %s; see %s" % (p.returncode, logf.name))
            with open(logf.name, "rb") as f:
                if b" ready." in f.read():
                    w.ready_t = time.time()
                    w.cpu0 = w.cpu()
                    return w
            time.sleep(0.02)
        stop_proc(p)
        raise RuntimeError("celery not ready in 60 s; see %s" % logf.name)

    def celery_app(self, env):
        """The peer's Celery app in this process, for send_task (the broker settings come from
        the same module the worker loads)."""
        for k in ("BENCH_BROKER", "BENCH_QUEUE", "BENCH_QUEUE_URL"):
            os.environ[k] = env[k]
        sys.path.insert(0, HERE)
        if "celery_peer" in sys.modules:
            del sys.modules["celery_peer"]
        import celery_peer  # noqa: E402
        return celery_peer.app

    def celery_times(self, w):
        rec, dele = [], []
        try:
            with open(w.events) as f:
                for line in f:
                    k, t = line.split()
                    (rec if k == "received" else dele).append(float(t))
        except OSError:
            pass
        return (min(rec) if rec else None), (max(dele) if dele else None), len(rec), len(dele)

    def wait_runs(self, ids, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.terminal_count(ids) >= len(ids):
                return True
            time.sleep(0.2)
        log("%s: timeout, %d/%d runs finished" % (what, self.terminal_count(ids), len(ids)))
        return False

    # ---- phases ----

    def limits(self):
        o = self.o
        r = {}
        for name, ep, n in (("fauxqs", o.fauxqs, o.runs), ("moto", o.moto, o.moto_runs)):
            out = subprocess.run([o.drain, ep, str(n), "4"], capture_output=True, text=True,
                                 timeout=600)
            m = re.search(r"rate=([0-9.]+)", out.stdout)
            r["sqs_" + name] = float(m.group(1)) if m else None
            log("limit", name, out.stdout.strip() or out.stderr.strip())
        # spawn + reap the child, S at a time, each on a fresh STARTING run (fast behaviour)
        n = o.spawn_runs
        ids = self.make_runs(n, "fast")
        env = dict(os.environ, DSW_FAKE_PG_CONNINFO=self.pg_admin)
        t0 = time.time()
        running, it = set(), iter(ids)
        done = 0
        while done < n:
            while len(running) < o.slots:
                rid = next(it, None)
                if rid is None:
                    break
                running.add(subprocess.Popen(
                    [self.child, "api", "execute_run", json.dumps(self.packed(rid))], env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            pid, _ = os.wait()
            for p in list(running):
                if p.pid == pid:
                    p.returncode = 0
                    running.discard(p)
            done += 1
        r["spawn"] = n / (time.time() - t0)
        bad = self.failed_count(ids)
        log("limit spawn+reap: %d children in %.2f s = %.1f/s (%d not SUCCESS)" % (
            n, time.time() - t0, r["spawn"], bad))
        self.results["limits"] = r

    def throughput_daemon(self, label, endpoint, n, celery_enqueue=False):
        o = self.o
        sqs = Sqs(endpoint)
        qname = self.name("d")
        url = sqs.create_queue(qname)
        ids = self.make_runs(n, "fast")
        t = time.time()
        if celery_enqueue:
            app = self.celery_app(self.celery_env(endpoint, qname, url, label + "-enq"))
            for rid in ids:
                app.send_task("execute_job", kwargs={"execute_job_args_packed": self.packed(rid)})
        else:
            sqs.send_batch(url, [self.taskiq(rid) for rid in ids])
        log("%s: %d messages enqueued in %.1f s" % (label, n, time.time() - t))
        self.pgss_reset()
        moto0 = self.moto_lines()
        w = self.start_daemon(endpoint, url, o.slots, label)
        s = Sampler(w)
        s.start()
        self.wait_runs(ids, o.timeout, label)
        deadline = time.time() + 30
        while time.time() < deadline:
            m = self.metrics(w)
            if self.msum(m, "dsw_messages_deleted_total") >= n:
                break
            time.sleep(0.05)
        s.stop()
        cpu = w.cpu() - w.cpu0
        instr = self.callgrind_instructions(w) if w.callgrind else None
        m = self.metrics(w)
        sqs_req = self.msum(m, "dsw_sqs_requests_total")
        pg_calls = self.pgss_worker_calls()
        pg_top = self.pgss_top()
        moto_req = self.moto_lines() - moto0
        t0, t1, nrec, ndel = self.daemon_log_times(w)
        res = {
            "runs": n, "failed": self.failed_count(ids),
            "rate": n / (t1 - t0) if t0 and t1 and t1 > t0 else None,
            "cpu_per_1000": cpu / n * 1000, "peak_rss_kb": max(s.peak_rss, status_kb(w.proc.pid, "VmHWM")),
            "sqs_per_run": sqs_req / n, "pg_per_run": pg_calls / n,
            "server_req_per_run": moto_req / n if "moto" in label else None,
            "receives": self.msum(m, "dsw_sqs_requests_total", 'op="receive'),
            "sqs_by_op": {k: v for k, v in m.items() if k.startswith("dsw_sqs_requests_total")},
            "pg_top": pg_top, "instr_per_run": instr / n if instr else None,
        }
        log("%s: %d runs, %.1f runs/s, cpu %.2f s, sqs %d, pg %d, log %d receive %d delete" % (
            label, n, res["rate"] or 0, cpu, sqs_req, pg_calls, nrec, ndel))
        if not w.callgrind:  # under valgrind the latency would measure valgrind
            res["latency"] = self.latency(w, sqs, url, label, celery_enqueue and app)
        stop_proc(w.proc, perf=w.perf)
        self.results[label] = res

    @staticmethod
    def callgrind_instructions(w):
        """Instructions (Ir) the daemon executed since ready (callgrind_control -z), dumped now."""
        before = set(glob.glob(w.callgrind + "*"))
        subprocess.run(["callgrind_control", "-d", str(w.proc.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            new = set(glob.glob(w.callgrind + "*")) - before
            for f in sorted(new):
                with open(f) as fh:
                    for line in fh:
                        if line.startswith(("summary:", "totals:")):
                            return int(line.split()[1])
            time.sleep(0.1)
        return None

    def latency(self, w, sqs, url, label, app=None):
        o = self.o
        k = o.lat_msgs
        ids = self.make_runs(k, "fast")
        sent = {}
        time.sleep(1.0)
        for rid in ids:
            if app:
                app.send_task("execute_job", kwargs={"execute_job_args_packed": self.packed(rid)})
            else:
                sqs.send(url, self.taskiq(rid))
            sent[rid] = time.time()
            time.sleep(o.lat_interval)
        self.wait_runs(ids, 120, label + " latency")
        starts = self.start_log(w.startlog)
        lat = sorted((starts[r] - sent[r]) * 1000 for r in ids if r in starts)
        if not lat:
            return None
        q = lambda v, p: v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
        log("%s latency: n=%d p50 %.1f p95 %.1f p99 %.1f ms" % (
            label, len(lat), q(lat, 50), q(lat, 95), q(lat, 99)))
        res = {"p50": q(lat, 50), "p95": q(lat, 95), "p99": q(lat, 99), "n": len(lat)}
        if w.kind == "daemon":
            # sent -> the daemon's "spawn" log line (uv_spawn returned; ms resolution): the
            # daemon's own share, without the trampoline and the child's exec + dynamic linking
            spawned = self.daemon_event_times(w, "spawn")
            sp = sorted((spawned[r] - sent[r]) * 1000 for r in ids if r in spawned)
            if sp:
                res.update({"spawn_p50": q(sp, 50), "spawn_p95": q(sp, 95), "spawn_p99": q(sp, 99)})
                log("%s sent->spawn: p50 %.1f p95 %.1f p99 %.1f ms" % (
                    label, q(sp, 50), q(sp, 95), q(sp, 99)))
        return res

    def throughput_celery(self, label, n):
        o = self.o
        sqs = Sqs(o.moto)
        qname = self.name("c")
        url = sqs.create_queue(qname)
        env = self.celery_env(o.moto, qname, url, label)
        app = self.celery_app(env)
        ids = self.make_runs(n, "fast")
        t = time.time()
        for rid in ids:
            app.send_task("execute_job", kwargs={"execute_job_args_packed": self.packed(rid)})
        log("%s: %d messages enqueued with send_task in %.1f s" % (label, n, time.time() - t))
        self.pgss_reset()
        moto0 = self.moto_lines()
        w = self.start_celery(env, o.slots, label)
        s = Sampler(w)
        s.start()
        self.wait_runs(ids, o.timeout, label)
        deadline = time.time() + 60
        while time.time() < deadline and self.celery_times(w)[3] < n:
            time.sleep(0.05)
        s.stop()
        cpu = w.cpu() - w.cpu0
        moto_req = self.moto_lines() - moto0
        pg_calls = self.pgss_worker_calls()
        t0, t1, nrec, ndel = self.celery_times(w)
        res = {
            "runs": n, "failed": self.failed_count(ids),
            "rate": n / (t1 - t0) if t0 and t1 and t1 > t0 else None,
            "cpu_per_1000": cpu / n * 1000, "peak_rss_kb": s.peak_rss,
            "sqs_per_run": moto_req / n, "pg_per_run": pg_calls / n,
            "server_req_per_run": moto_req / n,
        }
        log("%s: %d runs, %.1f runs/s, cpu %.2f s, moto requests %d, pg %d, %d received %d deleted" % (
            label, n, res["rate"] or 0, cpu, moto_req, pg_calls, nrec, ndel))
        res["latency"] = self.latency(w, sqs, url, label, app)
        stop_proc(w.proc)
        self.results[label] = res

    def idle(self):
        """The daemon (fauxqs, default 20 s long poll) and Celery (moto) side by side, each on its
        own empty queue and server, for IDLE seconds."""
        o = self.o
        fq = Sqs(o.fauxqs)
        durl = fq.create_queue(self.name("idle-d"))
        d = self.start_daemon(o.fauxqs, durl, o.slots, "idle-daemon")
        mq = Sqs(o.moto)
        cname = self.name("idle-c")
        curl = mq.create_queue(cname)
        c = self.start_celery(self.celery_env(o.moto, cname, curl, "idle-celery"), o.slots,
                              "idle-celery")
        time.sleep(3)
        d_cpu, c_cpu = d.cpu(), c.cpu()
        d_req = self.msum(self.metrics(d), "dsw_sqs_requests_total")
        moto0 = self.moto_lines()
        t0 = time.time()
        sd, sc = Sampler(d, 1.0), Sampler(c, 1.0)
        sd.start()
        sc.start()
        time.sleep(o.idle)
        sd.stop()
        sc.stop()
        el = time.time() - t0
        res = {
            "daemon": {"rss_kb": statistics.median(sd.rss), "pss_kb": d.pss_kb(),
                       "cpu_pct": (d.cpu() - d_cpu) / el * 100,
                       "sqs_per_min": (self.msum(self.metrics(d), "dsw_sqs_requests_total") - d_req) / el * 60},
            "celery": {"rss_kb": statistics.median(sc.rss), "pss_kb": c.pss_kb(),
                       "cpu_pct": (c.cpu() - c_cpu) / el * 100,
                       "sqs_per_min": (self.moto_lines() - moto0) / el * 60,
                       "procs": len(c.pids())},
            "seconds": el,
        }
        log("idle:", json.dumps(res))
        stop_proc(d.proc)
        stop_proc(c.proc)
        self.results["idle"] = res

    def scale(self):
        o = self.o
        n = o.scale_runs
        sqs = Sqs(o.fauxqs)
        url = sqs.create_queue(self.name("scale"))
        ids = self.make_runs(n, "sleep:%g" % o.scale_sleep)
        sqs.send_batch(url, [self.taskiq(rid) for rid in ids])
        w = self.start_daemon(o.fauxqs, url, n, "scale",
                              {"DSW_QUEUE_HEARTBEAT": o.scale_heartbeat})
        t_start = time.time()
        deadline = t_start + max(10, min(300, o.scale_sleep - 30))
        inflight = 0
        while time.time() < deadline:
            inflight = self.msum(self.metrics(w), "dsw_runs_in_flight")
            if inflight >= n:
                break
            time.sleep(0.1)
        ramp = time.time() - t_start
        log("scale: %d in flight after %.1f s" % (inflight, ramp))
        # steady state: every launch record written (they queue on the daemon's one Postgres
        # session behind the spawns), then 5 s more
        while time.time() < deadline + 120 and self.sql(
                "SELECT count(*) FROM dagster_sqs_worker.run_claims WHERE run_id = ANY(%s)"
                " AND state = 'running'", (ids,))[0][0] < n:
            time.sleep(0.5)
        recorded = time.time() - t_start
        log("scale: every launch recorded after %.1f s" % recorded)
        time.sleep(5)
        window = max(5.0, min(o.scale_window, o.scale_sleep - (time.time() - t_start) - 3))
        m0 = self.metrics(w)
        c0 = w.cpu()
        self.pgss_reset()
        s = Sampler(w, 0.5)
        s.start()
        t0 = time.time()
        time.sleep(window)
        el = time.time() - t0
        s.stop()
        m1 = self.metrics(w)
        cpu = w.cpu() - c0
        pg = self.pgss_worker_calls()
        d = lambda lab=None: self.msum(m1, "dsw_sqs_requests_total", lab) - \
            self.msum(m0, "dsw_sqs_requests_total", lab)
        res = {
            "runs": n, "sleep": o.scale_sleep, "heartbeat": o.scale_heartbeat, "ramp_s": ramp,
            "recorded_s": recorded,
            "in_flight": inflight, "window_s": el, "rss_kb": statistics.median(s.rss),
            "peak_rss_kb": s.peak_rss, "cpu_pct": cpu / el * 100,
            "sqs_rps": d() / el, "vis_rps": d('op="change_visibility') / el,
            "pg_rps": pg / el,
        }
        log("scale:", json.dumps(res))
        self.wait_runs(ids, o.scale_sleep + 120, "scale")
        res["failed"] = self.failed_count(ids)
        stop_proc(w.proc)
        self.results["scale"] = res


# ---- the table -------------------------------------------------------------------------------

def fmt(v, spec="%.1f"):
    return "-" if v is None else spec % v


def ratio(a, b, spec="%.1fx"):
    if a is None or b is None or b == 0:
        return "-"
    return spec % (a / b)


def table(b):
    o, R = b.o, b.results
    DF, DM, CM = R.get("daemon/fauxqs", {}), R.get("daemon/moto", {}), R.get("celery/moto", {})
    L, I, S = R.get("limits", {}), R.get("idle", {}), R.get("scale", {})
    CG = R.get("daemon/callgrind", {})
    lat = lambda r, p: (r.get("latency") or {}).get(p)
    idl = lambda who, k: (I.get(who) or {}).get(k)
    rows = [
        ("runs (child: fake_dagster fast)", fmt(DF.get("runs"), "%d"), fmt(DM.get("runs"), "%d"),
         fmt(CM.get("runs"), "%d"), ""),
        ("runs not SUCCESS", fmt(DF.get("failed"), "%d"), fmt(DM.get("failed"), "%d"),
         fmt(CM.get("failed"), "%d"), ""),
        ("runs/s, first receive -> last delete", fmt(DF.get("rate")), fmt(DM.get("rate")),
         fmt(CM.get("rate")), ratio(DM.get("rate"), CM.get("rate"))),
        ("dispatch p50 ms (sent -> child start)", fmt(lat(DF, "p50")), fmt(lat(DM, "p50")),
         fmt(lat(CM, "p50")), ratio(lat(CM, "p50"), lat(DM, "p50"))),
        ("dispatch p95 ms", fmt(lat(DF, "p95")), fmt(lat(DM, "p95")), fmt(lat(CM, "p95")),
         ratio(lat(CM, "p95"), lat(DM, "p95"))),
        ("dispatch p99 ms", fmt(lat(DF, "p99")), fmt(lat(DM, "p99")), fmt(lat(CM, "p99")),
         ratio(lat(CM, "p99"), lat(DM, "p99"))),
        ("  daemon's share: sent -> spawn() p50/p99", "%s/%s" % (fmt(lat(DF, "spawn_p50")), fmt(lat(DF, "spawn_p99"))),
         "%s/%s" % (fmt(lat(DM, "spawn_p50")), fmt(lat(DM, "spawn_p99"))), "", ""),
        ("worker RSS idle MiB (60 s, empty queue)", fmt(idl("daemon", "rss_kb") and idl("daemon", "rss_kb") / 1024),
         "(same binary)", fmt(idl("celery", "rss_kb") and idl("celery", "rss_kb") / 1024),
         ratio(idl("celery", "rss_kb"), idl("daemon", "rss_kb"))),
        ("worker PSS idle MiB", fmt(idl("daemon", "pss_kb") and idl("daemon", "pss_kb") / 1024), "",
         fmt(idl("celery", "pss_kb") and idl("celery", "pss_kb") / 1024),
         ratio(idl("celery", "pss_kb"), idl("daemon", "pss_kb"))),
        ("worker RSS peak MiB", fmt(DF.get("peak_rss_kb") and DF["peak_rss_kb"] / 1024),
         fmt(DM.get("peak_rss_kb") and DM["peak_rss_kb"] / 1024),
         fmt(CM.get("peak_rss_kb") and CM["peak_rss_kb"] / 1024),
         ratio(CM.get("peak_rss_kb"), DM.get("peak_rss_kb"))),
        ("worker CPU s per 1,000 runs", fmt(DF.get("cpu_per_1000"), "%.2f"),
         fmt(DM.get("cpu_per_1000"), "%.2f"), fmt(CM.get("cpu_per_1000"), "%.2f"),
         ratio(CM.get("cpu_per_1000"), DM.get("cpu_per_1000"))),
        ("idle CPU % of one core", fmt(idl("daemon", "cpu_pct"), "%.3f"), "",
         fmt(idl("celery", "cpu_pct"), "%.3f"), ratio(idl("celery", "cpu_pct"), idl("daemon", "cpu_pct"))),
        ("idle SQS requests per minute", fmt(idl("daemon", "sqs_per_min")), "",
         fmt(idl("celery", "sqs_per_min")), ratio(idl("celery", "sqs_per_min"), idl("daemon", "sqs_per_min"))),
        ("SQS requests per run", fmt(DF.get("sqs_per_run"), "%.2f"), fmt(DM.get("sqs_per_run"), "%.2f"),
         fmt(CM.get("sqs_per_run"), "%.2f"), ratio(CM.get("sqs_per_run"), DM.get("sqs_per_run"))),
        ("Postgres round trips per run (worker)", fmt(DF.get("pg_per_run"), "%.1f"),
         fmt(DM.get("pg_per_run"), "%.1f"), fmt(CM.get("pg_per_run"), "%.1f"),
         ratio(CM.get("pg_per_run"), DM.get("pg_per_run"))),
        ("daemon instructions per run (callgrind, %s runs on fauxqs)" % fmt(CG.get("runs"), "%d"),
         fmt(CG.get("instr_per_run") and CG["instr_per_run"] / 1e6, "%.2f M"), "", "", ""),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    hdr = ("", "daemon/fauxqs", "daemon/moto", "celery/moto", "celery÷daemon")
    lines = ["dagster-sqs-worker vs Celery %s (prefork, acks_late, prefetch 1), S = %d slots" % (
        celery_version(), o.slots)]
    lines.append(hdr[0].ljust(w0) + "".join(h.rjust(15) for h in hdr[1:]))
    lines.append("-" * (w0 + 60))
    for r in rows:
        lines.append(r[0].ljust(w0) + "".join(str(c).rjust(15) for c in r[1:]))
    lines.append("  (runs/s ratio is daemon÷celery; the other ratios are celery÷daemon)")
    lines.append("")
    sf, sm, sp = L.get("sqs_fauxqs"), L.get("sqs_moto"), L.get("spawn")
    lines.append("limits (this machine)                          fauxqs         moto")
    lines.append("  queue receive+delete msgs/s (batch 10)  %12s %12s" % (fmt(sf), fmt(sm)))
    lines.append("  spawn+reap child runs/s (S at a time)   %12s %12s" % (fmt(sp), fmt(sp)))
    lf = min(x for x in (sf, sp) if x) if (sf or sp) else None
    lm = min(x for x in (sm, sp) if x) if (sm or sp) else None
    lines.append("  min(those)                              %12s %12s" % (fmt(lf), fmt(lm)))
    lines.append("  daemon runs/s ÷ min                     %12s %12s" % (
        ratio(DF.get("rate"), lf, "%.0f%%" if False else "%.2f"), ratio(DM.get("rate"), lm, "%.2f")))
    lines.append("  celery runs/s ÷ min                     %12s %12s" % ("", ratio(CM.get("rate"), lm, "%.2f")))
    if S:
        lines.append("")
        lines.append("scale (daemon, fauxqs): %d runs in flight (child sleep:%g, queue.heartbeat %s, "
                     "claims.heartbeat 10s), %.0f s window after %.1f s ramp, every launch "
                     "recorded at %.1f s" % (S["in_flight"], S["sleep"], S["heartbeat"],
                                             S["window_s"], S["ramp_s"], S.get("recorded_s", -1)))
        hb = float(S["heartbeat"].rstrip("s"))
        per10 = 10.0 / max(1.0, S["in_flight"])
        lines.append("  worker RSS MiB median / peak            %8.1f / %.1f" % (
            S["rss_kb"] / 1024, S["peak_rss_kb"] / 1024))
        lines.append("  worker CPU %% of one core                %8.2f" % S["cpu_pct"])
        lines.append("  SQS requests/s (all / visibility)       %8.2f / %.2f  (at the default 30 s "
                     "heartbeat: %.2f/s)" % (S["sqs_rps"], S["vis_rps"], S["vis_rps"] * hb / 30))
        lines.append("  visibility requests per 10 runs per heartbeat %5.2f" % (
            S["vis_rps"] * hb * per10))
        lines.append("  Postgres statements/s (worker)          %8.1f  (%.2f per 10 runs per 10 s "
                     "lease heartbeat)" % (S["pg_rps"], S["pg_rps"] * 10 * per10))
        lines.append("  runs not SUCCESS at the end             %8d" % S.get("failed", -1))
    lines.append("")
    lines.append("load average (1 min) at the start of each phase: " + ", ".join(
        "%s %s" % kv for kv in R.get("load", {}).items()))
    return "\n".join(lines)


def celery_version():
    try:
        import celery
        import kombu
        return "%s / kombu %s" % (celery.__version__, kombu.__version__)
    except ImportError:
        return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--drain", required=True)
    ap.add_argument("--pg", required=True)
    ap.add_argument("--fauxqs", required=True)
    ap.add_argument("--moto", required=True)
    ap.add_argument("--moto-log", required=True)
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--moto-runs", type=int, default=500)
    ap.add_argument("--spawn-runs", type=int, default=300)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--lat-msgs", type=int, default=60)
    ap.add_argument("--lat-interval", type=float, default=0.3)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--scale-runs", type=int, default=2000)
    ap.add_argument("--scale-sleep", type=float, default=240)
    ap.add_argument("--scale-heartbeat", default="5s")
    ap.add_argument("--scale-window", type=float, default=20)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--callgrind-runs", type=int, default=200)
    ap.add_argument("--phases", default="limits,daemon-fauxqs,daemon-moto,celery-moto,idle,scale")
    o = ap.parse_args()
    b = Bench(o)
    b.setup()
    phases = o.phases.split(",")
    b.results["load"] = {}
    for ph in phases:
        t = time.time()
        b.results["load"][ph] = open("/proc/loadavg").read().split()[0]
        log("phase %s (load %s)" % (ph, open("/proc/loadavg").read().strip()))
        if ph == "limits":
            b.limits()
        elif ph == "daemon-fauxqs":
            b.throughput_daemon("daemon/fauxqs", o.fauxqs, o.runs)
        elif ph == "daemon-moto":
            b.throughput_daemon("daemon/moto", o.moto, o.moto_runs, celery_enqueue=True)
        elif ph == "celery-moto":
            b.throughput_celery("celery/moto", o.moto_runs)
        elif ph == "idle":
            b.idle()
        elif ph == "daemon-callgrind":
            b.throughput_daemon("daemon/callgrind", o.fauxqs, o.callgrind_runs)
        elif ph == "scale":
            b.scale()
        log("phase %s took %.0f s" % (ph, time.time() - t))
    with open(os.path.join(o.out, "results.json"), "w") as f:
        json.dump(b.results, f, indent=1)
    print(table(b))


if __name__ == "__main__":
    main()
