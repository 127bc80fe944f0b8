"""Manifest files: the JSON-lines manifest people and tools read, and beside it the same columns
as one JSON document (`<name>.columns.json`) that the tensors step and the next manifest build
read in milliseconds: parsing the lines cost 0.12 s at 18,000 files, on every build.

The columns document of a folder's newest manifest also records the folder and each file's
mtime. The next build of that folder stats every file and takes a file whose size and mtime
are the recorded ones as unchanged, with its hash, facts and split, as git's index does;
only the other files are looked up in the caches, hashed or read.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from unified_pipeline import atomic, hashing
from unified_pipeline.paths import unified_home

COLUMNS_SUFFIX = ".columns.json"
COLUMNS_FORMAT = 1
LINES_BLOCK = 8192  # rows per block of JSON text, written or parsed at once: bounded memory at any size


# A file modified this close before the previous scan is read again: a file system may keep mtimes
# at a coarse grain (2 s on FAT), so a second change within it would leave the recorded stat as it was.
RACY_NS = 2 * 10**9


@dataclass
class FolderScan:
    """What one manifest build knows of its folder beyond the files' hashes: the folder's
    previous manifest (previous_scan) and what it recorded, each file's (size, mtime_ns) now, and
    what the kind's manifest leaves for the writing: the facts reader, and per row its line in
    the previous lines file."""

    previous: dict[str, Any] | None = None
    scanned_ns: int = 0  # when the files were stat'ed (time.time_ns())
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)
    facts_reader: str | None = None
    same_lines: list[int | None] | None = None

    @functools.cached_property
    def recorded(self) -> dict[str, tuple[int, int, str, int]] | None:
        """(size, mtime_ns, sha256, row) of each file the previous manifest holds, by relative path."""
        if self.previous is None:
            return None
        cols = self.previous["columns"]
        return {rel: (size, mtime, sha, row) for row, (rel, size, mtime, sha) in
                enumerate(zip(cols["path"], cols["size"], cols["mtime_ns"], cols["sha256"]))}

    @property
    def racy_from_ns(self) -> int | None:
        """A file modified after this may have changed again since the previous scan recorded it."""
        return None if self.previous is None else self.previous.get("scanned_ns", 0) - RACY_NS

    def compare(self, paths: list[str], strip: int) -> tuple[dict[str, str | None], list[str]]:
        """Stats every path (its relative path starts at `strip`) into `stats`. Returns (by
        relative path, the sha256 the previous manifest recorded for a file with the same size and
        mtime, else None; the paths to look up in the hash cache: the others, but for those
        modified so recently that their stat proves nothing)."""
        rels = [p[strip:] for p in paths] if os.sep == "/" else [p[strip:].replace(os.sep, "/") for p in paths]
        stat = hashing.stat_files(paths)
        self.stats = dict(zip(rels, stat))
        if self.previous is None:
            return dict.fromkeys(rels), list(paths)
        cols, racy_from = self.previous["columns"], self.racy_from_ns
        if rels == cols["path"]:  # the same files as before (the usual case): compared as arrays, not one by one
            now = np.fromiter(itertools.chain.from_iterable(stat), np.int64, 2 * len(stat)).reshape(-1, 2)
            same = (now[:, 0] == np.asarray(cols["size"])) & (now[:, 1] == np.asarray(cols["mtime_ns"]))
            racy = now[:, 1] >= racy_from
            hashes = list(cols["sha256"])
            for i in np.flatnonzero(~same | racy).tolist():
                hashes[i] = None
            return dict(zip(rels, hashes)), [paths[i] for i in np.flatnonzero(~same & ~racy).tolist()]
        hashes, look = {}, []
        for path, rel, (size, mtime) in zip(paths, rels, stat):
            hit = self.recorded.get(rel)
            hashes[rel] = hit[2] if hit is not None and hit[0] == size and hit[1] == mtime < racy_from else None
            if hashes[rel] is None and mtime < racy_from:
                look.append(path)
        return hashes, look


def manifest_folder(dataset: str) -> Path:
    return unified_home() / "manifests" / dataset


def manifest_path(dataset: str, version: str) -> Path:
    return manifest_folder(dataset) / f"{version[:16]}.jsonl"


def columns_path(manifest: str | Path) -> Path:
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + COLUMNS_SUFFIX)


def _scan_pointer(dataset: str, root: str | Path) -> Path:
    """Names the newest manifest built from this folder (one per folder: a dataset name may be
    reused for another folder, e.g. in tests)."""
    return manifest_folder(dataset) / f"scan-{hashing.combine([os.path.abspath(root)])[:12]}.json"


def write_manifest(path: Path, manifest: pd.DataFrame, record: dict[str, Any] | None = None,
                   extra: dict[str, list] | None = None, scan_of: tuple[str, str | Path] | None = None,
                   lines_from: tuple[str, list[int | None]] | None = None,
                   earlier: dict[str, Any] | None = None) -> None:
    """The lines file, then its columns document: a head line (`record`, e.g. split settings),
    then one line per column, the manifest's and `extra`'s (e.g. mtimes), so a reader parses
    only the columns it wants. `scan_of` = (dataset, folder) makes it the folder's newest
    manifest for the next build. `lines_from` = (an earlier lines file, per row the number of
    that file's line holding the same row, or None): those lines are copied, not encoded again.
    `earlier`: an earlier columns document read with its text (previous_scan): a column whose
    values and dtype are that document's is written as its text, not encoded again."""
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if not (lines_from and _copy_lines(fh, manifest, *lines_from)):
            for start in range(0, len(manifest), LINES_BLOCK):  # one block of JSON text in memory at a time
                fh.write(_lines(manifest.iloc[start:start + LINES_BLOCK]))
    head = {**(record or {}), "format": COLUMNS_FORMAT, "rows": len(manifest), "lines_bytes": path.stat().st_size,
            "manifest_columns": list(manifest.columns), "dtypes": {c: str(t) for c, t in manifest.dtypes.items()}}
    # (not synced: a columns document that does not match its lines file is not read)
    with atomic.atomic_path(columns_path(path), durable=False) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(head, allow_nan=False) + "\n")
        for name, text in _column_texts(manifest, extra or {}, earlier, lines_from[1] if lines_from else None):
            fh.write(f"{json.dumps(name)}\t{text}")
    if scan_of:
        with atomic.atomic_path(_scan_pointer(*scan_of), durable=False) as tmp:
            tmp.write_text(json.dumps({"manifest": path.name}), encoding="utf-8")


