"""Causal discovery data: one CSV of numeric columns, optionally with its true graph.

Layout: `<name>.csv` (header = variable names, one observation per row), optional
`adjacency.csv` (the same names as header, then a square 0/1 matrix with A[i,j]=1 for
i -> j, rows in header order; a leading row-name column is accepted) and optional
`sem.json` (how a generator made the data; copied to meta). A ground truth with a cycle (a
feedback loop, common in measured systems) is accepted for scoring: the cycle is named in a
warning and in the tensors' meta (`ground_truth_cycle`).

One manifest row per observation with its values in columns `x:<name>`; a cell that is
empty, non-numeric or non-finite leaves the row `decodable=False` with the column named.
Rows are split by the hash of their content.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from unified_pipeline import hashing
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.splits import SPLITS, hash_splits
from unified_pipeline.datasets.table_files import (
    checked_files, data_files, folder_version, header_fields, read_csv_frame, refuse_bad_rows)
from unified_pipeline.errors import DatasetError

ADJACENCY = "adjacency.csv"
SEM = "sem.json"
PREFIX = "x:"
log = logging.getLogger(__name__)


def _number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


class CausalKind:
    name = "causal"
    description = "one *.csv of numeric columns (+ optional adjacency.csv ground truth and sem.json)"

    def detect(self, root: Path) -> bool:
        files = [f for f in data_files(root, (".csv",)) if f.name != ADJACENCY and f.parent == Path(root)]
        if len(files) != 1:
            return False
        header = header_fields(files[0])
        if not header or {"text", "label", "reward"} & set(header):
            return False
        with open(files[0], "rb") as fh:
            fh.readline(1 << 20)
            first = fh.readline(1 << 20).decode("utf-8", "replace").strip().split(",")
        return len(first) == len(header) and all(_number(v) for v in first)

    def build_manifest(self, root: Path, file_hashes: dict[str, str],
                       cfg: PreprocessConfig | None = None) -> pd.DataFrame:
        root = Path(root)
        files = checked_files(root, file_hashes, (".csv",), allowed=(ADJACENCY, SEM))
        if len(files) != 1:
            raise DatasetError(f"{root}: expected exactly one data CSV besides {ADJACENCY}, found {files}")
        rel = files[0]
        raw = read_csv_frame(root / rel)
        names = list(raw.columns)
        if len(names) < 2 or len(set(names)) != len(names) or any(not n for n in names):
            raise DatasetError(f"{root / rel}: need at least two uniquely named columns; found {names}")
        if raw.empty:
            raise DatasetError(f"{root / rel}: no data rows (header only)")
        if ADJACENCY in file_hashes:
            cycle = ground_truth_cycle(read_adjacency(root / ADJACENCY, names), names)
            if cycle:
                log.warning("%s: the ground-truth graph has a cycle (%s); it is scored as given", root / ADJACENCY, cycle)
        values = raw.apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce")).astype("float64")
        bad = ~np.isfinite(values.to_numpy())
        errors = [None if not b.any() else "non-finite or non-numeric: " + ", ".join(
            f"{c}={raw[c].iloc[i]!r}" for c, flag in zip(names, b) if flag) for i, b in enumerate(bad)]
        canonical = pd.Series("", index=raw.index, dtype=object)
        for c in names:
            canonical = canonical + raw[c].str.strip() + ","
        sha = [hashing.sha256_bytes(t.encode()) for t in canonical]
        df = pd.DataFrame({
            "sample_id": [f"{rel}:{i + 1}" for i in range(len(raw))], "path": rel,
            "row": np.arange(1, len(raw) + 1, dtype=np.int64), "label": None, "sha256": sha,
            "size": [len(t.encode()) for t in canonical], "split": hash_splits(sha, cfg or PreprocessConfig()),
            "decodable": [e is None for e in errors], "error": errors, "file_sha256": file_hashes[rel],
            "has_ground_truth": ADJACENCY in file_hashes,
        })
        values.columns = [PREFIX + c for c in names]
        df = pd.concat([df, values.reset_index(drop=True)], axis=1)
        df["decodable"] = df["decodable"].astype(bool)
        return df

    def build_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> TensorBundle:
        import torch

        root = Path(root)
        refuse_bad_rows(root, manifest)
        cols = [c for c in manifest.columns if c.startswith(PREFIX)]
        names = [c[len(PREFIX):] for c in cols]
        x = manifest[cols].to_numpy(np.float32)
        splits = hash_splits(manifest["sha256"], cfg)
        train = x[splits == "train"] if (splits == "train").any() else x
        tensors, counts = {}, {}
        for split in SPLITS:
            sel = np.flatnonzero(splits == split)
            tensors[f"{split}/x"] = torch.from_numpy(np.ascontiguousarray(x[sel]))
            counts[split] = int(len(sel))
        has_truth = (root / ADJACENCY).is_file()
        cycle = None
        if has_truth:
            adjacency = read_adjacency(root / ADJACENCY, names)
            cycle = ground_truth_cycle(adjacency, names)
            tensors["adjacency"] = torch.from_numpy(adjacency.astype(np.float32))
        sem = None
        if (root / SEM).is_file():
            try:
                sem = json.loads((root / SEM).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise DatasetError(f"{root / SEM}: invalid JSON ({exc})") from exc
        meta = {
            "dataset": root.name, "kind": self.name, "data_version": folder_version(root), "splits": counts,
            "columns": names, "has_ground_truth": has_truth, "ground_truth_cycle": cycle,
            "mean": train.astype(np.float64).mean(axis=0).tolist(),
            "std": np.maximum(train.astype(np.float64).std(axis=0), 1e-6).tolist(), "sem": sem,
        }
        return TensorBundle(tensors=tensors, meta=meta)

    def generate_samples(self, raw_root: Path, seed: int = 0) -> list[Path]:
        from unified_pipeline.datasets.samples.structural_equations import generate_sem

        raw_root = Path(raw_root)
        return [generate_sem(raw_root / f"causal_{sem}_d{d}", d, sem, seed)
                for sem in ("linear", "nonlinear") for d in (10, 20)]


def read_adjacency(path: Path, names: list[str]) -> np.ndarray:
    """The 0/1 ground-truth matrix in `names` order; refuses wrong names, shape or values."""
    frame = read_csv_frame(path)
    header = list(frame.columns)
    if len(header) == len(names) + 1 and header[0] not in names:  # leading row-name column
        rows = [str(v).strip() for v in frame[header[0]]]
        if rows != header[1:]:
            raise DatasetError(f"{path}: row names {rows} do not match the header {header[1:]}")
        frame = frame[header[1:]]
        header = header[1:]
    if sorted(header) != sorted(names):
        raise DatasetError(f"{path}: header {header} does not name the data columns {names}")
    if len(frame) != len(header):
        raise DatasetError(f"{path}: {len(frame)} rows for {len(header)} columns; the matrix must be square")
    for i, row in enumerate(frame.itertuples(index=False), start=1):
        for col, cell in zip(header, row):
            if str(cell).strip() not in ("0", "1", "0.0", "1.0"):
                raise DatasetError(f"{path}: row {i}, column {col}: {cell!r} is not 0 or 1")
    order = [header.index(n) for n in names]
    adj = frame.to_numpy(dtype=str)
    return np.vectorize(lambda s: int(float(s)))(adj)[np.ix_(order, order)]


def ground_truth_cycle(adj: np.ndarray, names: list[str]) -> str | None:
    """One feedback loop of the true graph as "A -> B -> A", or None for a DAG."""
    cycle = find_cycle(adj)
    return " -> ".join(names[i] for i in cycle) if cycle else None


def find_cycle(adj: np.ndarray) -> list[int] | None:
    """Node indices of one directed cycle (first node repeated at the end), or None for a DAG."""
    d = adj.shape[0]
    state = [0] * d  # 0 unseen, 1 on the current path, 2 done
    for start in range(d):
        if state[start]:
            continue
        path, stack = [], [(start, iter(np.flatnonzero(adj[start]).tolist()))]
        state[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state[child] == 1:
                return path[path.index(child):] + [child]
            elif state[child] == 0:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(np.flatnonzero(adj[child]).tolist())))
    return None


KIND = CausalKind()
