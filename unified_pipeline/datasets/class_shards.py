"""Building the tensors of a class-folder dataset (images, clips) shard by shard, in bounded memory.

Per split, rows keep the manifest's order and are cut into shards of at most SHARD_BYTES (and SHARD_ROWS). A
shard is named by a digest of what it holds (each sample's cache key and label), so:
- an unchanged shard is taken from an earlier tensors folder of the dataset (a hard link)
  without decoding or reading anything but its header (which keeps its statistics);
- a shard to write takes its samples from the preprocessing cache and decodes only the
  misses, on every core (decode_workers);
- memory holds a few shards of rows (one being filled, WRITERS being written) and a bounded
  window of decoded tasks, whatever the size.
Normalisation statistics are sums per shard (float64), combined at the end over the train
split, so they never require the whole split in memory.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from unified_pipeline import hashing
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.datasets.class_folders import files_inside
from unified_pipeline.datasets.decode_workers import decode_all
from unified_pipeline.datasets.preprocess_cache import PreprocessCache, default_cache, entry_key, settings_digest
from unified_pipeline.datasets.row_packs import place_row
from unified_pipeline.datasets.shards import (SHARD_BYTES, field_specs, rows_per_shard, shard_name, shard_stats,
                                              write_index, write_shard)
from unified_pipeline.datasets.splits import SPLITS, manifest_splits
from unified_pipeline.step_progress import track


@dataclass
class Codec:
    """What a kind contributes: how to decode a list of files and what one decoded row is."""

    kind: str
    settings: dict[str, Any]  # everything the decoded bytes depend on (JSON), part of the cache key
    decode: Callable  # decode(root, rels, *extra) -> [(array, aux)], module-level (pickled to workers)
    extra: tuple
    row_shape: tuple[int, ...]
    dtype: np.dtype
    stats: Callable[[np.ndarray], dict[str, list[float]]]  # additive sums over a shard's rows
    aux_field: str | None = None  # e.g. "lengths": the aux int of each row, as int64


@dataclass
class BuildReport:
    shards_reused: int = 0
    shards_written: int = 0
    decoded: int = 0
    cached: int = 0
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    index: dict[str, list[dict]] = field(default_factory=dict)


def write_class_tensors(codec: Codec, root: Path, manifest: pd.DataFrame, cfg, out: Path,
                        reuse_from: list[Path] | None = None, cache: PreprocessCache | None = None,
                        code: str = "") -> BuildReport:
    """Shards + shards.json into `out` (a folder the caller renames into place when complete)."""
    out.mkdir(parents=True, exist_ok=True)
    cache = default_cache() if cache is None else cache
    row_digest = settings_digest(codec.kind, codec.settings, code)
    keys = [entry_key(sha, row_digest) for sha in manifest["sha256"].tolist()]
    classes = sorted(manifest["label"].unique())
    class_index = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_index[c] for c in manifest["label"].tolist()], dtype=np.int64)
    splits = manifest_splits(manifest, cfg)
    sample_ids = manifest["sample_id"].to_numpy()
    per_shard = rows_per_shard(int(np.prod(codec.row_shape)) * np.dtype(codec.dtype).itemsize, SHARD_BYTES)
    report, plan, index = BuildReport(), [], {}
    earlier = _earlier_shards(reuse_from or [])
    for split in SPLITS:
        sel = np.flatnonzero(splits == split)
        report.counts[split] = int(len(sel))
        report.samples[split] = sample_ids[sel].tolist()
        entries = []
        for n, rows in enumerate(cut_shards(sel, keys, per_shard)):
            digest = hashing.combine([row_digest, *(f"{keys[i]}:{labels[i]}" for i in rows)])
            name = shard_name(split, n, digest)
            entries.append({"file": name, "rows": int(len(rows))})
            if _link_earlier(earlier.get((split, digest[:16])), out / name):
                report.shards_reused += 1
            else:
                plan.append((split, n, rows, digest))
        index[split] = entries
    _write_planned(codec, root, manifest, keys, labels, plan, out, cache, report, cfg)
    for split, entries in index.items():
        for e in entries:
            stats = shard_stats(out / e["file"])
            if split == "train" or not report.counts.get("train"):
                for k, v in stats.items():
                    report.stats[k] = report.stats.get(k, 0) + np.asarray(v, dtype=np.float64)
    report.index = index
    cache.prune()
    return report


def write_class_index(out: Path, codec: Codec, report: BuildReport, decode: dict) -> None:
    """shards.json, once the statistics (and so the decoding of `x`) are known."""
    fields = {"x": torch.empty((0, *codec.row_shape), dtype=_torch_dtype(codec.dtype)),
              "y": torch.empty(0, dtype=torch.int64)}
    if codec.aux_field:
        fields[codec.aux_field] = torch.empty(0, dtype=torch.int64)
    write_index(out, {split: {"fields": field_specs(fields, {"x": decode}, split), "shards": entries}
                      for split, entries in report.index.items()})


WRITERS = 3  # shards being written at once: a shard's fsync waits on the disk while the others compute


def _write_planned(codec: Codec, root: Path, manifest: pd.DataFrame, keys: list[str], labels: np.ndarray,
                   plan: list, out: Path, cache: PreprocessCache, report: BuildReport, cfg) -> None:
    needed = [i for _, _, rows, _ in plan for i in rows]
    places = cache.locate(sorted({keys[i] for i in needed}))
    have = places.keys()
    misses, seen = [], set()
    for i in needed:
        if keys[i] not in have and keys[i] not in seen:
            seen.add(keys[i])
            misses.append(i)
    report.decoded, report.cached = len(misses), len(needed) - len(misses)
    rels = files_inside(root, manifest["path"].to_numpy()[misses].tolist())
    decoded = decode_all(codec.decode, root, rels, codec.extra)
    decoded = iter(track(decoded, f"decoding {root.name}", total=len(misses), log=getattr(cfg, "log", None),
                         unit="file"))
    last_use = {keys[i]: p for p, (_, _, rows, _) in enumerate(plan) for i in rows}
    fresh: dict[str, tuple[np.ndarray, int]] = {}
    order = iter(misses)
    # A shard's statistics, file and sync run in threads while the next shard is put together
    # (numpy, safetensors and fsync let go of the GIL); WRITERS shards in flight bound the memory.
    with ThreadPoolExecutor(WRITERS) as writer:
        writing: deque = deque()
        for p, (split, n, rows, digest) in enumerate(plan):
            positions: dict[str, list[int]] = {}
            for j, i in enumerate(rows):
                positions.setdefault(keys[i], []).append(j)
            x = np.empty((len(rows), *codec.row_shape), dtype=codec.dtype)
            aux = cache.read_into({k: places[k] for k in positions if k in places and k not in fresh}, positions, x)
            new = []
            missing = positions.keys() - aux.keys() - fresh.keys()
            while missing:
                i = next(order, None)
                if i is None:  # an entry left the cache since it was counted (a concurrent build pruned it)
                    lost = list(dict.fromkeys(keys[j] for j in rows if keys[j] in missing))
                    paths = [manifest["path"].iloc[rows[positions[k][0]]] for k in lost]
                    for k, value in zip(lost, codec.decode(str(root), paths, *codec.extra)):
                        fresh[k] = value
                    break
                fresh[keys[i]] = next(decoded)
                missing.discard(keys[i])
                new.append((keys[i], *fresh[keys[i]]))
            cache.put_many(new)
            for k in positions.keys() & fresh.keys():
                row, aux[k] = fresh[k]
                for j in positions[k]:
                    place_row(x, j, row, k)
            tensors = {"x": torch.from_numpy(x), "y": torch.from_numpy(labels[rows].copy())}
            if codec.aux_field:
                tensors[codec.aux_field] = torch.tensor([aux[keys[i]] for i in rows], dtype=torch.int64)
            if len(writing) >= WRITERS:
                writing.popleft().result()
            writing.append(writer.submit(_finish_shard, codec, out, split, n, tensors, digest))
            report.shards_written += 1
            for k in positions:
                if last_use[k] == p:
                    fresh.pop(k, None)
        while writing:
            writing.popleft().result()
    # Every miss was taken above; asking once more shuts the worker pool down now (not when the
    # generator is collected) and lets the progress line count the last file ("finished").
    next(decoded, None)


def _finish_shard(codec: Codec, out: Path, split: str, n: int, tensors: dict, digest: str) -> None:
    stats = {k: [float(v) for v in np.atleast_1d(s)] for k, s in codec.stats(tensors["x"].numpy()).items()}
    write_shard(out, split, n, tensors, stats=stats, digest=digest)


CONTENT_CUTS_FROM = 64  # rows per shard below which shards are cut by count alone


def cut_shards(rows: np.ndarray, keys: list[str], per_shard: int) -> list[np.ndarray]:
    """The split's rows (manifest order) in shards of at most `per_shard` rows, cut where a row's
    content hash says so (on average every per_shard/2 rows), as content-defined chunking does:
    a changed, added or removed file then changes its own shard and at most its neighbour, not
    every shard after it."""
    if per_shard < CONTENT_CUTS_FROM:
        return [rows[i:i + per_shard] for i in range(0, len(rows), per_shard)]
    every = per_shard // 2
    out, start = [], 0
    for pos, i in enumerate(rows):
        if pos + 1 - start >= per_shard or int(keys[i][:8], 16) % every == 0:
            out.append(rows[start:pos + 1])
            start = pos + 1
    if start < len(rows):
        out.append(rows[start:])
    return out


def _earlier_shards(folders: list[Path]) -> dict[tuple[str, str], Path]:
    """(split, digest prefix) -> a shard file of an earlier tensors folder (newest folder first)."""
    found: dict[tuple[str, str], Path] = {}
    for folder in reversed(folders):  # newer folders overwrite older ones
        for path in folder.glob("*.safetensors"):
            split, _, rest = path.name.partition("-")
            found[(split, rest.rpartition("-")[2].removesuffix(".safetensors"))] = path
    return found


def _link_earlier(src: Path | None, dest: Path) -> bool:
    if src is None or not src.is_file():
        return False
    try:
        os.link(src, dest)
    except OSError:  # another file system: a copy still saves the decoding
        shutil.copy2(src, dest)
    return True


def _torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def earlier_folders(out: Path, limit: int = 8) -> list[Path]:
    """Finished tensors folders of the same dataset, newest first (sources of unchanged shards)."""
    parent = Path(out).parent
    if not parent.is_dir():
        return []
    found = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".") and p != out]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]


def in_memory(kind, root: Path, manifest: pd.DataFrame, cfg) -> TensorBundle:
    """kind.write_tensors into a temporary folder, loaded whole (no cache: nothing outside is written)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tensors"
        kind.write_tensors(root, manifest, cfg, out, cache=PreprocessCache(None))
        return TensorBundle.load(out, in_memory_bytes=sys.maxsize)
