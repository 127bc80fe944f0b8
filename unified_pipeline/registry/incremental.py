"""Warm start or train from scratch: decided by how much of the training data changed.

The sets hold one item per data file, e.g. "relative/path:sha256" (`file_set` builds them from
`hashing.dataset_version`'s second result), so a modified file counts as one removal plus one
addition. The change fraction is the Jaccard distance |prev ^ new| / |prev | new|. A trainer that
warm-starts records `lineage["parent"] = "model/vN"` and `lineage["warm_start"] =
warm_start_record(...)`, so the version's model card shows where its weights began.
"""
from __future__ import annotations

from typing import Any, Mapping


def file_set(by_rel: Mapping[str, str]) -> set[str]:
    """{relative path: sha256} -> {"path:sha256"} for `warm_start_decision`."""
    return {f"{rel}:{digest}" for rel, digest in by_rel.items()}


def warm_start_decision(
    prev_data_fingerprint_files: set, new_files: set, max_change_fraction: float = 0.2
) -> tuple[bool, float]:
    """(warm start?, fraction of the data that changed). Nothing to start from -> (False, 1.0)."""
    if not 0.0 <= max_change_fraction <= 1.0:
        raise ValueError(f"max_change_fraction must be in [0, 1], got {max_change_fraction}")
    prev, new = set(prev_data_fingerprint_files), set(new_files)
    if not prev or not new:
        return False, 1.0
    fraction = len(prev ^ new) / len(prev | new)
    return fraction < max_change_fraction, fraction


def warm_start_record(used: bool, fraction: float, max_change_fraction: float, parent: str | None) -> dict[str, Any]:
    """The lineage entry that documents the choice."""
    return {"used": bool(used), "change_fraction": round(float(fraction), 6),
            "max_change_fraction": float(max_change_fraction), "parent": parent if used else None}
