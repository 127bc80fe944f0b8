"""Environment transitions: CSV rows of state_*, action_*, next_state_*, reward (+ episode).

Every CSV of a dataset must carry the same columns. One manifest row per transition, holding
its numbers, so the quality suite checks finiteness and ranges without rereading files;
a cell that is empty, non-numeric, NaN or infinite leaves the row `decodable=False` with an
error naming the column. Without an `episode` column, an episode ends where a row's state
differs from the previous row's next_state.

Rows are split by episode (hash of file and episode id), so an episode never straddles
train and test and adding an episode moves no other. Normalisation stats come from train.
A file named after a Gymnasium id (`CartPole-v1.csv`) records that id as `env`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from unified_pipeline import hashing
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.splits import SPLITS, hash_splits
from unified_pipeline.datasets.table_files import (
    checked_files, data_files, folder_version, header_fields, read_csv_frame, refuse_bad_rows)
from unified_pipeline.errors import DatasetError

GROUPS = ("state_", "action_", "next_state_")
ENV_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*-v\d+$")
BASE_COLUMNS = ["sample_id", "path", "row", "label", "episode", "episode_key", "sha256", "size", "split",
                "decodable", "error", "file_sha256"]


def column_groups(columns: list[str]) -> dict[str, list[str]]:
    """state/action/next_state column lists ordered by their numeric suffix (state_2 before state_10)."""
    def key(c: str):
        tail = c.rsplit("_", 1)[-1]
        return (int(tail), c) if tail.isdigit() else (1 << 30, c)

    state = sorted((c for c in columns if c.startswith("state_")), key=key)
    action = sorted((c for c in columns if c.startswith("action_")), key=key)
    nxt = sorted((c for c in columns if c.startswith("next_state_")), key=key)
    return {"state": state, "action": action, "next_state": nxt}


def is_transition_header(columns: list[str]) -> bool:
    groups = column_groups(columns)
    return all(groups.values()) and "reward" in columns


class TransitionsKind:
    name = "transitions"
    description = "*.csv with state_*, action_*, next_state_*, reward (optional episode) columns"

    def detect(self, root: Path) -> bool:
        files = data_files(root, (".csv",))
        return bool(files) and all(is_transition_header(header_fields(f)) for f in files)

    def build_manifest(self, root: Path, file_hashes: dict[str, str],
                       cfg: PreprocessConfig | None = None) -> pd.DataFrame:
        root = Path(root)
        frames, first_cols = [], None
        for rel in checked_files(root, file_hashes, (".csv",)):
            raw = read_csv_frame(root / rel)
            cols = list(raw.columns)
            groups = column_groups(cols)
            missing = [f"{g}*" for g, c in zip(GROUPS, groups.values()) if not c] + (
                ["reward"] if "reward" not in cols else [])
            if missing:
                raise DatasetError(f"{root / rel}: missing column(s) {missing}; found {cols}")
            if len(groups["state"]) != len(groups["next_state"]):
                raise DatasetError(f"{root / rel}: {len(groups['state'])} state_* but "
                                   f"{len(groups['next_state'])} next_state_* columns")
            if first_cols is None:
                first_cols = cols
            elif set(cols) != set(first_cols):
                raise DatasetError(f"{root / rel}: columns {cols} differ from the dataset's first file {first_cols}")
            frames.append(self._file_rows(rel, raw, file_hashes[rel]))
        df = pd.concat(frames, ignore_index=True)
        if df.empty:
            raise DatasetError(f"{root}: no transition rows in {sorted(file_hashes)} (header only?)")
        df["decodable"] = df["decodable"].astype(bool)
        df["split"] = episode_splits(df, cfg or PreprocessConfig())
        return df

    def _file_rows(self, rel: str, raw: pd.DataFrame, file_sha: str) -> pd.DataFrame:
        groups = column_groups(list(raw.columns))
        numeric_cols = groups["state"] + groups["action"] + groups["next_state"] + ["reward"]
        values = raw[numeric_cols].apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce")).astype("float64")
        bad = ~np.isfinite(values.to_numpy())
        errors = [None if not b.any() else "non-finite or non-numeric: " + ", ".join(
            f"{c}={raw[c].iloc[i]!r}" for c, flag in zip(numeric_cols, b) if flag) for i, b in enumerate(bad)]
        if "episode" in raw.columns:
            episode = raw["episode"].str.strip()
            errors = [e if ep else ((e + "; " if e else "") + "empty episode") for e, ep in zip(errors, episode)]
        else:
            episode = pd.Series(self._infer_episodes(values, groups), dtype="string").fillna("")
        canonical = pd.Series("", index=raw.index, dtype=object)
        for c in sorted(raw.columns):  # sorted: the hash must not depend on column order
            canonical = canonical + f"{c}=" + raw[c].str.strip() + "|"
        sha = [hashing.sha256_bytes(t.encode()) for t in canonical]
        keys = [f"{rel}#{ep}" for ep in episode]
        out = pd.DataFrame({
            "sample_id": [f"{rel}:{i + 1}" for i in range(len(raw))], "path": rel,
            "row": np.arange(1, len(raw) + 1, dtype=np.int64), "label": None, "episode": episode.astype(str).to_numpy(),
            "episode_key": keys, "sha256": sha, "size": [len(t.encode()) for t in canonical],
            "split": None,  # set for the whole manifest by episode_splits
            "decodable": [e is None for e in errors], "error": errors, "file_sha256": file_sha,
        })
        return pd.concat([out, values.reset_index(drop=True)], axis=1)

    @staticmethod
    def _infer_episodes(values: pd.DataFrame, groups: dict[str, list[str]]) -> list[str]:
        s = values[groups["state"]].to_numpy()
        ns = values[groups["next_state"]].to_numpy()
        starts = np.ones(len(s), dtype=bool)
        if len(s) > 1:
            starts[1:] = ~np.isclose(s[1:], ns[:-1], rtol=1e-6, atol=1e-9).all(axis=1)
        return [str(v) for v in np.cumsum(starts) - 1]

    def build_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> TensorBundle:
        import torch

        root = Path(root)
        refuse_bad_rows(root, manifest, "transition row", "manifest has no transitions")
        groups = column_groups(list(manifest.columns))
        arrays = {g: manifest[c].to_numpy(np.float32) for g, c in groups.items()}
        arrays["reward"] = manifest["reward"].to_numpy(np.float32)
        episode_ids = {k: i for i, k in enumerate(sorted(manifest["episode_key"].unique()))}
        episode = np.array([episode_ids[k] for k in manifest["episode_key"]], dtype=np.int64)
        splits = episode_splits(manifest, cfg)
        train = splits == "train" if (splits == "train").any() else np.ones(len(splits), dtype=bool)
        stats = {}
        for name, arr in (("state", arrays["state"]), ("action", arrays["action"]),
                          ("delta", arrays["next_state"] - arrays["state"]), ("reward", arrays["reward"])):
            sel = arr[train].astype(np.float64)
            stats[f"{name}_mean"] = sel.mean(axis=0).tolist()
            stats[f"{name}_std"] = np.maximum(sel.std(axis=0), 1e-6).tolist()
        tensors, counts = {}, {}
        for split in SPLITS:
            sel = np.flatnonzero(splits == split)
            for name in ("state", "action", "next_state", "reward"):
                tensors[f"{split}/{name}"] = torch.from_numpy(np.ascontiguousarray(arrays[name][sel]))
            tensors[f"{split}/episode"] = torch.from_numpy(episode[sel])
            counts[split] = int(len(sel))
        stems = sorted({Path(p).stem for p in manifest["path"]})
        env = stems[0] if len(stems) == 1 and ENV_ID.match(stems[0]) else None
        meta = {
            "dataset": root.name, "kind": self.name, "data_version": folder_version(root), "splits": counts,
            "state_columns": groups["state"], "action_columns": groups["action"],
            "next_state_columns": groups["next_state"], "env": env, "episodes": len(episode_ids), **stats,
        }
        return TensorBundle(tensors=tensors, meta=meta)

    def generate_samples(self, raw_root: Path, seed: int = 0) -> list[Path]:
        from unified_pipeline.datasets.samples.control_rollouts import generate_cartpole, generate_pendulum

        return [generate_cartpole(Path(raw_root) / "cartpole", seed),
                generate_pendulum(Path(raw_root) / "pendulum", seed)]


def episode_splits(manifest: pd.DataFrame, cfg: PreprocessConfig) -> np.ndarray:
    """Whole episodes go to one split, by the hash of their key (file and episode id)."""
    return hash_splits([hashing.sha256_bytes(k.encode()) for k in manifest["episode_key"]], cfg)


KIND = TransitionsKind()
