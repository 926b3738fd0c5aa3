"""scripts/demo.sh's hands on real Dagster: runs of tests/dagster/jobs.py created and canceled
through Dagster's own API, on the instance DAGSTER_HOME names.

usage: demo_runs.py init                    create Dagster's tables (DagsterInstance.get())
       demo_runs.py create JOB [SECONDS]    a NOT_STARTED run of JOB (SECONDS: slow_op's sleep);
                                            prints its run id
       demo_runs.py cancel RUN_ID           instance.report_run_canceling, as the UI's terminate
                                            does through a queue launcher
       demo_runs.py show RUN_ID...          Dagster's own reads: status, events, step stats
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    from dagster import DagsterInstance, reconstructable
    from dagster._core.storage.dagster_run import DagsterRunStatus

    if len(sys.argv) < 2:
        sys.exit(__doc__)
    inst = DagsterInstance.get()
    cmd = sys.argv[1]
    if cmd == "init":
        return
    if cmd == "create":
        import jobs

        name = sys.argv[2]
        recon = reconstructable(getattr(jobs, name))
        cfg = {}
        if len(sys.argv) > 3:
            cfg = {"ops": {"slow_op": {"config": {"seconds": float(sys.argv[3])}}}}
        run = inst.create_run_for_job(job_def=recon.get_definition(), run_config=cfg,
                                      job_code_origin=recon.get_python_origin(),
                                      status=DagsterRunStatus.NOT_STARTED)
        print(run.run_id)
    elif cmd == "cancel":
        inst.report_run_canceling(inst.get_run_by_id(sys.argv[2]))
    elif cmd == "show":
        for rid in sys.argv[2:]:
            run = inst.get_run_by_id(rid)
            steps = ", ".join("%s %s" % (s.step_key, s.status.value if s.status else "-")
                              for s in inst.get_run_step_stats(rid))
            print("%s %-8s %3d events, steps: %s" % (rid, run.status.value,
                                                     len(inst.all_logs(rid)), steps or "-"))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
