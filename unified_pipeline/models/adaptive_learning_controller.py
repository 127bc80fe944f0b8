"""adaptive_learning_controller: picks a learning strategy per service model with an Optuna study.

For each controlled model (vision_service, audio_service, text_service) a seeded TPE study
searches the strategy space {learning-rate multiplier of the preset rate, batch size,
early-stopping patience} under a fixed epoch budget. Every trial is a real short training
run with the shared Trainer on (a seeded subsample of) the model's train split; each epoch's
validation metric is reported to a MedianPruner, so hopeless strategies stop early. The study
is warm-started from the performance records of every model's training history in the model
registry: each registered version's history.json (per-epoch val metric) plus its lineage
hparams becomes a candidate strategy (`enqueue_trial`), best-learning records first, the
controlled model's own records before those of other models. The preset itself is enqueued
too, so the study always measures it.

The claim is checked inside fit(): the preset and the chosen strategy are both retrained with
`check_seeds` seeds the study never saw, at the same epoch budget, and their mean validation
(and test) metrics are reported side by side, with each seed's value. One seed decides too
little: on a validation split of a few hundred samples, seeds alone move accuracy by more than
most strategies do. Headline metric: metrics["test"]["wins_fraction"], the
fraction of controlled models whose validation metric the chosen strategy improved.

Artefact (job.out_dir): strategy.json; the result's history has one record per trial.
There are no weights; param_count is 0.

strategy.json schema (version 1):

    {"schema": 1, "budget_epochs": int, "train_subsample": int, "study_seed": int, "check_seeds": [int],
     "models": {"<model>": {
        "strategy": "current" | "exploration" | "conservative",
        "learning_rate": float,            # absolute: preset learning_rate * lr_multiplier
        "lr_multiplier": float,
        "batch_size": int,
        "early_stopping_patience": int,    # 0 = no early stopping
        "epochs": int,                     # = budget_epochs
        "preset": {"learning_rate": float, "batch_size": int, "early_stopping_patience": int},
        "metric": str,                     # the model's validation metric, higher is better
        "val": {"preset": float, "controller": float},        # mean over the check seeds
        "test": {"preset": float, "controller": float},
        "val_per_seed": {"preset": [float], "controller": [float]},
        "epochs_run": {"preset": int, "controller": int},     # most epochs run by one check run
        "study": {"trials": int, "complete": int, "pruned": int, "epochs_spent": int,
                  "best_value": float, "best_trial": int,
                  "warm_start": [{"source": "<model>/v<N>", "lr_multiplier": float, "batch_size": int,
                                  "early_stopping_patience": int, "early_mean_val": float}]}}}}

Consumers: the controlled models list this model as an advisor (models/registry.py) and apply
their entry through training/strategy.py: learning-rate multiplier on their own preset rate,
batch size and patience. The preset each lane starts from is that model's own resolved preset
(hparams["advised_presets"][model], passed by the pipeline).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.inputs import split_tensors
from unified_pipeline.models.registry import CONTROLLER, MODELS
from unified_pipeline.models.spec import ModelSpec
from unified_pipeline.training.job import FitJob, FitResult

# Training settings of the preset that the controlled models share with this step.
PRESET_KEYS = ("learning_rate", "batch_size", "weight_decay", "warmup_epochs", "grad_clip", "optimizer",
               "early_stopping_patience", "precision")


@dataclass
class ControllerSettings:
    budget_epochs: int = 6  # epochs per training run: every trial, the preset and the chosen strategy
    study_epochs: int = 30  # total epochs one model's study may spend (pruned trials spend fewer)
    max_train_samples: int = 768  # seeded subsample of each train split, to fit the study on a CPU
    max_val_samples: int = 600  # subsample the study validates on; the final check uses the whole split
    lr_multiplier_min: float = 0.25
    lr_multiplier_max: float = 4.0
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    patience_choices: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    warm_start_trials: int = 2  # history records tried first; the rest of the budget explores
    check_seeds: int = 2  # unseen seeds the preset and the chosen strategy are both retrained with


def controlled() -> dict[str, str]:
    """Model -> the dataset kind it reads, for every model that lists this one as its advisor."""
    return {name: e.dataset_kinds[0] for name, e in MODELS.items() if CONTROLLER in e.advisors}


class _Pruned(BaseException):
    # The Trainer swallows ordinary exceptions from on_epoch callbacks (a broken monitor must not
    # kill a run); pruning has to stop the run, so it travels as a BaseException.
    pass


def _log_quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _subsample(t: tuple[torch.Tensor, ...], n: int, seed: int) -> tuple[torch.Tensor, ...]:
    if n <= 0 or len(t[0]) <= n:
        return t
    idx = torch.randperm(len(t[0]), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return tuple(x[idx] for x in t)


class _Lane:
    """One controlled model: its data, builder and preset, and a way to train one strategy."""

    def __init__(self, name: str, bundle, job: FitJob, hp: dict[str, Any]):
        self.name, self.job, self.hp = name, job, hp
        entry = MODELS[name]
        self.metric = entry.metric
        self.spec = entry.spec()
        self.meta = bundle.meta
        parts = {}
        for s in ("train", "val", "test"):
            inputs, y = split_tensors(bundle, s, self.spec.inputs)
            parts[s] = (*inputs, y)
        self.train = _subsample(parts["train"], int(hp["max_train_samples"]), job.seed)
        self.val, self.test = parts["val"], parts["test"]
        self.study_val = _subsample(parts["val"], int(hp["max_val_samples"]), job.seed)
        # Each model's own resolved preset when the pipeline passes it (model_specific_presets
        # differ per model), else this step's shared training settings.
        own = (job.hparams.get("advised_presets") or {}).get(name) or job.hparams
        self.preset = {**self.spec.defaults(), **{k: own[k] for k in PRESET_KEYS if k in own}}
        self.preset["epochs"] = int(hp["budget_epochs"])

    def build(self, hp: dict[str, Any]):
        return self.spec.build(self.meta, hp)

    def hparams(self, strategy: dict[str, Any]) -> dict[str, Any]:
        return {**self.preset, "learning_rate": self.preset["learning_rate"] * strategy["lr_multiplier"],
                "batch_size": int(strategy["batch_size"]),
                "early_stopping_patience": int(strategy["early_stopping_patience"])}

    def run(self, hp: dict[str, Any], seed: int, val, on_epoch=None):
        """Train from scratch with `hp`; returns (trainer, summary) with the best weights restored."""
        from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
        from unified_pipeline.training.trainer import Trainer, TrainerConfig

        torch.manual_seed(seed)
        model = self.build(hp)
        cfg = TrainerConfig.from_hparams(hp, device=self.job.device, seed=seed, metric=self.metric,
                                         checkpoint_interval=0)
        trainer = Trainer(model, cfg, loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn,
                          checkpoint_dir=None, log=_Silent(), on_epoch=on_epoch)
        return trainer, trainer.fit(self.train, val)


class _Silent:
    def info(self, *a, **k): pass
    def warning(self, *a, **k): pass


# ---------------------------------------------------------------- history records -> warm start

def _improvement_wait(values: list[float]) -> int:
    """Longest run of epochs without a new best that was followed by a new best."""
    best, wait, longest = -math.inf, 0, 0
    for v in values:
        if v > best:
            longest, best, wait = max(longest, wait), v, 0
        else:
            wait += 1
    return longest


def history_records(target: str, preset_lr: float, hp: dict[str, Any], log) -> list[dict[str, Any]]:
    """Candidate strategies from every registered version's history.json and lineage hparams."""
    from unified_pipeline.registry import ModelRegistry

    registry = ModelRegistry()
    out = []
    for model in registry.models():
        entry = MODELS.get(model)
        if entry is None or not entry.higher_is_better:
            continue
        try:
            versions = registry.list(model)
        except Exception as exc:  # one unreadable model must not stop the controller
            log.warning(f"adaptive_learning_controller: skipping {model} history ({exc})")
            continue
        for v in versions:
            path = Path(v.path) / "history.json"
            try:
                history = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            key = f"val_{entry.metric}"
            values = [float(r[key]) for r in history if isinstance(r, dict) and key in r]
            lineage = v.lineage.get("hparams") or {}
            lr, bs = lineage.get("learning_rate"), lineage.get("batch_size")
            if not values or lr is None or bs is None:
                continue
            wait = _improvement_wait(values)
            patience = next((p for p in sorted(c for c in hp["patience_choices"] if c > 0) if p > wait), 0)
            mult = min(max(float(lr) / preset_lr, hp["lr_multiplier_min"]), hp["lr_multiplier_max"])
            out.append({
                "source": v.name, "own": model == target,
                "lr_multiplier": round(mult, 6),
                "batch_size": min(hp["batch_sizes"], key=lambda b: abs(b - int(bs))),
                "early_stopping_patience": patience,
                # Learning speed over the budget: what a short run cares about.
                "early_mean_val": sum(values[: int(hp["budget_epochs"])]) / len(values[: int(hp["budget_epochs"])]),
            })
    out.sort(key=lambda r: (not r["own"], -r["early_mean_val"]))
    return out


