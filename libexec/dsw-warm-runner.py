#!/usr/bin/env python3
"""dsw-warm-runner: a Python process that imports Dagster ahead of time, then runs one run or step.

Started by dagster-sqs-worker (runs.warm > 0) with runs.python, under the same environment,
working directory, process group and death signal as a cold `dagster api execute_run` (or
`execute_step`) child:

    <python> dsw-warm-runner.py --imports "dagster dagster_postgres dagster._cli" \\
                                --entry dagster._cli:main

Protocol (see docs/warm-runners.md):
1. import every module of --imports, resolve --entry ("module:function");
2. write the line READY_TOKEN on stdout (flushed): the daemon now counts it as ready;
3. read stdin to EOF: the request, the words that follow the program name on a cold child's
   command line, each terminated by a NUL byte ("api\\0execute_run\\0<ExecuteRunArgs JSON>\\0");
   the JSON never appears on a command line. stdin then points to /dev/null, as for a cold child;
4. call the entry point in-process with sys.argv = ["dagster", *words];
5. exit with its code: a SystemExit's code, 0 when it returns, 1 on an exception (traceback on
   stderr). Anything wrong before that (an import, a bad request) exits non-zero with a message.

One run (or step) per process: the daemon never reuses a runner.
"""

import importlib
import os
import sys
import traceback

READY_TOKEN = "dsw-warm-runner: ready"
COMMANDS = ("execute_run", "resume_run", "execute_step")
MAX_REQUEST = 64 * 1024 * 1024


def fail(msg, code=2):
    sys.stderr.write("dsw-warm-runner: %s\n" % msg)
    sys.stderr.flush()
    return code


def parse_args(argv):
    opts = {"imports": "", "entry": ""}
    args = list(argv[1:])
    while args:
        key = args.pop(0)
        if key not in ("--imports", "--entry") or not args:
            raise ValueError("usage: dsw-warm-runner.py --imports 'mod ...' --entry mod:func")
        opts[key[2:]] = args.pop(0)
    if ":" not in opts["entry"]:
        raise ValueError("--entry must be module:function, not %r" % opts["entry"])
    return opts["imports"].split(), opts["entry"]


def resolve(entry):
    mod, _, attr = entry.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError("%s is not callable" % entry)
    return obj


def read_request():
    chunks, n = [], 0
    while True:
        b = os.read(0, 1 << 16)
        if not b:
            break
        n += len(b)
        if n > MAX_REQUEST:
            raise ValueError("request larger than %d bytes" % MAX_REQUEST)
        chunks.append(b)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    data = b"".join(chunks)
    if not data.endswith(b"\0"):
        raise ValueError("empty or unterminated request")
    words = [w.decode("utf-8", "surrogateescape") for w in data[:-1].split(b"\0")]
    if len(words) != 3 or words[0] != "api" or words[1] not in COMMANDS:
        raise ValueError("expected: api execute_run|resume_run|execute_step <json>")
    return words


def exit_code(e):
    """The status Python itself would exit with for this SystemExit."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    sys.stderr.write("%s\n" % e.code)
    return 1


def main(argv):
    # sys.path[0] as a cold `python -m dagster` child has it: the working directory, not our own
    # directory. Deleting it is not the same: Dagster's load_python_module drops sys.path[0] (the
    # "script path") while importing the code location, which would then be the first
    # PYTHONPATH entry, and the run's module would not be found.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == here:
        sys.path[0] = os.getcwd()
    try:
        imports, entry = parse_args(argv)
        for name in imports:
            importlib.import_module(name)
        func = resolve(entry)
    except Exception:
        traceback.print_exc()
        return fail("not ready: %s" % (sys.exc_info()[1],), 3)
    sys.stdout.flush()
    os.write(1, (READY_TOKEN + "\n").encode())
    try:
        words = read_request()
    except (OSError, ValueError) as e:
        return fail("bad request: %s" % e)
    sys.argv = ["dagster"] + words
    try:
        func()
        code = 0
    except SystemExit as e:
        code = exit_code(e)
    except BaseException:
        traceback.print_exc()
        code = 1
    return code


if __name__ == "__main__":
    # Guarded: multiprocessing's spawn/forkserver children import __main__ again, by path.
    sys.exit(main(sys.argv))
