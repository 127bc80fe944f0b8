"""Every model trained inside its Dagster asset against the same work in a plain PyTorch loop.

The asset side is `materialize` of the real model asset, in a fresh run root holding the
tensors and upstream model versions that `make run` left in the project's run root. While it
runs, `bench.replay.recording` keeps every training run the step makes (a step can make several:
the from-scratch twin of multimodal_service, the teacherless student, one simulator per world,
the controller's trials and checks) and every NOTEARS solve. The plain side replays exactly
those runs: same nn.Module from the same initial weights, same tensors, loss, batch size,
optimizer, precision and epochs (`bench.replay.plain_fit`), or calls the solver directly.

After one uncounted warm-up run, runs alternate asset, plain, plain, asset, ... and the medians
are compared. samples/s counts
training time only on both sides (the trainer's own per-epoch timing; evaluation excluded);
`asset_step_s` is the whole step (Dagster, data loading, evaluation, plots, registry) and
`plain_s` the whole replay, evaluation included.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import save
from bench.replay import Recording, plain_fit, plain_solve, recording

# The controller's study is shrunk so one run takes about a minute; its trials are ordinary
# training runs of the three service models and are replayed like any other.
HPARAMS = {"adaptive_learning_controller": {"budget_epochs": 2, "study_epochs": 4, "check_seeds": 1}}
# Pairs go on past the minimum until the asset side has trained this long: short runs scatter most.
MIN_TRAIN_S, MAX_PAIRS = 40.0, 12


def _stage(name: str, home: Path) -> list[str]:
    """Copy what the model's asset reads (tensor pointers, upstream outputs and versions) into `home`;
    returns the datasets its last real run trained on."""
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.paths import unified_home

    src = unified_home()  # the project's run root: read before UNIFIED_HOME points at `home`
    last = src / "assets" / f"{name}.json"
    if not last.exists():
        raise SystemExit(f"no {last}: run `make run` first (the bench reuses its tensors and upstream models)")
    datasets = sorted(json.loads(last.read_text())["data_versions"])
    for ds in datasets:
        (home / "assets" / ds).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "assets" / ds / "tensors.json", home / "assets" / ds / "tensors.json")
    for up in MODELS[name].upstream_models:
        shutil.copy(src / "assets" / f"{up}.json", home / "assets" / f"{up}.json")
        shutil.copytree(src / "registry" / up, home / "registry" / up)
    return datasets


def asset_run(name: str, home: Path, epochs: int) -> tuple[float, Recording]:
    from dagster import AssetKey, DagsterInstance, SourceAsset, materialize

    from unified_pipeline.assets.data_assets import tensors_key
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.assets.model_assets import model_asset
    from unified_pipeline.models.registry import MODELS

    entry = MODELS[name]
    datasets = _stage(name, home)
    advised = [m for m, e in MODELS.items() if name in e.advisors]
    sources = [SourceAsset(tensors_key(ds)) for ds in datasets] + [SourceAsset(AssetKey([m])) for m in entry.upstream_models]
    config = {"epochs": epochs, "early_stopping_patience": 0, "force_retrain": True, "hparams": HPARAMS.get(name, {})}
    before = os.environ.get("UNIFIED_HOME")
    os.environ["UNIFIED_HOME"] = str(home)
    try:
        with recording() as rec, DagsterInstance.ephemeral() as instance:
            t0 = time.perf_counter()
            result = materialize([model_asset(entry, datasets, advised=advised), *sources], instance=instance,
                                 resources={"io_manager": JsonIOManager(base_dir=str(home / "assets"))},
                                 run_config={"ops": {name: {"config": config}}})
            wall = time.perf_counter() - t0
    finally:
        if before is None:
            os.environ.pop("UNIFIED_HOME", None)
        else:
            os.environ["UNIFIED_HOME"] = before
    if not result.success:
        raise RuntimeError(f"{name}: asset run failed")
    return wall, rec


def asset_side(rec: Recording) -> tuple[float, float]:
    """(samples, seconds) of the step's training, as measured inside it."""
    pairs = [c.samples_and_time() for c in rec.finished()] + [(c.rows, c.seconds) for c in rec.solvers]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def plain_side(rec: Recording) -> tuple[float, float, float]:
    """(samples, training seconds, wall seconds) of the same work without the pipeline."""
    from unified_pipeline import devices

    torch.set_num_threads(devices.threads_per_step())  # what the step's device lease set
    samples = seconds = wall = 0.0
    for call in rec.finished():
        n, s, w = plain_fit(call)
        samples, seconds, wall = samples + n, seconds + s, wall + w
    for call in rec.solvers:
        s = plain_solve(call)
        samples, seconds, wall = samples + call.rows, seconds + s, wall + s
    return samples, seconds, wall


