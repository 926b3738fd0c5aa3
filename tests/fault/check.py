#!/usr/bin/env python3
"""Checker of a fault-injection scenario's history (written by tests/fault/driver.py).

usage: check.py OUT [--json]

Invariants (each violation is listed; the exit status is 1 when there is any):
  1. every run ends terminal in Postgres, or its message is still in the queue / quarantine,
     or (explained, not a violation) its last message was sent before a restart of the SQS
     server, which keeps queues in memory and loses them;
  2. at most one fake_dagster child alive per run at any instant (child_starts + the /proc
     monitor's end times, 0.3 s tolerance for the monitor's polling), and no execute_run child
     started for a run that was already STARTED or terminal (the double's refusal events);
  3. no delete of a message for reason recorded / terminal_skip before the run's terminal
     event was committed (daemon JSON log "delete" vs event_logs timestamps);
  4. metrics accounting: at every scrape 0 <= received - (deleted + rejected + released +
     deferred) <= slots (the messages held), and at the quiet end, equality.
Also reported: runs, daemons, faults by kind (and failpoints that actually fired), runs
re-executed, the worst and median time from a daemon's death to each of its runs being
terminal, hostile messages and where they went.
"""
import json
import os
import re
import sys
from datetime import datetime, timezone

TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")
OVERLAP_TOL = 0.3
DELETE_TOL = 0.05


def jl(out, name):
    p = os.path.join(out, name + ".jsonl")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def parse_ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def read_logs(out):
    """inc -> list of parsed JSON log lines (non-JSON lines, e.g. valgrind's, skipped)."""
    logs = {}
    d = os.path.join(out, "logs")
    for name in sorted(os.listdir(d)):
        inc = name[:-4]
        lines = []
        with open(os.path.join(d, name), errors="replace") as f:
            for ln in f:
                if not ln.startswith("{"):
                    continue
                try:
                    rec = json.loads(ln)
                except ValueError:
                    continue
                if "ts" in rec:
                    rec["t"] = parse_ts(rec["ts"])
                    lines.append(rec)
        logs[inc] = lines
    return logs


