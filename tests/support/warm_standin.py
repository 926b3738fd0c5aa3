"""Stand-in for Dagster in the warm runner tests and bench (runs.warm_imports = warm_standin,
runs.warm_entry = warm_standin:main): no Dagster needed.

Import-time behaviour, from the environment the pool gives the runner:
  WARM_STANDIN_IMPORT=ok (default) | fail (raise ImportError) | hang (never finish importing)
  WARM_STANDIN_IMPORT_MS=<n>       spend n ms of CPU importing (a stand-in for Dagster's cost)

main() reads sys.argv like `dagster api execute_run <json>`; the JSON's "standin" key says what
to do: "ok" (default: print a line, return), "exit" (sys.exit(<"code">)), "exit_none",
"exit_str", "raise" (RuntimeError), "sleep" (print "sleeping <pid>", sleep 60 s), "quiet"
(return without a word). It always prints "standin <command> <run id> <pid>" first.

`python3 -m warm_standin api execute_run <json>` is the cold equivalent (the bench's cold path).
"""

import json
import os
import sys
import time

_mode = os.environ.get("WARM_STANDIN_IMPORT", "ok")
if _mode == "fail":
    raise ImportError("warm_standin: told to fail")
if _mode == "hang":
    while True:
        time.sleep(3600)
_ms = int(os.environ.get("WARM_STANDIN_IMPORT_MS", "0") or 0)
if _ms > 0:
    _end = time.process_time() + _ms / 1000.0
    while time.process_time() < _end:
        pass


def main():
    if len(sys.argv) != 4 or sys.argv[1] != "api":
        sys.stderr.write("warm_standin: bad argv %r\n" % (sys.argv,))
        sys.exit(2)
    args = json.loads(sys.argv[3])
    what = args.get("standin", "ok")
    if what == "quiet":
        return
    print("standin %s %s %d" % (sys.argv[2], args.get("pipeline_run_id"), os.getpid()), flush=True)
    if what == "exit":
        sys.exit(int(args["code"]))
    if what == "exit_none":
        sys.exit()
    if what == "exit_str":
        sys.exit("standin: exit with a message")
    if what == "raise":
        raise RuntimeError("standin boom")
    if what == "sleep":
        print("sleeping %d" % os.getpid(), flush=True)
        time.sleep(60)
    sys.stderr.write("standin done\n")


if __name__ == "__main__":
    main()


def exec_fake():
    """Entry for the daemon-level warm test: become the fake dagster (same pid) with the argv a
    cold child would have, so the run is executed by the runner the daemon handed it to."""
    fake = os.environ["DSW_FAKE_DAGSTER"]
    os.execv(fake, [fake] + sys.argv[1:])
