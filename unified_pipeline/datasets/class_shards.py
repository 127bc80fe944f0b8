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
from unified_pipeline.datasets.preprocess_cache import PreprocessCache, default_cache, entry_keys, settings_digest
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
    classes: list = field(default_factory=list)  # labels in order: row label i is classes[i]


def write_class_tensors(codec: Codec, root: Path, manifest: pd.DataFrame, cfg, out: Path,
                        reuse_from: list[Path] | None = None, cache: PreprocessCache | None = None,
                        code: str = "") -> BuildReport:
    """Shards + shards.json into `out` (a folder the caller renames into place when complete)."""
    out.mkdir(parents=True, exist_ok=True)
    cache = default_cache() if cache is None else cache
    row_digest = settings_digest(codec.kind, codec.settings, code)
    rows = sample_rows(manifest, row_digest)
    splits = manifest_splits(manifest, cfg)
    sample_ids = manifest["sample_id"].to_numpy()
    per_shard = rows_per_shard(int(np.prod(codec.row_shape)) * np.dtype(codec.dtype).itemsize, SHARD_BYTES)
    report, plan, index = BuildReport(classes=rows.classes), [], {}
    earlier = _earlier_shards(reuse_from or [])
    for split in SPLITS:
        sel = np.flatnonzero(splits == split)
        report.counts[split] = int(len(sel))
        report.samples[split] = sample_ids[sel].tolist()
        entries = []
        for n, shard in enumerate(cut_shards(sel, rows.heads, per_shard)):
            digest = shard_digest(rows, shard)
            name = shard_name(split, n, digest)
            entries.append({"file": name, "rows": int(len(shard))})
            if _link_earlier(earlier.get((split, digest[:16])), out / name):
                report.shards_reused += 1
            else:
                plan.append((split, n, shard, digest))
        index[split] = entries
    written = _write_planned(codec, root, manifest, rows, plan, out, cache, report, cfg)
    report.stats = _summed_stats(index, report.counts, written, out)
    report.index = index
    cache.prune()
    return report


@dataclass
class SampleRows:
    """What each manifest row contributes to its shard, for every row at once: a one-file rebuild
    reads every row to find the shards that changed, so a Python loop per row was most of its time."""

    row_digest: str  # what a decoded row depends on besides its file (settings_digest)
    hashes: np.ndarray  # (object) each row's content hash
    labels: np.ndarray  # (int64) each row's index in `classes`
    classes: list
    heads: np.ndarray  # each key's first 8 hex digits as a number: where content-defined cuts fall
    parts: np.ndarray  # (object) "key:label", each row's part of its shard's digest

    def keys(self, shard: np.ndarray) -> list[str]:
        """The rows' preprocessing cache keys (made for the shards to write only)."""
        return entry_keys(self.hashes[shard], self.row_digest).tolist()


def sample_rows(manifest: pd.DataFrame, row_digest: str) -> SampleRows:
    hashes = manifest["sha256"].to_numpy(dtype=object)
    classes = sorted(manifest["label"].unique())
    labels = pd.Index(classes).get_indexer(manifest["label"]).astype(np.int64)
    # "key:label" = hash + (what entry_keys appends to a hash) + ":label": one new string per row
    key_tail = entry_keys(np.array([""], dtype=object), row_digest)[0]
    tails = np.array([f"{key_tail}:{i}" for i in range(len(classes))], dtype=object)
    return SampleRows(row_digest, hashes, labels, classes, key_heads(hashes), hashes + tails[labels])


HASH_DIGITS = 64  # a sha256 hex digest, as hashing writes a manifest's hashes


def key_heads(hashes: np.ndarray) -> np.ndarray:
    """int(h[:8], 16) of each hash (a cache key starts with its hash): one parse of them all when
    every hash is a sha256 hex digest, else one hash at a time."""
    width = HASH_DIGITS + 1
    text = ",".join(hashes.tolist()).encode() + b","
    if len(hashes) and len(text) == width * len(hashes):
        table = np.frombuffer(text, dtype=np.uint8).reshape(-1, width)
        if (table[:, -1] == ord(",")).all():  # so every hash has HASH_DIGITS characters
            try:
                return np.frombuffer(bytes.fromhex(table[:, :8].tobytes().decode()), dtype=">u4").astype(np.int64)
            except ValueError:  # not hex: the exact parse below says where
                pass
    return np.array([int(h[:8], 16) for h in hashes.tolist()], dtype=np.int64)


