#!/usr/bin/python3
"""The real-Dagster layer of the suite: tests/dagster/harness.py and the step scenarios
(harness_steps.py, `--only steps` for all of them) on every Dagster found, then one table of
scenario x tree (outcome, wall time).

Where Dagster comes from, first match wins:
  DSW_DAGSTER_SRC=TREE[:TREE...]  Dagster source trees (python_modules/dagster, ...)
  an importable dagster + dagster_postgres in `python3` (e.g. a venv with
                                  `pip install dagster dagster-postgres`)
  ../shared/dagster/1.*           the shared trees beside the checkout (env.sh of each)
None found: under CI=true a failure that says how to provide one; otherwise a loud
"real-Dagster layer DID NOT RUN" and nothing counted as passed (exit 0).

usage: run.py [--build DIR] [--only s1,s2] [--trees LABEL,...] [--keep]
Services: DSW_TEST_PG_CONNINFO + DSW_TEST_MOTO_URL when set (scripts/test.sh), else
scripts/services.sh starts (and stops) its own. Exit 1 when a scenario fails that is not a
known issue (harness.KNOWN).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
TREE_TIMEOUT = 600  # seconds per tree; a hung harness is a failure, not a hung suite

HOW = ("provide a Dagster: set DSW_DAGSTER_SRC to a Dagster source tree (a checkout with "
       "python_modules/dagster), `pip install dagster dagster-postgres` for `python3`, or put "
       "the shared trees at %s (1.3/, 1.7/ and env.sh)" %
       os.path.normpath(os.path.join(SRC, "..", "shared", "dagster")))


def sh_env(cmd):
    """The environment after `eval "$(cmd)"` in bash, or (None, stderr)."""
    r = subprocess.run(["bash", "-c", 'eval "$(%s)" && env -0' % cmd], capture_output=True)
    if r.returncode != 0:
        return None, r.stderr.decode(errors="replace")[-800:]
    env = dict(x.split("=", 1) for x in r.stdout.decode().split("\0") if "=" in x)
    return env, ""


def src_env(tree):
    """Exports equivalent to shared/dagster/env.sh for a tree outside the shared folder."""
    env_sh = os.path.join(os.path.dirname(os.path.abspath(tree)), "env.sh")
    if os.path.exists(env_sh):
        return sh_env("bash %s %s" % (env_sh, os.path.basename(os.path.abspath(tree))))
    pm = os.path.join(tree, "python_modules")
    parts = [os.path.join(pm, "dagster"), os.path.join(pm, "libraries", "dagster-postgres"),
             os.path.join(pm, "libraries", "dagster-celery"), os.path.join(pm, "dagster-pipes")]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", DSW_DAGSTER_PYTHON="/usr/bin/python3")
    env["PYTHONPATH"] = ":".join([p for p in parts if os.path.isdir(p)] +
                                 ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                  else []))
    return env, ""


def importable(py, env):
    r = subprocess.run([py, "-c", "import dagster, dagster_postgres; print(dagster.__version__)"],
                       env=env, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def discover():
    """[(label, env, python, error)]: every Dagster found, by the first source that has one."""
    found = []
    if os.environ.get("DSW_DAGSTER_SRC"):
        for tree in filter(None, os.environ["DSW_DAGSTER_SRC"].split(":")):
            env, err = src_env(tree)
            label = "src:" + os.path.basename(os.path.normpath(tree))
            py = (env or {}).get("DSW_DAGSTER_PYTHON", "/usr/bin/python3")
            if env is not None and not importable(py, env):
                err = "DSW_DAGSTER_SRC=%s: `import dagster, dagster_postgres` fails" % tree
            found.append((label, env, py, err))
        return found, "DSW_DAGSTER_SRC"
    py = shutil.which("python3")
    if py:
        v = importable(py, dict(os.environ))
        if v:
            return [("installed:" + v, dict(os.environ), py, "")], "an importable dagster"
    shared = os.path.join(SRC, "..", "shared", "dagster")
    if os.path.exists(os.path.join(shared, "env.sh")):
        for t in sorted(glob.glob(os.path.join(shared, "1.*")),
                        key=lambda p: [int(x) for x in os.path.basename(p).split(".")]):
            name = os.path.basename(t)
            env, err = sh_env("bash %s %s" % (os.path.join(shared, "env.sh"), name))
            found.append((name, env, (env or {}).get("DSW_DAGSTER_PYTHON", "/usr/bin/python3"),
                          err))
        return found, os.path.normpath(shared)
    return [], None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(SRC, "build"))
    ap.add_argument("--only", default="")
    ap.add_argument("--trees", default="")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    opt = ap.parse_args()
    ci = os.environ.get("CI") == "true"
    build = os.path.abspath(opt.build)
    for b in ("dagster-sqs-worker", "fake_dagster"):
        if not os.access(os.path.join(build, b), os.X_OK):
            sys.exit("run.py: %s/%s is missing (build it first)" % (build, b))

    trees, source = discover()
    if opt.trees:
        want = set(opt.trees.split(","))
        trees = [t for t in trees if t[0] in want]
    if not trees:
        if ci:
            print("real-Dagster layer FAILED: no Dagster found (CI=true). To run it, " + HOW,
                  file=sys.stderr)
            return 1
        bar = "!" * 78
        print("%s\n!! real-Dagster layer DID NOT RUN: no Dagster found; nothing counted as "
              "passed.\n!! To run it, %s\n%s" % (bar, HOW, bar))
        return 0
    print("== real Dagster from %s: %s" % (source, ", ".join(t[0] for t in trees)), flush=True)

    work = tempfile.mkdtemp(prefix="dsw-real-dagster.")
    os.chmod(work, 0o755)
    svc = None
    if not (os.environ.get("DSW_TEST_PG_CONNINFO") and os.environ.get("DSW_TEST_MOTO_URL")):
        svc = os.path.join(work, "services")
        os.makedirs(svc)
        subprocess.run(["bash", os.path.join(SRC, "scripts", "services.sh"), "start", svc],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(svc, "env")) as f:
            for ln in f:
                k, v = ln.strip()[len("export "):].split("=", 1)
                os.environ[k] = v.strip("'")
    base_pg = os.environ["DSW_TEST_PG_CONNINFO"]
    results = {}
    broken = []
    t_all = time.time()
    try:
        for n, (label, env, py, err) in enumerate(trees):
            if env is None or err:
                broken.append("%s: %s" % (label, err.strip() or "environment failed"))
                continue
            db = "dsw_real_%d_%d" % (os.getpid(), n)
            subprocess.run(["psql", "-X", base_pg, "-qAt", "-c", "CREATE DATABASE " + db],
                           check=True)
            out = os.path.join(work, "result-%d.json" % n)
            env = dict(env, DSW_TEST_PG_CONNINFO=base_pg,
                       DSW_TEST_MOTO_URL=os.environ["DSW_TEST_MOTO_URL"])
            argv = [py, "--build", build, "--db", db,
                    "--work", os.path.join(work, "tree-%d" % n), "--out", out, "--tree", label]
            if opt.only:
                argv += ["--only", opt.only]
            t0 = time.time()
            # harness.py, then the step scenarios (harness_steps.py, same arguments).
            for script, suffix in (("harness.py", ""), ("harness_steps.py", "-steps")):
                run_argv = argv[:1] + [os.path.join(HERE, script)] + argv[1:]
                run_argv[run_argv.index("--out") + 1] = out + suffix
                run_argv[run_argv.index("--work") + 1] += suffix
                try:
                    rc = subprocess.run(run_argv, env=env, timeout=TREE_TIMEOUT).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout after %d s" % TREE_TIMEOUT
                if rc != 0 or not os.path.exists(out + suffix):
                    broken.append("%s: %s ended with %s" % (label, script, rc))
                if os.path.exists(out + suffix):
                    with open(out + suffix) as f:
                        res = json.load(f)
                    results.setdefault(label, {}).update(
                        {r["scenario"]: r for r in res["results"]})
                    if res["version"] != "?":  # "?": no step scenario selected
                        results[label]["__version"] = res["version"]
            if label in results:
                results[label]["__total"] = time.time() - t0
            subprocess.run(["psql", "-X", base_pg, "-qAt", "-c",
                            "DROP DATABASE IF EXISTS %s WITH (FORCE)" % db])
    finally:
        if svc:
            subprocess.run(["bash", os.path.join(SRC, "scripts", "services.sh"), "stop", svc],
                           stdout=subprocess.DEVNULL)
        if not opt.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("work directory kept: " + work)

    labels = [t[0] for t in trees if t[0] in results]
    names = []
    for lb in labels:
        names += [s for s in results[lb] if not s.startswith("__") and s not in names]
    npass = nfail = nxfail = 0
    w = max([len(s) for s in names] + [8])
    print("\n== real Dagster: scenario x tree (outcome, wall time)")
    print("%-*s  %s" % (w, "scenario", "  ".join("%-22s" % lb for lb in labels)))
    notes = []
    for s in names:
        cells = []
        for lb in labels:
            r = results[lb].get(s)
            if r is None:
                cells.append("%-22s" % "-")
                continue
            if r["ok"]:
                out = "pass" if not r.get("known") else "pass (known issue fixed)"
                npass += 1
            elif r.get("known"):
                out = "XFAIL"
                nxfail += 1
                notes.append("%s/%s: XFAIL, known (%s): %s" % (s, lb, r["known"],
                                                               r["detail"][:400]))
            else:
                out = "FAIL"
                nfail += 1
                notes.append("%s/%s: FAIL: %s" % (s, lb, r["detail"][:600]))
            cells.append("%-22s" % ("%s %.1fs" % (out, r["wall_s"])))
        print("%-*s  %s" % (w, s, "  ".join(cells)))
    print("%-*s  %s" % (w, "(tree total)", "  ".join(
        "%-22s" % ("%.0fs, dagster %s" % (results[lb]["__total"], results[lb]["__version"]))
        for lb in labels)))
    for n in notes:
        print("  " + n)
    for b in broken:
        print("  BROKEN " + b)
    print("real Dagster: %d passed, %d failed, %d known failures (XFAIL), in %.0f s" % (
        npass, nfail + len(broken), nxfail, time.time() - t_all))
    return 1 if nfail or broken else 0


if __name__ == "__main__":
    sys.exit(main())