# ---------------------------------------------------------------- the study

def _label(mult: float, bs: int, preset_bs: int) -> str:
    if mult > 1.25 or (mult >= 0.8 and bs < preset_bs):
        return "exploration"
    if mult < 0.8 or bs > preset_bs:
        return "conservative"
    return "current"


def study_model(lane: _Lane, hp: dict[str, Any], log) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    import optuna

    seed = lane.job.seed
    batch_sizes = sorted(set(int(b) for b in hp["batch_sizes"]) | {int(lane.preset["batch_size"])})
    patience = sorted(set(int(p) for p in hp["patience_choices"]))
    hp = {**hp, "batch_sizes": batch_sizes, "patience_choices": patience}
    study = optuna.create_study(
        direction="maximize", study_name=lane.name,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
        # No pruning in the first half of the budget: a faster-learning strategy often starts
        # behind (warm-up, smaller batches) and would be cut before it overtakes.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, int(hp["budget_epochs"]) // 2)),
    )
    preset_patience = int(lane.preset.get("early_stopping_patience", 0))
    study.enqueue_trial({"lr_multiplier": 1.0, "batch_size": int(lane.preset["batch_size"]),
                         "early_stopping_patience": preset_patience if preset_patience in patience else 0})
    records = history_records(lane.name, float(lane.preset["learning_rate"]), hp, log)
    # A record that repeats the preset's rate and batch (patience aside) would spend the budget on
    # a trial the study already has.
    warm, seen = [], {(1.0, int(lane.preset["batch_size"]))}
    for r in records:
        key = (r["lr_multiplier"], r["batch_size"])
        if key in seen or len(warm) >= int(hp["warm_start_trials"]):
            continue
        seen.add(key)
        warm.append({k: r[k] for k in ("source", "lr_multiplier", "batch_size", "early_stopping_patience", "early_mean_val")})
        study.enqueue_trial({"lr_multiplier": r["lr_multiplier"], "batch_size": r["batch_size"],
                             "early_stopping_patience": r["early_stopping_patience"]})
    spent = {"epochs": 0}
    trials: list[dict] = []

    def objective(trial: "optuna.Trial") -> float:
        strategy = {
            "lr_multiplier": trial.suggest_float("lr_multiplier", hp["lr_multiplier_min"], hp["lr_multiplier_max"], log=True),
            "batch_size": trial.suggest_categorical("batch_size", batch_sizes),
            "early_stopping_patience": trial.suggest_categorical("early_stopping_patience", patience),
        }

        def report(record: dict) -> None:
            spent["epochs"] += 1
            trial.report(float(record[f"val_{lane.metric}"]), int(record["epoch"]))
            if trial.should_prune():
                raise _Pruned()

        try:
            _, summary = lane.run(lane.hparams(strategy), seed, lane.study_val, on_epoch=report)
        except _Pruned:
            raise optuna.TrialPruned() from None
        return float(summary.best_metric)

    t0 = time.perf_counter()
    while spent["epochs"] < int(hp["study_epochs"]):
        before = spent["epochs"]

        def record(_study, t, before=before) -> None:
            trials.append({"model": lane.name, "trial": t.number, "state": t.state.name, "value": t.value,
                           "epochs": spent["epochs"] - before, **t.params})

        study.optimize(objective, n_trials=1, callbacks=[record])
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise ConfigError(f"adaptive_learning_controller: no completed trial for {lane.name}; raise study_epochs")
    best = study.best_trial
    summary = {
        "trials": len(study.trials), "complete": sum(t.state.name == "COMPLETE" for t in study.trials),
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials), "epochs_spent": spent["epochs"],
        "best_value": float(best.value), "best_trial": best.number, "warm_start": warm,
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    return dict(best.params), summary, trials


