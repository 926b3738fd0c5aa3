#!/usr/bin/python3
"""Launch the worked example's job (deploy/examples/dagster/jobs.py, hello_job) through
Dagster's own API, as a Dagster webserver would: create_run_for_job + launch_run, with the
run launcher of the real-Dagster tests (tests/dagster/harness_launcher.py: a TaskIQ envelope on
the SQS queue). The job's code pointer is where the worker image has the code
(/opt/dagster/app/jobs.py), not this checkout: the run worker in the container loads it there.

usage: launch_example.py POSTGRES_URL SQS_ENDPOINT QUEUE_URL DAGSTER_HOME   -> prints the run id
Needs an importable dagster + dagster_postgres (tests: eval "$(bash ../shared/dagster/env.sh 1.7)").
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "dagster"))  # harness_launcher
IMAGE_CODE = "/opt/dagster/app/jobs.py"  # deploy/examples/Containerfile.dagster's COPY


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    pg_url, endpoint, queue_url, home = sys.argv[1:]
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "dagster.yaml"), "w") as f:
        f.write('storage:\n  postgres:\n    postgres_url: "%s"\n'
                "run_launcher:\n  module: harness_launcher\n  class: HarnessRunLauncher\n"
                '  config:\n    queue_url: "%s"\n    endpoint_url: "%s"\n'
                "telemetry:\n  enabled: false\n" % (pg_url, queue_url, endpoint))
    os.environ["DAGSTER_HOME"] = home

    from dagster import DagsterInstance
    from dagster._core.code_pointer import FileCodePointer
    from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
    from dagster._core.storage.dagster_run import DagsterRunStatus

    spec = importlib.util.spec_from_file_location(
        "example_jobs", os.path.join(ROOT, "deploy", "examples", "dagster", "jobs.py"))
    jobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jobs)
    job_def = jobs.defs.get_job_def("hello_job")
    pointer = FileCodePointer(python_file=IMAGE_CODE, fn_name="defs",
                              working_directory=os.path.dirname(IMAGE_CODE))
    repo = ReconstructableRepository(pointer=pointer, executable_path="/usr/bin/python3")
    origin = ReconstructableJob(repository=repo, job_name="hello_job").get_python_origin()

    inst = DagsterInstance.get()  # creates Dagster's tables in an empty database
    run = inst.create_run_for_job(job_def=job_def, run_config={}, job_code_origin=origin,
                                  status=DagsterRunStatus.NOT_STARTED,
                                  tags={"dsw/harness_form": "taskiq",
                                        "dsw/harness_queue": queue_url})
    inst.launch_run(run.run_id, workspace=None)
    print(run.run_id)


if __name__ == "__main__":
    main()
