"""Say loudly when Dagster runs this project on a throwaway instance.

Without DAGSTER_HOME, `dagster job execute`, `dagster asset materialize` and `dg launch` store
the run in a temporary folder deleted when the command exits: the run vanishes from the UI,
`unified-pipeline results` has no Dagster record of it and `train --resume` cannot find it.
The project's own commands (`make run`, `make dev`, `unified-pipeline ...`) set DAGSTER_HOME
to `.dagster_home/`; for the others, this notice says how.
"""
from __future__ import annotations

import os
import sys

_SAID = "UNIFIED_TEMP_INSTANCE_NOTICE"  # inherited by step processes, so the notice is printed once


def notice() -> str | None:
    """The notice when DAGSTER_HOME is unset (None when it is set)."""
    if os.environ.get("DAGSTER_HOME"):
        return None
    from unified_pipeline.dagster_home import dagster_home

    home = dagster_home(create=False)
    return (f"WARNING: DAGSTER_HOME is not set, so Dagster keeps this run in a temporary instance that is "
            f"deleted when the command exits (the UI will not show it, `unified-pipeline train --resume` "
            f"cannot find it). Use the project's instance: export DAGSTER_HOME={home} "
            f"(`make run`, `make dev` and `unified-pipeline` do this for you).")


def say_once() -> None:
    text = notice()
    if text and not os.environ.get(_SAID):
        os.environ[_SAID] = "1"
        print(text, file=sys.stderr, flush=True)


def not_needed() -> None:
    """For a process that hands Dagster the project's instance itself (the `unified-pipeline` CLI)."""
    os.environ[_SAID] = "1"
