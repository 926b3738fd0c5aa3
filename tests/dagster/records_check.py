#!/usr/bin/python3
"""What the daemon writes, read back by real Dagster's own API, on every Dagster tree found.

For each tree (../shared/dagster/<tree> through its env.sh, or the importable dagster when run
with --child): a fresh database gets Dagster's tables from that tree (DagsterInstance.get()),
the claims schema from `dagster-sqs-worker db-init`, and runs created through Dagster's API.
Then the real daemon binary (`dagster-sqs-worker exec`, no queue) writes its rows:
  crash     a NOT_STARTED run whose run worker exits 3 without a word: launch event and tags,
            exit ENGINE_EVENT, PIPELINE_FAILURE with failure_reason UNEXPECTED_TERMINATION and
            the dagster/failure_reason tag
  lost      a STARTED run whose claim is stale (its daemon died): PIPELINE_FAILURE "run worker
            lost", UNEXPECTED_TERMINATION
  canceled  a run CANCELING through report_run_canceling that nobody runs: PIPELINE_CANCELED
and Dagster reads them: get_run_by_id (status, tags from run_body), all_logs (every entry
deserializes; the failure's event_specific_data is JobFailureData, with failure_reason where
the tree's JobFailureData has it), get_run_stats, get_records_for_run where the tree has it,
get_runs filtered by the tags (the run_tags rows). No message of ours may end in "..".

usage: records_check.py --build DIR [--tree 1.3,1.7]      (every tree found by default)
       records_check.py --build DIR --child                (this interpreter's dagster)
Trees: ../shared/dagster/<tree> (through its env.sh); else an importable dagster (this
interpreter, PYTHONPATH, or DSW_DAGSTER_SRC = a dagster checkout's python_modules/dagster).
Environment: DSW_TEST_PG_CONNINFO (a server where databases can be created). Exit 0 when
every check on every tree passed, 1 otherwise; with no Dagster at all 77 (skipped, said
loudly), or 1 under CI=true.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "dagster"))
OURS = "[dagster-sqs-worker] "
HEADS = {"701913684cb4": "1.3", "46b412388816": "1.7"}

JOBS = '''
from dagster import job, op


@op
def noop():
    return 1


@job
def records_job():
    noop()
'''


class Failed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failed(what)


# ---- one tree (the child) --------------------------------------------------------------------

class Tree:
    def __init__(self, opt, work):
        import psycopg2

        self.psycopg2 = psycopg2
        self.bin = os.path.join(os.path.abspath(opt.build), "dagster-sqs-worker")
        expect(os.access(self.bin, os.X_OK), "no daemon binary at %s" % self.bin)
        base = dict(p.split("=", 1) for p in os.environ["DSW_TEST_PG_CONNINFO"].split())
        self.dbname = "dsw_records_%s" % uuid.uuid4().hex[:10]
        admin = psycopg2.connect(" ".join("%s=%s" % i for i in base.items()))
        admin.autocommit = True
        admin.cursor().execute('CREATE DATABASE "%s"' % self.dbname)
        admin.close()
        kv = dict(base, dbname=self.dbname)
        self.conninfo = " ".join("%s=%s" % i for i in kv.items())
        self.work = work
        self.home = os.path.join(work, "home")
        os.makedirs(self.home)
        with open(os.path.join(self.home, "dagster.yaml"), "w") as f:
            f.write('storage:\n  postgres:\n    postgres_url: "postgresql://%s@%s:%s/%s"\n'
                    "telemetry:\n  enabled: false\n" % (kv.get("user", "postgres"),
                                                         kv.get("host", "127.0.0.1"),
                                                         kv.get("port", "5432"), self.dbname))
        with open(os.path.join(work, "records_jobs.py"), "w") as f:
            f.write(JOBS)
        self.crash = os.path.join(work, "crash.sh")  # the run worker: exit 3, nothing written
        with open(self.crash, "w") as f:
            f.write("#!/bin/sh\nexit 3\n")
        os.chmod(self.crash, 0o755)
        sys.path.insert(0, work)
        os.environ["DAGSTER_HOME"] = self.home
        import dagster
        from dagster import DagsterInstance

        self.version = dagster.__version__
        self.inst = DagsterInstance.get()  # Dagster's tables at this tree's head
        self.db = psycopg2.connect(self.conninfo)
        self.db.autocommit = True
        self.head = self.q("SELECT version_num FROM alembic_version")[0][0]
        self.daemon(["db-init"])

    def drop(self):
        base = dict(p.split("=", 1) for p in os.environ["DSW_TEST_PG_CONNINFO"].split())
        admin = self.psycopg2.connect(" ".join("%s=%s" % i for i in base.items()))
        admin.autocommit = True
        try:
            admin.cursor().execute('DROP DATABASE IF EXISTS "%s"' % self.dbname)
        except self.psycopg2.Error:
            pass  # a connection Dagster keeps: the throwaway server goes anyway
        admin.close()

    def q(self, sql, *args):
        cur = self.db.cursor()
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None

    def daemon(self, argv, stdin=None):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.work,
            "LANG": "C.UTF-8", "DSW_POSTGRES_CONNINFO": self.conninfo,
            "DSW_QUEUE_URL": "http://127.0.0.1:9/000000000000/unused",
            "DSW_QUEUE_REGION": "us-east-1", "DSW_RUNS_COMMAND": self.crash,
            "DSW_RUNS_DAGSTER_HOME": self.home, "DSW_HTTP_LISTEN": "off",
            "DSW_LOG_FORMAT": "json",
        }
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "DSW_TRAMPOLINE"):
            if k in os.environ:
                env[k] = os.environ[k]
        r = subprocess.run([self.bin] + argv, env=env, input=stdin, capture_output=True,
                           text=True, timeout=120)
        expect(r.returncode == 0, "dagster-sqs-worker %s exited %d: %s" %
               (" ".join(argv), r.returncode, r.stderr[-2000:]))
        return r

    # -- runs through Dagster's API --
    def create(self):
        import records_jobs
        from dagster import reconstructable
        from dagster._core.storage.pipeline_run import DagsterRunStatus  # both trees have it

        recon = reconstructable(records_jobs.records_job)
        run = self.inst.create_run_for_job(job_def=recon.get_definition(), run_config={},
                                           job_code_origin=recon.get_python_origin(),
                                           status=DagsterRunStatus.NOT_STARTED)
        return run, recon

    def exec_message(self, run, recon):
        """The bare serdes ExecuteRunArgs, as a launcher would put it on the queue."""
        from dagster._serdes import serialize_value

        origin = json.loads(serialize_value(recon.get_python_origin()))
        body = {"__class__": "ExecuteRunArgs", "instance_ref": None, "pipeline_origin": origin,
                "pipeline_run_id": run.run_id, "set_exit_code_on_failure": True}
        return self.daemon(["exec", "-"], stdin=json.dumps(body, sort_keys=True))

    # -- Dagster's reads --
    def reads(self, run_id, status, reason=None, tags=()):
        from dagster import RunsFilter
        from dagster._core.events import JobFailureData

        run = self.inst.get_run_by_id(run_id)
        expect(run is not None, "get_run_by_id found nothing")
        expect(run.status.value == status, "status %s, want %s" % (run.status.value, status))
        logs = self.inst.all_logs(run_id)
        stats = self.inst.get_run_stats(run_id)
        expect(stats.end_time is not None, "get_run_stats: no end_time")
        out = {"status": run.status.value, "n_logs": len(logs)}
        if hasattr(self.inst, "get_records_for_run"):
            n = len(self.inst.get_records_for_run(run_id, limit=100000).records)
            expect(n == len(logs), "get_records_for_run %d vs all_logs %d" % (n, len(logs)))
            out["records"] = n
        ours = [e for e in logs if e.is_dagster_event and
                (e.dagster_event.message or "").startswith(OURS)]
        expect(ours, "none of our events")
        for e in ours:
            expect(not e.dagster_event.message.endswith(".."),
                   "message ends in '..': %r" % e.dagster_event.message)
        terminal = [e.dagster_event for e in logs if e.is_dagster_event and
                    e.dagster_event.event_type_value in ("PIPELINE_FAILURE", "PIPELINE_CANCELED")]
        expect(len(terminal) == 1, "%d terminal events" % len(terminal))
        term = terminal[0]
        expect(term.message.startswith(OURS), "the terminal event is not ours")
        out["message"] = term.message
        if term.event_type_value == "PIPELINE_FAILURE":
            data = term.event_specific_data
            expect(isinstance(data, JobFailureData), "failure data %r" % (data,))
            if "failure_reason" in JobFailureData._fields:
                expect(data.failure_reason is not None and data.failure_reason.value == reason,
                       "failure_reason %r, want %s" % (data.failure_reason, reason))
                out["failure_reason"] = data.failure_reason.value
            else:
                out["failure_reason"] = "(JobFailureData has no failure_reason: ignored)"
        else:
            expect(term.event_specific_data is None, "cancel data %r" % term.event_specific_data)
        want_tags = dict(tags)
        if reason:
            want_tags["dagster/failure_reason"] = reason
        for k, v in want_tags.items():
            expect(run.tags.get(k) == v, "run tag %s = %r, want %r" % (k, run.tags.get(k), v))
            found = [r.run_id for r in self.inst.get_runs(filters=RunsFilter(tags={k: v}))]
            expect(run_id in found, "get_runs(tags={%s: %s}) misses the run" % (k, v))
            n = self.q("SELECT count(*) FROM run_tags WHERE run_id = %s AND key = %s", run_id, k)
            expect(n[0][0] == 1, "%d run_tags rows for %s" % (n[0][0], k))
        out["tags"] = {k: run.tags.get(k) for k in sorted(run.tags) if
                       k.startswith("dagster-sqs-worker/") or k == "dagster/failure_reason"}
        return out

    # -- scenarios --
    def sc_crash(self):
        run, recon = self.create()
        self.exec_message(run, recon)
        claim = self.q("SELECT worker_id, exit_code, outcome FROM dagster_sqs_worker.run_claims"
                       " WHERE run_id = %s", run.run_id)
        expect(claim and claim[0][1] == 3, "claim %r" % (claim,))
        return self.reads(run.run_id, "FAILURE", "UNEXPECTED_TERMINATION",
                          {"dagster-sqs-worker/worker_id": claim[0][0]})

    def sc_lost(self):
        from dagster._core.events import DagsterEvent

        run, recon = self.create()
        # Started by a daemon that then died: Dagster's own PIPELINE_START, and a claim whose
        # heartbeat stopped an hour ago.
        self.inst.run_storage.handle_run_event(
            run.run_id, DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name))
        self.q("INSERT INTO dagster_sqs_worker.run_claims (run_id, kind, worker_id,"
               " fencing_token, message_id, receive_count, state, child_pid, heartbeat_at)"
               " VALUES (%s, 'execute', 'deadhost:1:1', nextval('dagster_sqs_worker.fence'),"
               " 'm-old', 1, 'running', 4242, now() - interval '1 hour')", run.run_id)
        self.exec_message(run, recon)
        return self.reads(run.run_id, "FAILURE", "UNEXPECTED_TERMINATION")

    def sc_canceled(self):
        run, recon = self.create()
        self.inst.report_run_canceling(run)
        self.exec_message(run, recon)
        return self.reads(run.run_id, "CANCELED")


def serdes_reads():
    """deserialize_value of PipelineFailureData with a failure_reason member, as we write it,
    for a member this tree knows and one it may not: what comes back (never an exception)."""
    from dagster._core.events import JobFailureData
    from dagster._serdes import deserialize_value

    out = {}
    for reason in ("UNEXPECTED_TERMINATION", "RUN_WORKER_RESTART"):
        text = json.dumps({"__class__": "PipelineFailureData", "error": None,
                           "failure_reason": {"__enum__": "RunFailureReason." + reason},
                           "first_step_failure_event": None}, sort_keys=True)
        v = deserialize_value(text, JobFailureData)
        fr = getattr(v, "failure_reason", "(no such field)")
        out[reason] = getattr(fr, "value", fr)
    return out


def child(opt):
    results = {}
    with tempfile.TemporaryDirectory(prefix="dsw-records-") as work:
        t = Tree(opt, work)
        info = {"dagster": t.version, "alembic_head": t.head,
                "head_of": HEADS.get(t.head, "unknown"), "serdes_failure_reason": serdes_reads()}
        for name in ("crash", "lost", "canceled"):
            t0 = time.time()
            try:
                r = getattr(t, "sc_" + name)()
                results[name] = {"ok": True, "s": round(time.time() - t0, 2), **r}
            except Exception as e:  # noqa: BLE001 (a scenario's failure is reported)
                results[name] = {"ok": False, "s": round(time.time() - t0, 2),
                                 "error": "%s: %s" % (type(e).__name__, e)}
        t.db.close()
        t.inst.dispose()
        t.drop()
    print(json.dumps({"info": info, "results": results}, indent=1, sort_keys=True))
    return 0 if all(r["ok"] for r in results.values()) else 1


# ---- the driver: one child per tree -----------------------------------------------------------

def tree_env(tree):
    """The environment env.sh makes for tree (its exports evaluated by bash)."""
    r = subprocess.run(["bash", "-c", 'eval "$(bash "$0" "$1")" && env -0',
                        os.path.join(SHARED, "env.sh"), tree], capture_output=True)
    if r.returncode != 0:
        raise Failed("env.sh %s: %s" % (tree, r.stderr.decode(errors="replace")[-500:]))
    return dict(kv.split("=", 1) for kv in r.stdout.decode().split("\0") if "=" in kv)


def importable_env():
    """The environment of an importable dagster (DSW_DAGSTER_SRC first), or None."""
    env = dict(os.environ)
    src = os.environ.get("DSW_DAGSTER_SRC")
    if src:
        env["PYTHONPATH"] = src + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-c", "import dagster, dagster_postgres"], env=env,
                       capture_output=True)
    return env if r.returncode == 0 else None


def driver(opt):
    trees = opt.tree.split(",") if opt.tree else sorted(
        os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(SHARED, "*/")
                                                                 + "python_modules"))
    if not trees:
        env = importable_env()
        if env is None:
            print("records_check: NO Dagster found (no tree under %s, no importable dagster "
                  "with DSW_DAGSTER_SRC=%s): NOTHING WAS CHECKED" %
                  (SHARED, os.environ.get("DSW_DAGSTER_SRC", "")))
            return 1 if os.environ.get("CI") == "true" else 77
        r = subprocess.run([sys.executable, __file__, "--child", "--build", opt.build],
                           env=env, capture_output=True, text=True)
        print("== importable dagster (exit %d)" % r.returncode)
        print(r.stdout.strip() or r.stderr[-3000:])
        return 1 if r.returncode else 0
    worst = 0
    for tree in trees:
        env = tree_env(tree)
        r = subprocess.run([env.get("DSW_DAGSTER_PYTHON", sys.executable), __file__, "--child",
                            "--build", opt.build], env=env, capture_output=True, text=True)
        print("== tree %s (exit %d)" % (tree, r.returncode))
        print(r.stdout.strip() or r.stderr[-3000:])
        if r.returncode != 0 and r.stdout.strip():
            print(r.stderr[-1500:])
        worst = max(worst, 1 if r.returncode else 0)
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--tree")
    ap.add_argument("--child", action="store_true")
    opt = ap.parse_args()
    return child(opt) if opt.child else driver(opt)


if __name__ == "__main__":
    sys.exit(main())
