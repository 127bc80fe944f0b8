"""Staging folders of model steps: a fit writes there, the registry copies the folder into a version."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from unified_pipeline.paths import unified_home


def new_staging(name: str, run_id: str, log: Any) -> Path:
    """An empty folder for one step of `name`, after removing those left by killed steps."""
    root = unified_home() / "staging" / name
    remove_dead_staging(root, log)
    staging = root / f"{run_id or 'local'}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def remove_dead_staging(root: Path, log: Any) -> None:
    """Staging folders of steps that were killed (a `finally` never runs after SIGKILL). Folder
    names end in `-<pid>-<random>`; one whose process is gone is removed."""
    from unified_pipeline.progress import pid_alive

    for folder in root.glob("*-*-*") if root.is_dir() else ():
        pid = folder.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            log.info(f"removed {folder}, left by a step that was killed")
