"""Dagster's side of dagster-sqs-worker: the SqsRunLauncher, the sqs_executor (steps as
supervised children of the daemon) and the claims readers.

``run_claims``, ``step_claims`` and ``envelope.wrap`` need no Dagster; ``SqsRunLauncher`` and
``sqs_executor`` are imported on first use, so ``dagster.yaml``'s ``module: dagster_sqs_worker``
/ ``class: SqsRunLauncher`` and ``from dagster_sqs_worker import sqs_executor`` both work.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["SqsRunLauncher", "SqsLaunchError", "sqs_executor", "SqsStepHandler", "__version__"]

_LAZY = {
    "SqsRunLauncher": "launcher",
    "SqsLaunchError": "launcher",
    "sqs_executor": "executor",
    "SqsStepHandler": "executor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    raise AttributeError(f"module 'dagster_sqs_worker' has no attribute {name!r}")
