"""Warm start vs training from scratch after 10% new files, on the spoken-digits sample data.

In a temporary UNIFIED_HOME: copy data/raw/spoken_digits without every 10th file of each class,
build its tensors and train audio_service from scratch (v1, production). Then put the held-back
files back, rebuild the tensors and train twice on them through `train_or_reuse`: (a) the warm
start it chooses by itself (fine-tune v1 on the new train samples plus a replayed 30% of the old
ones), (b) from scratch (warm_start=false). Both are evaluated on the same full test split; v1 is
evaluated there too. Time is the training step's wall time on this machine, one thread.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from bench.common import ROOT, save

DATASET = "spoken_digits"
HOLD_EVERY = 10  # every 10th file of a class arrives later
HP = {"epochs": 20, "batch_size": 32, "seed": 0, "use_gpu": False, "checkpoint_interval": 0}


def _build(root: Path) -> Path:
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import DatasetRef

    ref = DatasetRef(root.name, "audio", root)
    version, _, manifest = build_manifest(ref)
    return build_tensors(ref, manifest, version, {})[0]


def _accuracy_on(version_dir: str, tensors: Path) -> float:
    """Test accuracy of a saved audio model on a tensors folder (v1 on the grown test split)."""
    from unified_pipeline.datasets.base import TensorBundle
    from unified_pipeline.models.base import BaseModel
    from unified_pipeline.training.classification import batched_logits, classification_metrics

    model = BaseModel.load(version_dir)
    test = TensorBundle.load(tensors).split("test")
    return classification_metrics(batched_logits(model, (test["x"], test["lengths"])), test["y"])["accuracy"]


def _row(label: str, outcome, samples: int) -> dict:
    ws = outcome.warm_start or {}
    return {
        "run": label, "version": outcome.version, "warm_start": bool(ws.get("used")),
        "train_samples_seen": samples, "epochs": outcome.epochs_run, "time_s": round(outcome.wall_time_s, 1),
        "test_accuracy": round(outcome.metrics["test"]["accuracy"], 4),
        "test_macro_f1": round(outcome.metrics["test"]["macro_f1"], 4),
        "promoted": outcome.promoted, "promotion": outcome.promotion_note,
    }


def run() -> list[dict]:
    torch.set_num_threads(1)
    source = ROOT / "data" / "raw" / DATASET
    if not source.is_dir():
        raise SystemExit(f"{source} is missing: run `unified-pipeline sample-data` first")
    saved = {k: os.environ.get(k) for k in ("UNIFIED_HOME", "UNIFIED_DATA", "UNIFIED_THREADS_PER_STEP")}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        tmp = Path(tmp)
        os.environ.update(UNIFIED_HOME=str(tmp / "home"), UNIFIED_DATA=str(tmp / "raw"), UNIFIED_THREADS_PER_STEP="1")
        try:
            from unified_pipeline.datasets.base import TensorBundle
            from unified_pipeline.train_model import train_or_reuse

            ds, later = tmp / "raw" / DATASET, []
            for cls in sorted(p for p in source.iterdir() if p.is_dir()):
                (ds / cls.name).mkdir(parents=True)
                for i, f in enumerate(sorted(cls.iterdir())):
                    if i % HOLD_EVERY == HOLD_EVERY - 1:
                        later.append(f)
                    else:
                        shutil.copy(f, ds / cls.name / f.name)
            before = _build(ds)
            v1 = train_or_reuse("audio_service", {DATASET: before}, HP)
            for f in later:
                shutil.copy(f, ds / f.parent.name / f.name)
            after = _build(ds)
            n_train = len(TensorBundle.load(after).split("train")["y"])
            warm = train_or_reuse("audio_service", {DATASET: after}, HP)
            scratch = train_or_reuse("audio_service", {DATASET: after}, {**HP, "warm_start": False})
            ws = warm.warm_start
            seen = (ws.get("new", 0) + ws.get("replayed", 0)) * warm.epochs_run
            rows = [
                _row("v1 before the new files (its own test split)", v1,
                     len(TensorBundle.load(before).split("train")["y"]) * v1.epochs_run),
                {"run": "v1 on the grown test split", "version": v1.version, "warm_start": False,
                 "train_samples_seen": None, "epochs": None, "time_s": None,
                 "test_accuracy": round(_accuracy_on(v1.path, after), 4), "test_macro_f1": None,
                 "promoted": None, "promotion": ""},
                _row("warm start (fine-tune v1)", warm, seen),
                _row("from scratch", scratch, n_train * scratch.epochs_run),
            ]
            detail = {k: ws.get(k) for k in ("change_fraction", "new", "replayed", "epochs", "learning_rate", "reason")}
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    notes = (f"audio_service on {DATASET}: {len(later)} held-back files ({100 // HOLD_EVERY}% per class) added after v1. "
             f"Scratch: {HP['epochs']} epochs max (early stopping as in the model defaults), batch {HP['batch_size']}. "
             f"Warm start: {detail}. time_s = wall time of the whole training step (load, train, evaluate, save, "
             f"register), 1 CPU thread; test split = the same full grown test split for both runs.")
    save("warm_start", rows, notes)
    print(notes)
    return rows


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