def median_interval(ratios: list[float], confidence: float = 0.9) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median pair ratio (seeded: the same pairs give the same
    interval). On a shared machine single pairs scatter by 10-20%; the interval says whether a
    median below the target is more than that scatter."""
    if len(ratios) < 3 or min(ratios) == max(ratios):
        return min(ratios), max(ratios)
    from scipy.stats import bootstrap

    res = bootstrap((ratios,), statistics.median, confidence_level=confidence, method="percentile",
                    vectorized=False, n_resamples=2000, random_state=0)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def measure(name: str, tmp: Path, repeats: int, epochs: int, run_s: float = 5.0, max_epochs: int = 60,
            min_train_s: float = MIN_TRAIN_S, max_repeats: int = MAX_PAIRS) -> dict:
    """One warm-up asset run (not counted: first use of the model's kernels in this process), then
    asset/plain pairs in alternating order until `repeats` pairs and `min_train_s` of measured
    training on the asset side. Models whose warm-up trained for less than `run_s` seconds train
    for more epochs (both sides alike), so that short timings do not dominate. The ratio is the
    median of the pairs' own ratios: the two runs of a pair see the same machine."""
    _, rec = asset_run(name, tmp / f"{name}-warm-up", epochs)
    trained_s = asset_side(rec)[1]
    if name not in HPARAMS and rec.finished() and 0 < trained_s < run_s:  # the controller sets its own epochs
        epochs = min(max_epochs, math.ceil(epochs * run_s / trained_s))
    asset, plain, steps, replays, asset_train_s = [], [], [], [], 0.0
    i = 0
    while i < repeats or (asset_train_s < min_train_s and i < max_repeats):
        for side in (("asset", "plain") if i % 2 == 0 else ("plain", "asset")):
            if side == "asset":
                wall, rec = asset_run(name, tmp / f"{name}-{i}", epochs)
                samples, seconds = asset_side(rec)
                asset.append(samples / seconds)
                asset_train_s += seconds
                steps.append(wall)
            else:
                samples, seconds, wall = plain_side(rec)
                plain.append(samples / seconds)
                replays.append(wall)
        print(f"{name} pair {i}: asset {asset[-1]:.1f} plain {plain[-1]:.1f} samples/s", flush=True)
        i += 1
    p, a = statistics.median(plain), statistics.median(asset)
    ratios = [x / y for x, y in zip(asset, plain)]
    low, high = median_interval(ratios)
    calls = rec.finished()
    return {
        "model": name, "device": calls[0].cfg.device if calls else "cpu",
        "runs_in_step": len(calls) + len(rec.solvers),
        "batch": ",".join(sorted({str(c.cfg.batch_size) for c in calls})) or "full data",
        "epochs": ",".join(sorted({str(len(c.summary.history)) for c in calls}, key=int)) or None, "pairs": i,
        "plain_samples_per_s": p, "asset_samples_per_s": a, "ratio": statistics.median(ratios),
        "ratio_90ci": f"{low:.3f}-{high:.3f}", "pair_ratios": f"{min(ratios):.3f}-{max(ratios):.3f}",
        "plain_s": statistics.median(replays), "asset_step_s": statistics.median(steps),
    }


def run(repeats: int = 5, epochs: int = 3, models: str = "") -> list[dict]:
    from unified_pipeline.models.registry import MODELS

    names = models.split(",") if models else list(MODELS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(measure(name, Path(tmp), repeats, epochs))
            print(json.dumps(rows[-1]), flush=True)
    save("overhead", rows, " ".join([
        "ratio = asset / plain samples/s (target >= 0.95): the median of the ratios of `pairs` asset/plain pairs",
        f"run in alternating order (at least {repeats}, up to {MAX_PAIRS} until the asset side has trained for",
        f"{MIN_TRAIN_S:.0f} s), after",
        "one uncounted warm-up run; ratio_90ci: 90% percentile-bootstrap interval",
        "of that median; pair_ratios: the lowest and highest pair. samples/s columns: medians.",
        f"Epochs per training run: {epochs}, or more where that trains for under 5 s; early stopping off.",
        "runs_in_step: the training runs (or NOTEARS solves) the step makes,",
        "all replayed; for causal_reasoning_engine samples/s is rows per second of solver time. The controller's",
        f"study is shrunk to {HPARAMS['adaptive_learning_controller']}. plain_s / asset_step_s: the whole replay",
        "against the whole asset step (Dagster, loading, evaluation, plots, registry).",
    ]))
    return rows


if __name__ == "__main__":
    args = sys.argv[1:]
    run(*(int(a) for a in args[:2]), *args[2:3])