def check(lane: _Lane, strategy: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Preset and chosen strategy retrained with unseen seeds at the same budget; mean val and test."""
    chosen = lane.hparams(strategy)
    same = all(chosen[k] == lane.preset.get(k) for k in ("learning_rate", "batch_size", "early_stopping_patience"))
    out: dict[str, Any] = {}
    for who, hp in (("preset", lane.preset), ("controller", chosen)):
        if who == "controller" and same:  # the study kept the preset: same runs, same numbers (deterministic)
            out[who] = out["preset"]
            continue
        runs = []
        for seed in seeds:
            trainer, summary = lane.run(hp, seed, lane.val)
            runs.append((trainer.evaluate(lane.val)[lane.metric], trainer.evaluate(lane.test)[lane.metric],
                         summary.epochs_run))
        out[who] = {"val": sum(r[0] for r in runs) / len(runs), "test": sum(r[1] for r in runs) / len(runs),
                    "val_per_seed": [r[0] for r in runs], "epochs_run": max(r[2] for r in runs)}
    return out


def fit(job: FitJob) -> FitResult:
    _log_quiet()
    started = time.perf_counter()
    hp = SPEC.resolve({k: v for k, v in job.hparams.items() if k in SPEC.setting_names()})
    if int(hp["budget_epochs"]) < 1 or int(hp["study_epochs"]) < int(hp["budget_epochs"]):
        raise ConfigError(f"adaptive_learning_controller: need budget_epochs >= 1 and study_epochs >= budget_epochs, "
                          f"got {hp['budget_epochs']!r} and {hp['study_epochs']!r}")
    by_kind: dict[str, list] = {}
    for bundle in job.datasets.values():
        by_kind.setdefault(bundle.meta.get("kind"), []).append(bundle)
    lanes = []
    for name, kind in controlled().items():
        found = by_kind.get(kind, [])
        if len(found) > 1:
            raise DatasetError(f"adaptive_learning_controller: {len(found)} {kind} datasets given; {name} needs one")
        if found:
            lanes.append(_Lane(name, found[0], job, hp))
    if not lanes:
        raise DatasetError(f"adaptive_learning_controller: no vision, audio or text dataset among {sorted(job.datasets)}")

    if int(hp["check_seeds"]) < 1:
        raise ConfigError(f"adaptive_learning_controller: check_seeds must be >= 1, got {hp['check_seeds']!r}")
    check_seeds = [job.seed + 1 + i for i in range(int(hp["check_seeds"]))]
    models, history, wins, gains, test_wins, test_gains = {}, [], [], [], [], []
    val_side, test_side = {}, {}
    for lane in lanes:
        params, summary, trials = study_model(lane, hp, job.log)
        history += trials
        result = check(lane, params, check_seeds)
        pre, ctl = result["preset"], result["controller"]
        chosen = lane.hparams(params)
        models[lane.name] = {
            "strategy": _label(params["lr_multiplier"], params["batch_size"], int(lane.preset["batch_size"])),
            "learning_rate": chosen["learning_rate"], "lr_multiplier": params["lr_multiplier"],
            "batch_size": chosen["batch_size"], "early_stopping_patience": chosen["early_stopping_patience"],
            "epochs": int(hp["budget_epochs"]),
            "preset": {k: lane.preset[k] for k in ("learning_rate", "batch_size", "early_stopping_patience")},
            "metric": lane.metric,
            "val": {"preset": pre["val"], "controller": ctl["val"]},
            "test": {"preset": pre["test"], "controller": ctl["test"]},
            "val_per_seed": {"preset": pre["val_per_seed"], "controller": ctl["val_per_seed"]},
            "epochs_run": {"preset": pre["epochs_run"], "controller": ctl["epochs_run"]},
            "study": summary,
        }
        wins.append(ctl["val"] > pre["val"])
        gains.append(ctl["val"] - pre["val"])
        test_wins.append(ctl["test"] > pre["test"])
        test_gains.append(ctl["test"] - pre["test"])
        val_side.update({f"{lane.name}.preset": pre["val"], f"{lane.name}.controller": ctl["val"]})
        test_side.update({f"{lane.name}.preset": pre["test"], f"{lane.name}.controller": ctl["test"]})
        job.log.info(f"adaptive_learning_controller: {lane.name} {models[lane.name]['strategy']} strategy, "
                     f"val {lane.metric} preset {pre['val']:.4f} -> controller {ctl['val']:.4f}")

    n = len(lanes)
    metrics = {
        "test": {"wins_fraction": sum(wins) / n, "mean_improvement": sum(gains) / n,
                 "test_split_wins_fraction": sum(test_wins) / n, "test_split_mean_improvement": sum(test_gains) / n,
                 "models": float(n)},
        "val": val_side,
        "test_split": test_side,
        "baseline": {"wins_fraction": 0.0, "mean_improvement": 0.0},
    }
    strategy = {"schema": 1, "budget_epochs": int(hp["budget_epochs"]), "train_subsample": int(hp["max_train_samples"]),
                "study_seed": job.seed, "check_seeds": check_seeds, "models": models}
    out = Path(job.out_dir)
    atomic.write_json(out / "strategy.json", strategy)
    wall = time.perf_counter() - started
    return FitResult(
        metrics=metrics, history=history, param_count=0, epochs_run=sum(m["study"]["epochs_spent"] for m in models.values()),
        samples_per_s=0.0, wall_time_s=wall, device=job.device,
        notes={"baseline_name": "fixed preset at the same epoch budget",
               "strategies": {m: v["strategy"] for m, v in models.items()}},
    )


SPEC = ModelSpec(settings=ControllerSettings, fit=fit)