def _column_texts(manifest: pd.DataFrame, extra: dict[str, list], earlier: dict[str, Any] | None,
                  rows: list[int | None] | None) -> Iterator[tuple[str, str]]:
    """(name, JSON text) of each column, the manifest's then `extra`'s: the earlier document's
    text where the values and dtype are its own. When every kept row is the earlier row of the
    same number, a column can differ only where a row was not kept: only those values are compared."""
    text, parsed, dtypes = (earlier["text"], earlier["columns"], earlier.get("dtypes", {})) if earlier else ({}, {}, {})
    redo = None
    if earlier and rows is not None and len(rows) == earlier.get("rows"):
        at = np.array(rows, dtype=np.float64)  # (None -> NaN)
        kept = ~np.isnan(at)
        if (at[kept] == np.flatnonzero(kept)).all():
            redo = np.flatnonzero(~kept)
    for name in manifest.columns:
        same_type = name in text and dtypes.get(name) == str(manifest[name].dtype)
        if same_type and redo is not None:
            before = parsed[name]
            if _plain(manifest[name].iloc[redo]) == [before[i] for i in redo.tolist()]:
                yield name, text[name]
                continue
        values = _plain(manifest[name])
        yield name, text[name] if same_type and parsed[name] == values else _encoded(values)
    for name, values in extra.items():
        yield name, text[name] if name in text and parsed.get(name) == values else _encoded(values)


def _encoded(values: list) -> str:
    return json.dumps(values, allow_nan=False, default=atomic.json_default) + "\n"


def _lines(rows: pd.DataFrame) -> bytes:
    return rows.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8") if len(rows) else b""


def _copy_lines(fh, manifest: pd.DataFrame, earlier: str, rows: list[int | None]) -> bool:
    """Writes the manifest's lines, each row that `rows` names copied from that line of the
    earlier lines file, a run of consecutive lines as one piece; False (nothing written) when
    that file is gone, does not end a line last or holds fewer lines."""
    at = np.array(rows, dtype=np.float64)  # (None -> NaN: a row to encode)
    kept = ~np.isnan(at)
    try:
        src = open(earlier, "rb")
    except OSError:
        return False
    with src, contextlib.ExitStack() as stack:
        try:
            mapped = stack.enter_context(mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ))
        except (OSError, ValueError):  # (ValueError: an empty file cannot be mapped)
            return False
        starts = _line_starts(mapped)
        if starts[-1] != len(mapped) or (kept.any() and at[kept].max() >= len(starts) - 1):
            return False
        # A run: rows that are consecutive lines of the earlier file, or rows to encode, side by side.
        goes_on = np.zeros(len(at), dtype=bool)
        goes_on[1:] = (kept[1:] & kept[:-1] & (at[1:] == at[:-1] + 1)) | (~kept[1:] & ~kept[:-1])
        bounds = np.append(np.flatnonzero(~goes_on), len(at)).tolist()
        view = stack.enter_context(memoryview(mapped))
        for first, end in zip(bounds[:-1], bounds[1:]):
            if kept[first]:
                fh.write(view[starts[int(at[first])]:starts[int(at[end - 1]) + 1]])
            else:
                for block in range(first, end, LINES_BLOCK):
                    fh.write(_lines(manifest.iloc[block:min(block + LINES_BLOCK, end)]))
    return True


