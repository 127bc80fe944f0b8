"""Which versions a prune removes: all but the newest `keep`, never one that ever held an alias."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unified_pipeline.registry import aliases as rules
from unified_pipeline.registry.versions import version_name


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
