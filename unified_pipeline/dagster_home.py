"""The Dagster instance folder the CLI uses: $DAGSTER_HOME, else `.dagster_home/` in the project."""
from __future__ import annotations

import contextlib
import importlib
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


# What opening any instance imports beyond its configured classes (the factory, storage migrations,
# the secrets loader, the default definitions-state store on a local UPath); a name a later Dagster
# or upath lacks is skipped.
OPENED_WITH_THE_INSTANCE = ("dagster._core.instance.factory", "dagster._core.storage.migration.utils",
                            "dagster._core.secrets.env_file",
                            "dagster._core.storage.defs_state.blob_storage_state_storage",
                            "upath.implementations.local", "fsspec.implementations.local")


def instance_modules(home: str | Path | None = None) -> list[str]:
    """The modules of the instance's classes (storage, compute logs, run launcher...) as
    $DAGSTER_HOME/dagster.yaml names them, and what opening it imports besides. Names only:
    nothing is opened or created."""
    home = home if home is not None else os.environ.get("DAGSTER_HOME")
    if not home:
        return []
    from dagster._core.instance.ref import InstanceRef

    ref = InstanceRef.from_dir(str(home))
    classes = [getattr(data, "module_name", None) for data in ref._asdict().values()]  # a NamedTuple
    return sorted({*OPENED_WITH_THE_INSTANCE, *(m for m in classes if isinstance(m, str))})


def preload_instance_modules(home: str | Path | None = None) -> None:
    """Import instance_modules() now. Every step process opens the instance and would import them
    (with sqlalchemy and alembic) itself: 0.25 s of each step on two cores; imported once in the
    executor's forkserver, every step forks with them (step_preload.py)."""
    try:
        names = instance_modules(home)
    except Exception:  # noqa: BLE001 a bad dagster.yaml is reported, with its reason, by whatever opens it
        return
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:  # e.g. a storage package not installed: the step says so when it needs it
            pass