def shard_digest(rows: SampleRows, shard: np.ndarray) -> str:
    """What names a shard: the rows' settings, then each row's key and label, in order."""
    return hashing.combine([rows.row_digest, *rows.parts[shard].tolist()])


def _summed_stats(index: dict[str, list[dict]], counts: dict[str, int], written: dict[str, dict],
                  out: Path) -> dict[str, np.ndarray]:
    """The train split's shard statistics summed (every split's when train is empty), in shard order.
    A shard written here gives its own; only a reused one's header is read."""
    total: dict[str, np.ndarray] = {}
    for split, entries in index.items():
        if split != "train" and counts.get("train"):
            continue
        for e in entries:
            stats = written[e["file"]] if e["file"] in written else shard_stats(out / e["file"])
            for k, v in stats.items():
                total[k] = total.get(k, 0) + np.asarray(v, dtype=np.float64)
    return total


def write_class_index(out: Path, codec: Codec, report: BuildReport, decode: dict) -> None:
    """shards.json, once the statistics (and so the decoding of `x`) are known."""
    fields = {"x": torch.empty((0, *codec.row_shape), dtype=_torch_dtype(codec.dtype)),
              "y": torch.empty(0, dtype=torch.int64)}
    if codec.aux_field:
        fields[codec.aux_field] = torch.empty(0, dtype=torch.int64)
    write_index(out, {split: {"fields": field_specs(fields, {"x": decode}, split), "shards": entries}
                      for split, entries in report.index.items()})


WRITERS = 3  # shards being written at once: a shard's fsync waits on the disk while the others compute


def _write_planned(codec: Codec, root: Path, manifest: pd.DataFrame, rows: SampleRows, plan: list, out: Path,
                   cache: PreprocessCache, report: BuildReport, cfg) -> dict[str, dict]:
    """The planned shards written from the cache, decoding only the misses; returns each written
    shard's statistics by file name."""
    if not plan:
        return {}
    plan_keys = [rows.keys(shard) for _, _, shard, _ in plan]
    places, misses = _locate(cache, plan, plan_keys)
    report.decoded, report.cached = len(misses), sum(map(len, plan_keys)) - len(misses)
    rels = files_inside(root, manifest["path"].to_numpy()[list(misses.values())].tolist())
    decoded = decode_all(codec.decode, root, rels, codec.extra)
    decoded = iter(track(decoded, f"decoding {root.name}", total=len(misses), log=getattr(cfg, "log", None),
                         unit="file"))
    last_use = {key: p for p, keys in enumerate(plan_keys) for key in keys}
    fresh: dict[str, tuple[np.ndarray, int]] = {}
    order = iter(misses.items())
    written: dict[str, dict] = {}
    # A shard's statistics, file and sync run in threads while the next shard is put together
    # (numpy, safetensors and fsync let go of the GIL); WRITERS shards in flight bound the memory.
    # The last shard has nothing to overlap with: it is written here (starting a thread cost 3 ms).
    with ThreadPoolExecutor(WRITERS) as writer:
        writing: deque = deque()
        for p, ((split, n, shard, digest), keys) in enumerate(zip(plan, plan_keys)):
            x, aux, positions = _fill_shard(codec, root, manifest, cache, places, keys, shard, fresh, order, decoded)
            tensors = {"x": torch.from_numpy(x), "y": torch.from_numpy(rows.labels[shard])}
            if codec.aux_field:
                tensors[codec.aux_field] = torch.tensor([aux[k] for k in keys], dtype=torch.int64)
            if len(writing) >= WRITERS:
                written.update(writing.popleft().result())
            if p == len(plan) - 1:
                written.update(_finish_shard(codec, out, split, n, tensors, digest))
            else:
                writing.append(writer.submit(_finish_shard, codec, out, split, n, tensors, digest))
            report.shards_written += 1
            for k in positions:
                if last_use[k] == p:
                    fresh.pop(k, None)
        while writing:
            written.update(writing.popleft().result())
    # Every miss was taken above; asking once more shuts the worker pool down now (not when the
    # generator is collected) and lets the progress line count the last file ("finished").
    next(decoded, None)
    return written


