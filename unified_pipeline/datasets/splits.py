"""Stable, stratified train/val/test assignment.

`split_of` is the base rule: a sample's split is a pure function of its content hash and the
seed. Each sample gets a score u = sha256("<seed>:<hash>") read as a number in [0, 1), and
the fractions cut [0, 1) into train, val and test. Adding or removing files never moves a
sample under this rule, and per-class proportions follow the fractions in expectation.

`stratified_splits` adds one guarantee for labelled kinds. Call the splits with a positive
fraction the wanted splits (all three by default). Every class with at least as many
distinct contents as there are wanted splits has at least one content in each of them; a
small class could otherwise end up with no validation or test sample at all. Where the base
rule leaves a wanted split of a class empty, the class lends it one content: the one with
the lowest score in the class's most populated split (ties: train, val, test). Samples with
identical content always share a split, so a duplicate never sits on both sides.

What stays stable, precisely:
- a class whose wanted splits are all non-empty under the base rule follows the base rule
  exactly, and adding files to it never moves an existing sample;
- a class with an empty wanted split under the base rule differs from it by one lent
  content per empty split. Adding a file to such a class can move at most two existing
  contents per empty split: the lent one back to its base split (because the class now has
  a sample of its own there, or because another content is lent instead: a new one with a
  lower score, or one from a split that became the most populated), and that other one;
- samples of other classes never move, and all of this is a function of (hashes, labels,
  seed, fractions) alone: input order does not matter. Removing files can empty a split
  again and so start lending.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def split_score(content_hash: str, seed: int = 0) -> float:
    """Uniform number in [0, 1) that orders samples within a seed."""
    return float(_scores([content_hash], seed)[0])


def split_of(content_hash: str, seed: int = 0, fractions: dict[str, float] | None = None) -> str:
    return _splits_for_scores(_scores([content_hash], seed), fractions or DEFAULT_FRACTIONS)[0]


def _scores(hashes: list[str], seed: int) -> np.ndarray:
    """split_score of each hash: the first 8 bytes of sha256("<seed>:<hash>") as a big-endian
    integer over 2**64 (exact after the integer's rounding to a float)."""
    digests = b"".join(hashlib.sha256(f"{seed}:{h}".encode()).digest()[:8] for h in hashes)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2**64


def _splits_for_scores(scores: np.ndarray, fractions: dict[str, float]) -> list[str]:
    """The split of each score: the fractions, summed in SPLITS order, cut [0, 1); a score at or
    past the last cut goes to the last split."""
    edges, edge = [], 0.0
    for name in SPLITS:
        edge += fractions[name]
        edges.append(edge)
    at = np.searchsorted(np.array(edges[:-1]), scores, side="right")  # first edge above the score; else the last
    return [SPLITS[i] for i in at.tolist()]


def _class_key(label: Any) -> Any:
    if type(label) is str:  # the usual case, and pandas' NA tests cost more than the rest of a split
        return label
    # Missing labels (None, NaN, NA) form one group of their own.
    if pd.api.types.is_scalar(label) and pd.isna(label):
        return None
    return str(label)


def stratified_splits(hashes: Sequence[str], labels: Sequence[Any], seed: int = 0,
                      fractions: dict[str, float] | None = None, earlier: tuple | None = None) -> list[str]:
    """Split of each sample: the base rule, plus one content lent to each empty split of a class.

    `earlier`: (hashes, labels, splits) this function gave under the same seed and fractions; a
    class holding the same contents as then keeps those splits without computing them again."""
    fractions = fractions or DEFAULT_FRACTIONS
    if len(hashes) != len(labels):
        raise ValueError(f"{len(hashes)} hashes but {len(labels)} labels")
    wanted = [s for s in SPLITS if fractions.get(s, 0) > 0]
    labels = list(labels)
    classes = labels if set(map(type, labels)) <= {str} else [_class_key(label) for label in labels]
    if earlier is not None and len(earlier[0]) == len(hashes) and list(earlier[1]) == labels:
        return _changed_classes_again(list(hashes), classes, earlier, seed, fractions)
    by_class: dict[Any, set[str]] = defaultdict(set)
    for h, cls in zip(hashes, classes):
        by_class[cls].add(h)
    before: dict[Any, dict[str, str]] = defaultdict(dict)
    for h, label, split in zip(*(earlier or ((), (), ()))):
        before[_class_key(label)][h] = split
    placed: dict[tuple[Any, str], str] = {}
    for cls, contents in by_class.items():
        split = before.get(cls)
        if split is None or split.keys() != contents:
            members = list(contents)
            scores = _scores(members, seed)
            split = dict(zip(members, _splits_for_scores(scores, fractions)))
            if len(contents) >= len(wanted) and not set(wanted) <= set(split.values()):
                _lend(split, dict(zip(members, scores.tolist())), wanted)
        placed.update({(cls, h): s for h, s in split.items()})
    return [placed[(cls, h)] for h, cls in zip(hashes, classes)]


def _changed_classes_again(hashes: list[str], classes: list[Any], earlier: tuple, seed: int,
                           fractions: dict[str, float]) -> list[str]:
    """stratified_splits when the rows' labels are the earlier ones, in the same order (a
    folder whose files changed in place): a class whose every row holds the earlier hash keeps
    the earlier splits as they stand; only the other classes are split again."""
    differ = np.flatnonzero(np.array(hashes, dtype=object) != np.array(earlier[0], dtype=object)).tolist()
    out = list(earlier[2])
    changed = {classes[i] for i in differ}
    if changed:
        rows = [i for i, cls in enumerate(classes) if cls in changed]
        for i, split in zip(rows, stratified_splits([hashes[i] for i in rows], [classes[i] for i in rows], seed,
                                                    fractions)):
            out[i] = split
    return out


def _lend(split: dict[str, str], score: dict[str, float], wanted: list[str]) -> None:
    """Give each empty wanted split of one class the lowest-scored content of its fullest split."""
    for missing in wanted:
        members = {s: sorted((score[h], h) for h, at in split.items() if at == s) for s in SPLITS}
        if members[missing]:
            continue
        donor = max(SPLITS, key=lambda s: (len(members[s]), -SPLITS.index(s)))
        if len(members[donor]) >= 2:  # never empty the donor
            split[members[donor][0][1]] = missing


def split_settings(cfg) -> dict[str, Any]:
    """What a manifest's splits depend on besides the hashes and labels."""
    return {"split_seed": cfg.seed, "split_fractions": dict(cfg.fractions)}


def assign_splits(manifest, cfg, earlier: Any = None) -> np.ndarray:
    """Stratified split of each manifest row (columns sha256 and label) under cfg.seed and cfg.fractions.
    `earlier`: a previous manifest's columns document; its splits are kept where they still hold."""
    reuse = None
    if earlier and _assigned_under(earlier, cfg):
        reuse = tuple(earlier["columns"][c] for c in ("sha256", "label", "split"))
    return np.array(stratified_splits(manifest["sha256"].tolist(), manifest["label"].tolist(), cfg.seed, cfg.fractions,
                                      earlier=reuse), dtype=object)


def manifest_splits(manifest, cfg) -> np.ndarray:
    """The manifest's own split column when it was assigned under cfg's settings (read_manifest
    puts them in `attrs`), else the splits assigned again."""
    if "split" in manifest and _assigned_under(manifest.attrs, cfg):
        return manifest["split"].to_numpy(dtype=object)
    return assign_splits(manifest, cfg)


def _assigned_under(record: dict, cfg) -> bool:
    """Whether a manifest's record says its splits were assigned under cfg's seed and fractions."""
    wanted = split_settings(cfg)
    return {k: record.get(k) for k in wanted} == wanted


def hash_splits(hashes, cfg) -> np.ndarray:
    """Base-rule split of each hash under cfg.seed and cfg.fractions (kinds without classes)."""
    hashes = hashes.tolist() if hasattr(hashes, "tolist") else list(hashes)  # (a str Series iterates slowly)
    return np.array(_splits_for_scores(_scores(hashes, cfg.seed), cfg.fractions), dtype=object)