def _line_starts(data) -> list[int]:
    """Where each line of `data` starts, then where the last newline ends (UTF-8: no other
    character holds the newline byte); a block at a time, never a flag per byte of a large file."""
    found = [np.zeros(1, dtype=np.int64)]
    step = LINES_BLOCK * 128
    for at in range(0, len(data), step):
        block = np.frombuffer(data, dtype=np.uint8, count=min(step, len(data) - at), offset=at)
        found.append(np.flatnonzero(block == 10) + at + 1)
    return np.concatenate(found).tolist()


def _plain(column: pd.Series) -> list:
    """The column's values as the lines file gives them back: missing ones (None, NaN, NA) as null."""
    if not column.hasnans:  # (the usual case, and a test in C where a loop over the values took 1 ms a column)
        return column.tolist()
    return column.astype(object).where(column.notna(), None).tolist()


def read_columns(path: str | Path, columns: tuple[str, ...] | None = None,
                 keep_text: bool = False) -> dict[str, Any] | None:
    """The head of this manifest's columns document, its `columns` (all, or these) parsed into
    head["columns"] (and with `keep_text`, as text into head["text"]); None when it is missing,
    unreadable, lacks one of them or is not the lines file's (written by an older build, or by a
    build that stopped between the two)."""
    try:
        with open(columns_path(path), encoding="utf-8") as fh:
            head = json.loads(fh.readline())
            if not isinstance(head, dict) or head.get("format") != COLUMNS_FORMAT or \
                    head.get("lines_bytes") != Path(path).stat().st_size:
                return None
            found, text = {}, {}
            for line in fh:
                name, _, values = line.partition("\t")
                name = json.loads(name)
                if columns is None or name in columns:
                    found[name] = json.loads(values)
                    if keep_text:
                        text[name] = values
    except (OSError, ValueError, AttributeError):
        return None
    if any(col not in found or len(found[col]) != head.get("rows") for col in columns or found):
        return None
    return {**head, "columns": found, **({"text": text} if keep_text else {})}


def previous_scan(dataset: str, root: str | Path) -> dict[str, Any] | None:
    """The columns document of the newest manifest built from this folder, with its mtimes."""
    try:
        name = json.loads(_scan_pointer(dataset, root).read_text(encoding="utf-8"))["manifest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lines = manifest_folder(dataset) / str(name)
    doc = read_columns(lines, keep_text=True)
    if doc is None or doc.get("root") != os.path.abspath(root) or "mtime_ns" not in doc["columns"]:
        return None
    return {**doc, "lines_path": str(lines)}


def read_manifest(path: str | Path, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The manifest as a DataFrame; `columns` keeps only those. The record of its columns
    document (e.g. split settings) goes to `attrs`."""
    values, record = read_values(path, columns)
    df = pd.DataFrame(values, columns=list(columns or values))
    df.attrs.update(record)
    return df


def read_values(path: str | Path, columns: tuple[str, ...] | None = None) -> tuple[dict[str, list], dict[str, Any]]:
    """The manifest's values column by column as JSON gives them (all columns, or these: None
    where a row lacks one), and the record its columns document holds. From that document when
    it matches the lines file ({} as record otherwise), else from the lines."""
    doc = read_columns(path, columns)
    if doc is not None:
        found = doc.pop("columns")
        return {col: found[col] for col in columns or doc["manifest_columns"]}, doc
    return _read_lines(path, columns), {}


def _read_lines(path: str | Path, columns: tuple[str, ...] | None) -> dict[str, list]:
    """Parsed a block of lines at a time into one list per column: pandas' read_json holds a dict
    per row for the whole file, which at 180,000 rows was the tensors step's peak memory."""
    values: dict[str, list] = {key: [] for key in columns or ()}
    rows = 0
    with open(path, encoding="utf-8") as fh:
        while lines := list(itertools.islice(fh, LINES_BLOCK)):
            block = [line for line in lines if line.strip()]
            records = json.loads("[" + ",".join(block) + "]")  # one parse per block, not per line
            if columns is None:
                for key in dict.fromkeys(k for r in records for k in r):
                    values.setdefault(key, [None] * rows)  # a key earlier rows lacked: None there
            for key, column in values.items():
                column.extend(r.get(key) for r in records)
            rows += len(records)
    return values
