"""Files/s for hashing (cold and cached), decoding (manifest) and feature extraction (tensors)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import save
from unified_pipeline.datasets import discover, get_kind
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.hashing import HashCache, dataset_version, list_files
from unified_pipeline.sample_data import write_sample_data


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        t0 = time.perf_counter()
        write_sample_data(raw, seed=0, log=lambda *_: None)
        rows.append({"stage": "sample data (all kinds)", "dataset": "*", "files": len(list_files(raw)),
                     "seconds": time.perf_counter() - t0, "files_per_s": None})
        for ref in discover(raw):
            n = len(list_files(ref.root))
            cache = HashCache(Path(tmp) / f"{ref.name}.sqlite")
            t0 = time.perf_counter()
            _, hashes = dataset_version(ref.root, cache)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            dataset_version(ref.root, cache)
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            kind = get_kind(ref.kind)
            manifest = kind.build_manifest(ref.root, hashes)
            decode = time.perf_counter() - t0
            t0 = time.perf_counter()
            kind.build_tensors(ref.root, manifest, PreprocessConfig())
            features = time.perf_counter() - t0
            for stage, secs in (("hash (cold)", cold), ("hash (cached)", warm), ("decode + manifest", decode),
                                ("features + tensors", features)):
                rows.append({"stage": stage, "dataset": ref.name, "files": n, "seconds": secs,
                             "files_per_s": n / secs if secs > 0 else None})
        rows.append(_ten_thousand_files(Path(tmp)))
    save("data", rows, "Rows per dataset; `files` counts files on disk (tabular kinds hold many rows per file).")
    return rows


def _ten_thousand_files(tmp: Path) -> dict:
    root = tmp / "many"
    for i in range(10_000):
        d = root / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.bin").write_bytes(i.to_bytes(4, "little") * 256)
    cache = HashCache(tmp / "many.sqlite")
    dataset_version(root, cache)
    t0 = time.perf_counter()
    dataset_version(root, HashCache(tmp / "many.sqlite"))
    secs = time.perf_counter() - t0
    return {"stage": "re-observe 10,000 unchanged files", "dataset": "synthetic", "files": 10_000,
            "seconds": secs, "files_per_s": 10_000 / secs}


if __name__ == "__main__":
    run()