def main():
    out = sys.argv[1]
    want_json = "--json" in sys.argv
    final = json.load(open(os.path.join(out, "final.json")))
    runs = json.load(open(os.path.join(out, "runs.json")))
    run_ids = [r["run_id"] for r in runs]
    behavior = {r["run_id"]: r["behavior"] for r in runs}
    status = {r[0]: r[1] for r in final["runs"]}
    sends = jl(out, "sends")
    faults = jl(out, "faults")
    incs = jl(out, "incarnations")
    logs = read_logs(out)
    violations = []
    info = {}

    # ---- 1. every run terminal, queued, or explained by an SQS restart ----
    last_send = {}
    for s in sends:
        if s.get("run_id") and s.get("message_id"):
            last_send[s["run_id"]] = max(last_send.get(s["run_id"], 0), s["t"])
    sqs_downs = [f["t"] for f in faults if f["kind"] == "sqs_restart"]
    queued_text = "\n".join(final["queue_left"] + final["quarantine"])
    lost, explained, queued = [], [], []
    for rid in run_ids:
        if status.get(rid) in TERMINAL:
            continue
        if rid in queued_text:
            queued.append(rid)
        elif rid in last_send and any(d > last_send[rid] for d in sqs_downs):
            explained.append(rid)
        else:
            lost.append(rid)
            violations.append("run %s ends %s with no message left (behavior %s, last send %s)"
                              % (rid, status.get(rid), behavior.get(rid), last_send.get(rid)))
    info["runs"] = len(run_ids)
    info["runs_terminal"] = sum(1 for r in run_ids if status.get(r) in TERMINAL)
    info["runs_lost"] = len(lost)
    info["runs_lost_sqs_restart_explained"] = len(explained)
    info["runs_still_queued"] = len(queued)
    info["final_status"] = {}
    for r in run_ids:
        info["final_status"][status.get(r)] = info["final_status"].get(status.get(r), 0) + 1

    # ---- 2. at most one child alive per run; no start of an already started run ----
    children = jl(out, "children")
    by_run = {}
    for c in children:
        by_run.setdefault(c["run_id"], []).append(c)
    overlaps = 0
    for rid, cs in by_run.items():
        cs.sort(key=lambda c: c["started"])
        for a, b in zip(cs, cs[1:]):
            if b["started"] < a["ended"] - OVERLAP_TOL:
                overlaps += 1
                violations.append("run %s: child pid %d started at %.3f while pid %d was alive "
                                  "(until %.3f)" % (rid, b["pid"], b["started"], a["pid"],
                                                    a["ended"]))
    starts = {}
    for rid, pid, t, kind in final["starts"]:
        starts.setdefault(rid, []).append((float(t), int(pid), kind))
    seen_pids = {(c["run_id"], c["pid"]) for c in children}
    unseen = sum(1 for rid, v in starts.items() for _, pid, _ in v if (rid, pid) not in seen_pids)
    refusals = final["refusals"]
    for rid, t in refusals:
        violations.append("run %s: an execute_run child started when the run was already "
                          "started or finished (refusal event at %s)" % (rid, t))
    info["children_started"] = sum(len(v) for v in starts.values())
    info["children_unmonitored"] = unseen
    info["runs_started_more_than_once"] = sum(1 for v in starts.values() if len(v) > 1)
    info["double_executions"] = overlaps + len(refusals)

    # ---- 3. no delete before the run's record committed ----
    first_terminal = {}
    for rid, typ, t in final["terminal_events"]:
        t = float(t)
        first_terminal[rid] = min(first_terminal.get(rid, t), t)
    early = 0
    deletes = {}
    for inc, lines in logs.items():
        for ln in lines:
            if ln.get("event") != "delete":
                continue
            m = re.search(r"deleting message \(([a-z_]+)\)", ln.get("msg", ""))
            reason = m.group(1) if m else "?"
            deletes[reason] = deletes.get(reason, 0) + 1
            rid = ln.get("run_id")
            if reason not in ("recorded", "terminal_skip") or not rid:
                continue
            ft = first_terminal.get(rid)
            if ft is None or ft > ln["t"] + DELETE_TOL or status.get(rid) not in TERMINAL:
                early += 1
                violations.append("%s: delete (%s) of run %s at %.3f before its terminal event "
                                  "(%s)" % (inc, reason, rid, ln["t"], ft))
    info["deletes_by_reason"] = deletes
    info["deletes_before_commit"] = early

    # ---- 4. metrics accounting ----
    # Every received message ends deleted, rejected, released or deferred: a fenced end (lease
    # lost) releases its message (pipeline.c on_executed), so the accounting is exact.
    bad_scrapes = []
    for s in jl(out, "scrapes"):
        held = s["received"] - (s["deleted"] + s["rejected"] + s["released"] + s["deferred"])
        if held < 0 or held > max(s["slots"], 1):
            bad_scrapes.append((s["inc"], held))
    finals = jl(out, "final_scrapes")
    bad_final = []
    for s in finals:
        held = s["received"] - (s["deleted"] + s["rejected"] + s["released"] + s["deferred"])
        if held != 0 or s["in_flight"] != 0:
            bad_final.append((s["inc"], held, s["in_flight"]))
    for inc, held, inflight in bad_final:
        violations.append("%s: at the quiet end received - (deleted + rejected + released + "
                          "deferred) = %g, runs in flight %g (both must be 0)"
                          % (inc, held, inflight))
    if bad_scrapes:
        worst = max(bad_scrapes, key=lambda x: abs(x[1]))
        violations.append("%d scrape(s) with messages held outside [0, slots]; worst %s: %g"
                          % (len(bad_scrapes), worst[0], worst[1]))
    info["metrics_scrapes"] = len(jl(out, "scrapes"))
    info["metrics_final_checked"] = len(finals)
    info["metrics_violations"] = len(bad_final) + len(bad_scrapes)

    # ---- faults ----
    kinds = {}
    for f in faults:
        if f["kind"] == "sqs_restart" and f.get("phase") not in (None, "down"):
            continue
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    fired = {}
    for inc, lines in logs.items():
        for ln in lines:
            m = re.match(r"failpoint (\S+) fired", ln.get("msg", ""))
            if m:
                fired[m.group(1)] = fired.get(m.group(1), 0) + 1
    deaths = []
    for i in incs:
        if i.get("event") == "exit" and not i.get("final"):
            deaths.append(i)
    death_kinds = {}
    for i in deaths:
        rc = i.get("rc")
        k = "replaced_to_rearm" if i.get("replaced") else "disarmed_at_settle" if i.get(
            "disarmed") else "SIGKILL" if rc == -9 else "SIGABRT" if rc == -6 else "rc=%s" % rc
        death_kinds[k] = death_kinds.get(k, 0) + 1
    info["faults_injected"] = sum(kinds.values())
    info["faults_by_kind"] = dict(sorted(kinds.items()))
    info["failpoints_fired"] = dict(sorted(fired.items()))
    info["daemon_deaths"] = death_kinds
    info["daemon_incarnations"] = len({i["inc"] for i in incs})
    info["daemons"] = len({i["slot"] for i in incs})

    # ---- worst time from a daemon's death to its runs being terminal ----
    death_t = {}
    for f in faults:
        if f["kind"] == "kill9":
            death_t[f["inc"]] = f["t"]
    for i in deaths:
        death_t.setdefault(i["inc"], i["t"])
    last_terminal = {}
    for rid, typ, t in final["terminal_events"]:
        last_terminal[rid] = max(last_terminal.get(rid, 0), float(t))
    gaps = []
    for inc, td in death_t.items():
        held = {}
        for ln in logs.get(inc, []):
            rid = ln.get("run_id")
            if not rid or ln["t"] > td:
                continue
            ev = ln.get("event")
            if ev == "spawn":
                held[rid] = True
            elif ev in ("recorded", "fenced", "delete", "lease_lost"):
                held.pop(rid, None)
        for rid in held:
            if status.get(rid) in TERMINAL and rid in last_terminal:
                gaps.append((max(0.0, last_terminal[rid] - td), rid, inc))
    gaps.sort()
    info["runs_orphaned_by_deaths"] = len(gaps)
    info["death_to_terminal_worst_s"] = round(gaps[-1][0], 2) if gaps else None
    info["death_to_terminal_median_s"] = round(gaps[len(gaps) // 2][0], 2) if gaps else None

    # ---- SIGSTOP: the stopped daemon's late writes fenced, its children killed ----
    fenced = sum(1 for lines in logs.values() for ln in lines
                 if ln.get("event") in ("fenced", "lease_lost"))
    info["fenced_or_lease_lost_events"] = fenced

    # ---- hostile messages ----
    hostile = [s["message_id"] for s in sends if s["kind"] == "hostile"]
    rejects = sum(1 for lines in logs.values() for ln in lines if ln.get("event") == "reject")
    info["hostile_sent"] = len(hostile)
    info["reject_events"] = rejects
    info["quarantined_at_end"] = len(final["quarantine"])
    info["duplicate_sends"] = sum(1 for s in sends if s["kind"] == "duplicate")
    phases = jl(out, "phases")
    info["seconds"] = round(phases[-1].get("seconds", 0), 1) if phases else None

    # ---- sanitizer reports in any daemon's output (ASan/UBSan builds) ----
    san = 0
    d = os.path.join(out, "logs")
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), errors="replace") as f:
            for ln in f:
                if "ERROR: AddressSanitizer" in ln or "runtime error:" in ln or \
                        "ERROR: LeakSanitizer" in ln:
                    san += 1
                    violations.append("%s: sanitizer report: %s" % (name, ln.strip()[:200]))
    info["sanitizer_reports"] = san

    info["violations"] = violations
    if want_json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            if k != "violations":
                print("%-34s %s" % (k, v))
        print("violations: %d" % len(violations))
        for v in violations[:50]:
            print("  VIOLATION " + v)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(info, f, indent=1)
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()
