"""File helpers shared by the row-per-sample kinds (text, transitions, causal, memory):
finding data files, reading CSV headers and rows, JSONL records, all as strict UTF-8 with
errors that name the file, line and column.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from unified_pipeline import hashing
from unified_pipeline.errors import DatasetError
from unified_pipeline.paths import inside


def data_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Visible files with these extensions under root (names only: cheap enough for detect)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in hashing.list_files(root) if p.suffix.lower() in extensions]


def header_fields(path: Path) -> list[str]:
    """Column names from a CSV header line or the keys of a JSONL file's first record ([] if unreadable)."""
    try:
        with open(path, "rb") as fh:
            line = fh.readline(1 << 20).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return []
    if path.suffix.lower() == ".jsonl":
        try:
            first = json.loads(line)
        except ValueError:
            return []
        return list(first) if isinstance(first, dict) else []
    return [c.strip() for c in next(csv.reader([line]), [])]


def checked_files(root: Path, file_hashes: dict[str, str], extensions: tuple[str, ...],
                  allowed: tuple[str, ...] = ()) -> list[str]:
    """Relative data-file paths, refusing an empty folder and files of other types."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    unknown = sorted(r for r in file_hashes if Path(r).suffix.lower() not in extensions and r not in allowed)
    if unknown:
        raise DatasetError(f"{Path(root) / unknown[0]}: unknown file type {Path(unknown[0]).suffix or '(none)'!r}; "
                           f"accepted: {', '.join(extensions + allowed)}")
    files = sorted(r for r in file_hashes if r not in allowed)
    for rel in files:
        try:
            inside(root, rel)
        except ValueError as exc:
            raise DatasetError(f"{root}: file path {rel!r} is outside the dataset folder") from exc
    if not files:
        raise DatasetError(f"{root}: no {'/'.join(extensions)} files found")
    return files


def read_utf8(path: Path) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        row = f" (CSV data row {line - 1})" if Path(path).suffix.lower() == ".csv" and line > 1 else ""
        raise DatasetError(f"{path}: line {line}{row}: not UTF-8 (invalid byte 0x{data[exc.start]:02x} at column "
                           f"{column})", hint="re-save the file as UTF-8") from exc


def read_csv_frame(path: Path) -> pd.DataFrame:
    """All cells as strings (empty cells stay ''), so every value can be checked by row and column."""
    try:
        df = pd.read_csv(io.StringIO(read_utf8(path)), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path}: malformed CSV: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path}: empty CSV file (no header line)") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def read_jsonl_records(path: Path) -> list[tuple[int, dict | str]]:
    """(line number, object) per non-blank line; a broken line yields (line, reason) instead."""
    out: list[tuple[int, dict | str]] = []
    for line_no, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            out.append((line_no, f"line {line_no}: invalid JSON ({exc})"))
            continue
        out.append((line_no, obj if isinstance(obj, dict) else f"line {line_no}: not a JSON object"))
    return out


def folder_version(root: Path) -> str:
    """Same digest as the raw_files asset's data version."""
    return hashing.dataset_version(root)[0]


def refuse_bad_rows(root: Path, manifest: pd.DataFrame, what: str = "row", empty: str = "no rows") -> None:
    """DatasetError naming up to five undecodable rows (file:row and why), or `empty` when there are none."""
    bad = manifest[~manifest["decodable"].astype(bool)]
    if len(manifest) and not len(bad):
        return
    where = "; ".join(f"{p}:{r} ({e})" for p, r, e in zip(bad["path"].head(5), bad["row"].head(5), bad["error"].head(5)))
    raise DatasetError(f"{root}: {len(bad)} bad {what}(s): {where}" if len(bad) else f"{root}: {empty}")
