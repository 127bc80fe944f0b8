"""Preset vs adaptive_learning_controller strategy, per service model, at the same epoch budget.

Runs the controller's real fit() on the sample tensors under $UNIFIED_HOME/tensors (latest
version of digits, spoken_digits and langid), warm-started from whatever the model registry
holds, in a temporary output folder. Every number comes from training in this run: the
preset and the chosen strategy are both retrained with a seed the study did not use.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from bench.common import save
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.paths import unified_home
from unified_pipeline.training.job import FitJob

DATASETS = ("digits", "spoken_digits", "langid")


def _latest(dataset: str) -> Path:
    found = sorted((unified_home() / "tensors" / dataset).glob("*/meta.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no tensors for {dataset} under {unified_home() / 'tensors'}; materialise the data lanes first")
    return found[-1].parent


def run() -> list[dict]:
    from unified_pipeline.models import adaptive_learning_controller as alc

    torch.set_num_threads(1)
    bundles = {ds: TensorBundle.load(_latest(ds)) for ds in DATASETS}
    # The preset's settings, as the pipeline passes them to the controller step.
    from unified_pipeline.presets import load_preset

    from unified_pipeline.train_model import NON_SEMANTIC_HPARAMS

    preset, scenario = load_preset(), "collaborative_training"
    hparams = preset.hparams(scenario, "adaptive_learning_controller")
    # As the pipeline does: each lane starts from that model's own resolved preset.
    hparams["advised_presets"] = {m: {k: v for k, v in preset.hparams(scenario, m).items()
                                      if k not in NON_SEMANTIC_HPARAMS} for m in alc.controlled()}
    with tempfile.TemporaryDirectory() as tmp:
        job = FitJob("adaptive_learning_controller", bundles, {}, hparams, "cpu", Path(tmp) / "ckpt",
                     Path(tmp) / "out", seed=0, log=logging.getLogger("bench.controller"))
        t0 = time.perf_counter()
        result = alc.fit(job)
        wall = time.perf_counter() - t0
        strategy = json.loads((Path(tmp) / "out" / "strategy.json").read_text())
    rows = []
    for name, m in strategy["models"].items():
        rows.append({
            "model": name, "metric": m["metric"], "strategy": m["strategy"],
            "lr": f"{m['preset']['learning_rate']:.2g} -> {m['learning_rate']:.2g}",
            "batch": f"{m['preset']['batch_size']} -> {m['batch_size']}",
            "patience": m["early_stopping_patience"],
            "val preset": m["val"]["preset"], "val controller": m["val"]["controller"],
            "test preset": m["test"]["preset"], "test controller": m["test"]["controller"],
            "trials (pruned)": f"{m['study']['trials']} ({m['study']['pruned']})",
            "warm-start records": len(m["study"]["warm_start"]),
            "study s": m["study"]["wall_time_s"],
        })
    t = result.metrics["test"]
    notes = (f"Budget {strategy['budget_epochs']} epochs per run, train subsample {strategy['train_subsample']}, "
             f"study seed {strategy['study_seed']}, check seeds {strategy['check_seeds']} (val and test are means over them). "
             f"Val wins {t['wins_fraction']:.2f} (mean +{t['mean_improvement']:.4f}); "
             f"test-split wins {t['test_split_wins_fraction']:.2f} (mean {t['test_split_mean_improvement']:+.4f}). "
             f"Whole controller fit: {wall:.0f} s, 1 CPU thread.")
    save("controller", rows, notes)
    print(notes)
    return rows


if __name__ == "__main__":
    run()
