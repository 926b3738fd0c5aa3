#!/usr/bin/env python3
"""Create a Dagster run row for the demo and the benchmarks, as Dagster's launcher leaves it.

usage: mkrun.py CONNINFO RUN_ID STATUS BEHAVIOR

The run body is the real one from tests/vectors/runs_row.json with the run id and status
replaced; BEHAVIOR goes in the run tag dsw/test_behavior, which the test double of
`dagster api execute_run` (tests/support/prog_fake_dagster.c) obeys. psql does the insert,
with every value passed as a psql variable (no SQL is built from the values).
"""
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
vectors = os.environ.get("DSW_VECTORS", os.path.join(here, "..", "tests", "vectors"))


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    conninfo, run_id, status, behavior = sys.argv[1:]
    row = json.load(open(os.path.join(vectors, "runs_row.json")))
    body = json.loads(row["run_body"])
    body["run_id"] = run_id
    body["status"] = {"__enum__": "PipelineRunStatus." + status}
    body["tags"] = {"dsw/test_behavior": behavior}
    sql = (
        "INSERT INTO runs (run_id, pipeline_name, status, run_body) "
        "VALUES (:'rid', :'job', :'status', :'body');\n"
        "INSERT INTO run_tags (run_id, key, value) VALUES (:'rid', 'dsw/test_behavior', :'beh');\n"
    )
    args = ["psql", conninfo, "-q", "-v", "ON_ERROR_STOP=1", "-v", "rid=" + run_id,
            "-v", "job=" + row["pipeline_name"], "-v", "status=" + status,
            "-v", "body=" + json.dumps(body), "-v", "beh=" + behavior]
    subprocess.run(args, input=sql.encode(), check=True)


if __name__ == "__main__":
    main()
