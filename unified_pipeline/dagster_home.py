"""The Dagster instance folder the CLI uses: $DAGSTER_HOME, else `.dagster_home/` in the project."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from unified_pipeline import atomic
from unified_pipeline.paths import project_root


def dagster_home(create: bool = True) -> Path:
    """The instance folder; `create` makes it and seeds dagster.yaml from the checked-in template."""
    env = os.environ.get("DAGSTER_HOME")
    home = Path(env) if env else project_root() / ".dagster_home"
    if create:
        home.mkdir(parents=True, exist_ok=True)
        template = project_root() / "dagster.yaml"
        if template.exists() and not (home / "dagster.yaml").exists():
            atomic.write_text(home / "dagster.yaml", template.read_text())
    return home.resolve()


@contextlib.contextmanager
def open_instance() -> Iterator[Any]:
    """The DagsterInstance of that folder, or None when no run has ever used it (nothing to read)."""
    home = dagster_home(create=False)
    if not home.is_dir():
        yield None
        return
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        yield instance
