"""The <dataset>/<class>/<file> layout shared by the image and audio kinds (torchvision's
ImageFolder layout): detecting it, checking it with errors that name the folder or file,
the manifest columns every sample has, and the data version of a manifest.
"""
from __future__ import annotations

import bisect
import operator
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from unified_pipeline import hashing
from unified_pipeline.code_version import code_version
from unified_pipeline.datasets.decode_workers import decode_all
from unified_pipeline.datasets.facts_readers import JSON_FIELD, ROW_FIELD, SHA_FIELD, read_files
from unified_pipeline.datasets.preprocess_cache import PreprocessCache, entry_key
from unified_pipeline.datasets.row_packs import PackedRow
from unified_pipeline.errors import DatasetError
from unified_pipeline.datasets.splits import assign_splits
from unified_pipeline.paths import inside
from unified_pipeline.step_progress import log_function, track


def sample_path(root: Path, rel: str) -> Path:
    """`root/rel`, refusing a manifest path that leads outside the dataset folder (.., absolute, links out)."""
    try:
        return inside(root, rel)
    except ValueError as exc:
        raise DatasetError(f"{root}: manifest path {str(rel)!r} is outside the dataset folder") from exc


def files_inside(root: Path, rels: list[str]) -> list[str]:
    """`rels`, after refusing any that leads outside the dataset folder (as sample_path does).

    A big lane has many files in few folders, so the real path is resolved once per folder and
    per symbolic link, not once per file (resolving every file took 6 s for 18,000 images).
    """
    base = os.path.realpath(root)
    folders: dict[str, bool] = {}
    for rel in rels:
        parent = rel.rpartition("/")[0]
        ok = folders.get(parent)
        if ok is None:
            ok = folders[parent] = ".." not in parent.split("/") and _within(base, os.path.join(base, parent))
        full = os.path.join(base, rel)
        if not ok or os.path.isabs(rel) or rel.rpartition("/")[2] in ("", ".", "..") or (
                os.path.islink(full) and not _within(base, full)):
            sample_path(root, rel)  # the slow, exact check: raises the DatasetError naming the file
    return rels