def _locate(cache: PreprocessCache, plan: list, plan_keys: list[list[str]]) -> tuple[dict[str, tuple], dict[str, int]]:
    """(where the cache holds each planned key, the first manifest row of each key it lacks, in plan order)."""
    places = cache.locate(sorted({key for keys in plan_keys for key in keys}))
    misses: dict[str, int] = {}
    for (_, _, shard, _), keys in zip(plan, plan_keys):
        for i, key in zip(shard.tolist(), keys):
            if key not in places:
                misses.setdefault(key, i)
    return places, misses


def _fill_shard(codec: Codec, root: Path, manifest: pd.DataFrame, cache: PreprocessCache, places: dict,
                keys: list[str], shard: np.ndarray, fresh: dict, order, decoded) -> tuple[np.ndarray, dict, dict]:
    """One shard's rows (x, aux by key, positions by key): read from the cache, else taken from the
    decoded misses (`order`, `decoded`: in the same order), which are stored and kept in `fresh`."""
    positions: dict[str, list[int]] = {}
    for j, key in enumerate(keys):
        positions.setdefault(key, []).append(j)
    x = np.empty((len(keys), *codec.row_shape), dtype=codec.dtype)
    aux = cache.read_into({k: places[k] for k in positions if k in places and k not in fresh}, positions, x)
    new = []
    missing = positions.keys() - aux.keys() - fresh.keys()
    while missing:
        key, _i = next(order, (None, None))
        if key is None:  # an entry left the cache since it was counted (a concurrent build pruned it)
            lost = list(dict.fromkeys(k for k in keys if k in missing))
            paths = [manifest["path"].iloc[shard[positions[k][0]]] for k in lost]
            for k, value in zip(lost, codec.decode(str(root), paths, *codec.extra)):
                fresh[k] = value
            break
        fresh[key] = next(decoded)
        missing.discard(key)
        new.append((key, *fresh[key]))
    cache.put_many(new)
    for k in positions.keys() & fresh.keys():
        row, aux[k] = fresh[k]
        for j in positions[k]:
            place_row(x, j, row, k)
    return x, aux, positions


def _finish_shard(codec: Codec, out: Path, split: str, n: int, tensors: dict, digest: str) -> dict[str, dict]:
    stats = {k: [float(v) for v in np.atleast_1d(s)] for k, s in codec.stats(tensors["x"].numpy()).items()}
    entry = write_shard(out, split, n, tensors, stats=stats, digest=digest)
    return {entry["file"]: stats}


CONTENT_CUTS_FROM = 64  # rows per shard below which shards are cut by count alone


def cut_shards(rows: np.ndarray, heads: np.ndarray, per_shard: int) -> list[np.ndarray]:
    """The split's rows (manifest order) in shards of at most `per_shard` rows, cut after a row
    whose key's head (key_heads) says so (on average every per_shard/2 rows), as content-defined
    chunking does: a changed, added or removed file then changes its own shard and at most its
    neighbour, not every shard after it."""
    if per_shard < CONTENT_CUTS_FROM:
        return [rows[i:i + per_shard] for i in range(0, len(rows), per_shard)]
    ends, start = [], 0
    for cut in (np.flatnonzero(heads[rows] % (per_shard // 2) == 0) + 1).tolist():
        ends += range(start + per_shard, cut, per_shard)  # a run without a content cut is cut when full
        ends.append(cut)
        start = cut
    ends += range(start + per_shard, len(rows), per_shard)
    starts = [0, *ends]
    return [rows[a:b] for a, b in zip(starts, [*ends, len(rows)]) if a < b]


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
