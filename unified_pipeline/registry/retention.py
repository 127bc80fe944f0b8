"""Which versions a prune removes: all but the newest `keep`, never one that ever held an alias."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified_pipeline.errors import ConfigError
from unified_pipeline.registry import aliases as rules
from unified_pipeline.registry.index import write_index
from unified_pipeline.registry.versions import split_name, version_name


@dataclass
class PruneReport:
    model: str
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # name -> why it stays
    freed_bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "removed": self.removed, "kept": self.kept,
                "freed_bytes": self.freed_bytes, "dry_run": self.dry_run}


def check_keep(keep: Any, field_name: str = "prune keep", allow_none: bool = False) -> int | None:
    if keep is None and allow_none:
        return None
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        extra = " or null (no automatic prune)" if allow_none else ""
        raise ConfigError(f"{field_name} must be an integer >= 1{extra}, got {keep!r}")
    return keep


def plan_prune(model: str, index: dict[str, Any], keep: int) -> PruneReport:
    numbers = sorted(map(int, index["versions"]))
    newest = set(numbers[-keep:])
    # `latest` is not counted: every version held it once, and the newest is kept anyway.
    ever = rules.ever_held(index["alias_history"], "production")
    current = {int(n): a for a, n in index["aliases"].items()}
    report = PruneReport(model=model)
    for n in numbers:
        name = version_name(model, n)
        if n in current:
            report.kept[name] = f"holds alias {current[n]}"
        elif n in ever:
            report.kept[name] = "was production"
        elif n in newest:
            report.kept[name] = f"among the newest {keep}"
        else:
            report.removed.append(name)
    return report


def remove_versions(model_dir: Path, index: dict[str, Any], names: list[str]) -> None:
    """Drop `names` from the index, then delete their folders. The caller holds the model lock."""
    for name in names:
        number = split_name(name)[1][1:]
        del index["versions"][number]
        index["tags"].pop(number, None)
    write_index(model_dir, index)  # from here the versions are gone; folders follow
    for name in names:
        folder = model_dir / split_name(name)[1]
        # Renamed first so that a crash mid-delete leaves a `.partial` leftover, never a half version.
        trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=model_dir))
        os.rename(folder, trash / folder.name)
        shutil.rmtree(trash, ignore_errors=True)