def _within(base: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == base or real.startswith(base + os.sep)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_extension_files(root: Path, extensions: tuple[str, ...]) -> bool:
    for cls in _visible_dirs(root):
        for p in cls.rglob("*"):
            if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."):
                return True
    return False


def detect_class_folders(root: Path, extensions: tuple[str, ...]) -> bool:
    """Cheap layout test: at least one class sub-folder holding files with these extensions."""
    root = Path(root)
    return root.is_dir() and _has_extension_files(root, extensions)


def scan_class_folders(root: Path, file_hashes: dict[str, str], extensions: tuple[str, ...], what: str) -> list[str]:
    """Relative paths of the samples in a <class>/<file> layout, after checking the layout.

    Raises DatasetError naming the folder or file when nothing could be checked: no files,
    files at top level, an empty class folder or a file type the kind cannot read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not file_hashes:
        raise DatasetError(f"{root}: dataset folder holds no files (expected <class>/<{what}> sub-folders)")
    rels = sorted(file_hashes)
    # One pass picks the few paths any check below could refuse; the checks then look at those alone.
    odd = [rel for rel in rels if "/" not in rel or "/." in rel or rel[:1] in "/." or not rel.lower().endswith(extensions)]
    top_level = [rel for rel in odd if "/" not in rel]
    if top_level:
        raise DatasetError(
            f"{root}: file(s) {top_level[:5]} sit at top level; put each {what} in a class folder "
            f"(<dataset>/<class>/<{what}>)"
        )
    for cls in _visible_dirs(root):
        first = bisect.bisect_left(rels, cls.name + "/")
        if first == len(rels) or not rels[first].startswith(cls.name + "/"):
            raise DatasetError(f"{cls}: class folder is empty")
    unknown = [rel for rel in odd if not rel.lower().endswith(extensions)]  # (hidden files are never listed)
    if unknown:
        raise DatasetError(
            f"{root / unknown[0]}: unknown file type {Path(unknown[0]).suffix or '(none)'!r}"
            f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; accepted: {', '.join(extensions)}"
        )
    # The folder walk leaves out links that lead outside; a path given any other way is checked whole.
    escaping = [rel for rel in odd if rel.startswith("/") or "/../" in f"/{rel}/" or "/./" in f"/{rel}/"]
    files_inside(root, escaping)
    return rels


def class_folder_manifest(root: Path, file_hashes: dict[str, str], extensions: tuple[str, ...], unit: str,
                          read_facts: Callable[..., list[dict]], columns: list[str], cfg: Any,
                          int_columns: tuple[str, ...] = (), float_columns: tuple[str, ...] = (),
                          extra: tuple = (), rows_under: str | None = None) -> pd.DataFrame:
    """One row per file: the common columns, then what `read_facts(root, files, *extra)` reads from
    each file (None where it could not), typed, with the stratified split assigned. See file_facts
    for `rows_under` and for hashes given as None. A file with the same path and hash in the
    folder's previous manifest (cfg.scan, read by the same reader) keeps that row."""
    root = Path(root)
    rels = scan_class_folders(root, file_hashes, extensions, unit)
    reader = facts_reader(read_facts, extra)
    scan = getattr(cfg, "scan", None)
    previous = scan.previous if scan else None
    earlier = _earlier_rows(scan, reader, columns, rels, file_hashes)
    todo = [i for i, j in enumerate(earlier) if j is None]
    if previous:
        log_function(cfg.log)(f"{root.name}: {len(rels) - len(todo)} of {len(rels)} files unchanged since the "
                              f"previous manifest (their rows kept), {len(todo)} to read or look up")
    facts, hashes = file_facts(root, [rels[i] for i in todo], file_hashes, read_facts, cfg, unit, extra, rows_under)
    stats = scan.stats if scan else {}
    fresh = {  # column by column: a dict per row cost 1 KB each at 180,000 files
        "sample_id": [rels[i] for i in todo], "path": [rels[i] for i in todo],
        "label": [rels[i].split("/", 1)[0] for i in todo], "sha256": hashes,
        "size": [stats[rels[i]][0] if rels[i] in stats else os.path.getsize(os.path.join(root, rels[i])) for i in todo],
        "decodable": [f.get("decodable", True) for f in facts], "error": [f.get("error") for f in facts],
    }
    take = _taker(earlier, todo)
    # Typed as they are built: inferring a type from a list of Python ints first cost 4 ms a column.
    typed = {"size": "int64", **dict.fromkeys(int_columns, "Int64"), **dict.fromkeys(float_columns, "float64")}
    values = {c: _merged(take, todo, previous, c, fresh[c] if c in fresh else [f.get(c) for f in facts])
              for c in columns if c != "split"}
    df = pd.DataFrame({c: pd.array(v, dtype=typed[c]) if c in typed else v for c, v in values.items()},
                      columns=columns)
    df["decodable"] = df["decodable"].astype(bool)
    df["split"] = assign_splits(df, cfg, earlier=previous)
    if scan:  # kept in the manifest's columns document, for the next build
        scan.facts_reader = reader
    if scan and take is not None:  # a kept row whose split held is the previous manifest's line, as it was
        before = previous["columns"]["split"]
        scan.same_lines = [j if j is not None and before[j] == s else None for j, s in zip(earlier, df["split"].tolist())]
    return df


def facts_reader(read_facts: Callable, extra: tuple) -> str:
    """What a file's facts depend on besides its content: the reader, its code and arguments."""
    return hashing.combine(["facts", read_facts.__module__, read_facts.__qualname__,
                            code_version(read_facts.__module__), repr(extra)])


def _earlier_rows(scan: Any, reader: str, columns: list[str], rels: list[str],
                  file_hashes: dict[str, str | None]) -> list[int | None]:
    """Per file, its row in the previous manifest when that row holds (same path, same hash,
    same reader), else None."""
    previous = scan.previous if scan else None
    if not previous or previous.get("facts_reader") != reader or not set(columns) <= previous["columns"].keys():
        return [None] * len(rels)
    before = previous["columns"]
    if rels == before["path"]:  # the same files as before (the usual case): row i is row i, where its hash held
        rows: list[int | None] = list(range(len(rels)))
        now = np.array([file_hashes[rel] for rel in rels], dtype=object)
        for i in np.flatnonzero(now != np.array(before["sha256"], dtype=object)).tolist():
            rows[i] = None
        return rows
    rows = []
    for rel in rels:
        hit = scan.recorded.get(rel)
        rows.append(hit[3] if hit is not None and hit[2] == file_hashes[rel] else None)
    return rows


def _taker(earlier: list[int | None], todo: list[int]) -> Callable[[list], list] | None:
    """Picks, from a previous column, the value of each kept row (anything where a row is new);
    None when no row is kept."""
    if len(todo) == len(earlier):
        return None
    pick = operator.itemgetter(*(0 if j is None else j for j in earlier))
    return (lambda column: list(pick(column))) if len(earlier) > 1 else (lambda column: [pick(column)])


def _merged(take: Callable | None, todo: list[int], previous: dict | None, column: str, fresh: list) -> list:
    """One column: the previous manifest's value where a row was kept, the fresh value elsewhere."""
    if take is None:
        return fresh
    values = take(previous["columns"][column])
    for i, value in zip(todo, fresh):
        values[i] = value
    return values


# Facts and rows stored at once. Each commit rewrites every index page it touched, and content-hash
# keys spread over all of them: a commit every 1,024 files cost 10 s of a 180,000-file manifest.
PUT_EVERY = 16384


def file_facts(root: Path, rels: list[str], file_hashes: dict[str, str | None], read_facts: Callable, cfg: Any,
               unit: str, extra: tuple = (), rows_under: str | None = None) -> tuple[list[dict], list[str]]:
    """`read_facts` of every file, remembered by content hash in cfg.facts_cache: a new manifest
    reads only the files that are new or changed, and reads them on every core. Returns the facts
    and the sha256 of each file: a hash given as None (not known yet) is computed by the worker
    that reads the file.

    A reader that decodes a file whole anyway may also return the tensor row the tensors step will
    want (under ROW_FIELD); it is cached under `rows_under` (the tensors' settings digest), so
    that file is decoded once, not once here and once again for the tensors. The worker that
    decoded the rows writes them to a pack file itself; only their places come back."""
    cache = getattr(cfg, "facts_cache", None)
    cache = PreprocessCache(None) if cache is None else cache  # (an empty cache is falsy: it has a len)
    reader = facts_reader(read_facts, extra)
    hashes = [file_hashes[rel] for rel in rels]
    keys = [entry_key(h, reader) if h is not None else None for h in hashes]
    known = cache.get_json(sorted({key for key in keys if key is not None}))
    todo = [i for i, key in enumerate(keys) if key not in known]
    packs = str(cache.pack_folder) if rows_under and cache.pack_folder else None
    read = decode_all(read_files, root, [rels[i] for i in todo],
                      (read_facts, packs, any(hashes[i] is None for i in todo), *extra))
    fresh, placed, out = [], [], {}
    # strict: asks the tracked reader once more at the end, so its last file counts ("finished", not "stopped at")
    for i, facts in zip(todo, track(read, f"reading {root.name}", total=len(todo), log=cfg.log, unit=unit),
                        strict=True):
        row = facts.pop(ROW_FIELD, None)
        digest = facts.pop(SHA_FIELD, None)
        text = facts.pop(JSON_FIELD)
        if hashes[i] is None:
            hashes[i] = digest
            keys[i] = entry_key(digest, reader)
        if isinstance(row, PackedRow):
            placed.append((entry_key(hashes[i], rows_under), 0, row))
        out[i] = facts
        fresh.append((keys[i], text))
        if len(fresh) >= PUT_EVERY:  # stored while the workers decode on, not all at the end
            cache.add_packed(placed)
            cache.put_json_texts(fresh)
            fresh, placed = [], []
    cache.add_packed(placed)
    cache.put_json_texts(fresh)
    cache.prune()
    return [out[i] if i in out else known[key] for i, key in enumerate(keys)], hashes


def refuse_undecodable(manifest: pd.DataFrame, root: Path) -> None:
    bad = manifest[~manifest["decodable"].astype(bool)]
    if len(bad):
        names = [f"{p} ({e})" for p, e in zip(bad["path"].head(5), bad["error"].head(5))]
        raise DatasetError(
            f"{root}: {len(bad)} file(s) cannot be decoded: {'; '.join(names)}",
            hint="fix or remove them; the manifest quality check lists all of them",
        )


def data_version(manifest: pd.DataFrame) -> str:
    """Same digest as hashing.dataset_version when the manifest covers every file of the folder."""
    return hashing.files_version(dict(zip(manifest["path"].tolist(), manifest["sha256"].tolist())))
