"""Subprocess worker for the registry concurrency tests: registers versions of one model.

usage: _registry_worker.py ROOT MODEL COUNT WORKDIR LABEL
Prints one JSON line per registration: {"label", "i", "number"}.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from unified_pipeline.registry import ModelRegistry


def make_source(folder: Path, label: str, i: int, files: int = 3) -> Path:
    folder.mkdir(parents=True)
    for k in range(files):
        (folder / f"part{k}.bin").write_bytes(f"{label}-{i}-{k}-{os.getpid()}".encode() * 64)
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5 + i / 100}}))
    return folder


def main(argv: list[str]) -> int:
    root, model, count, workdir, label = Path(argv[0]), argv[1], int(argv[2]), Path(argv[3]), argv[4]
    registry = ModelRegistry(root)
    for i in range(count):
        src = make_source(workdir / f"{label}-{i}", label, i)
        result = registry.register(
            model, src,
            lineage={"data_versions": {"d": label}, "code_version": "c", "hparams": {"i": i}, "run_id": label},
            fingerprint=f"{label}-{i}", metric="accuracy",
        )
        print(json.dumps({"label": label, "i": i, "number": result.version.number}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
