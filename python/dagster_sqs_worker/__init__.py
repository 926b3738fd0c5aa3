"""Dagster's side of dagster-sqs-worker: the SqsRunLauncher and the claims reader.

``run_claims`` and ``envelope.wrap`` need no Dagster; ``SqsRunLauncher`` is imported on first
use, so ``dagster.yaml``'s ``module: dagster_sqs_worker`` / ``class: SqsRunLauncher`` works.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["SqsRunLauncher", "SqsLaunchError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("SqsRunLauncher", "SqsLaunchError"):
        from . import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module 'dagster_sqs_worker' has no attribute {name!r}")
