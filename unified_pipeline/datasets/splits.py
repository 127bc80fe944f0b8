"""Stable train/val/test assignment.

A sample's split is a pure function of its content hash and the seed, so adding or removing
files never moves an existing sample to another split. Per-class proportions follow the
fractions in expectation (hash values are uniform), which keeps small classes represented.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def split_of(content_hash: str, seed: int = 0, fractions: dict[str, float] | None = None) -> str:
    fractions = fractions or DEFAULT_FRACTIONS
    digest = hashlib.sha256(f"{seed}:{content_hash}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return SPLITS[-1]
