"""The shared fit path model files call: train with the Trainer, evaluate, save, plot, report.

`fit_classifier` covers every classifier (model(*inputs) -> logits); `fit_with_trainer` is the
same path for other objectives (regression, autoencoders) with their own loss and metric.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from unified_pipeline.models.base import BaseModel
from unified_pipeline.training import plots
from unified_pipeline.training.job import FitJob, FitResult
from unified_pipeline.training.trainer import Trainer, TrainerConfig, TrainSummary

EVAL_BATCH = 512


@torch.no_grad()
def batched_logits(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """model(*inputs) over a whole split in chunks, on the model's device; float32 logits on CPU."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(inputs[0]), batch_size):
        out.append(model(*(t[i:i + batch_size].to(device) for t in inputs)).float().cpu())
    return torch.cat(out)


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
    y = y.cpu().long()
    k = num_classes or logits.shape[-1]
    pred = logits.argmax(dim=-1)
    cm = confusion(pred, y, k)
    tp = cm.diag().float()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = (cm.sum(1) + cm.sum(0)) > 0  # classes absent from both truth and prediction do not count
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float((pred == y).float().mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }


def confusion(pred: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """k x k counts, rows = true class, columns = predicted class."""
    return torch.bincount(y.cpu().long() * k + pred.cpu().long(), minlength=k * k).reshape(k, k)


def cross_entropy_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    *inputs, y = batch
    return F.cross_entropy(model(*inputs).float(), y)


@torch.no_grad()
def classification_metric_fn(model: torch.nn.Module, split: tuple[torch.Tensor, ...]) -> dict[str, float]:
    *inputs, y = split
    return classification_metrics(batched_logits(model, tuple(inputs)), y)


def fit_classifier(
    job: FitJob,
    model: BaseModel,
    data: dict[str, tuple[tuple[torch.Tensor, ...], torch.Tensor]],
    *,
    classes: list[str],
    extra: dict | None = None,
    baseline: dict[str, float] | None = None,
    baseline_name: str | None = None,
    calibrate: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], dict] | None = None,
) -> FitResult:
    """Train a classifier on data[split] = (inputs, y) and leave weights, metrics and plots in job.out_dir.

    calibrate(model, val) may set what is chosen after training on the validation split (never
    test), before val and test are scored; what it returns goes to the notes."""
    split = {s: (*data[s][0], data[s][1]) for s in ("train", "val", "test")}
    warm = None
    if getattr(job, "warm_start", None) is not None:
        from unified_pipeline.training.warm_start import apply_warm_start

        # Only the train rows and the schedule change; val/test stay whole so metrics compare.
        job, split["train"], warm = apply_warm_start(job, model, split["train"])

    def plots_fn(plot_dir: Path, trainer: Trainer) -> dict[str, Path]:
        *inputs, y = split["test"]
        trainer.model.eval()
        with torch.no_grad(), trainer.autocast():
            pred = batched_logits(trainer.net, tuple(inputs)).argmax(-1)
        cm = confusion(pred, y, len(classes))
        return {"confusion matrix (test)": plots.confusion_matrix(cm.tolist(), classes, plot_dir / "confusion_matrix.png")}

    result = fit_with_trainer(
        job, model, split["train"], split["val"], split["test"],
        loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn, metric="accuracy",
        higher_is_better=True, extra={"classes": list(classes), **(extra or {})}, plots_fn=plots_fn,
        baseline=baseline, baseline_name=baseline_name, calibrate=calibrate,
    )
    if warm is not None:
        result.notes["warm_start"] = warm
    return result


def fit_with_trainer(
    job: FitJob,
    model: BaseModel,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    test: tuple[torch.Tensor, ...],
    loss_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    metric_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], dict[str, float]],
    metric: str,
    higher_is_better: bool,
    extra: dict | None = None,
    plots_fn: Callable[[Path, Trainer], dict[str, Path]] | None = None,
    *,
    baseline: dict[str, float] | None = None,
    baseline_name: str | None = None,
    optimizer_factory: Callable | None = None,
    calibrate: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], dict] | None = None,
) -> FitResult:
    """Train, restore the best weights, evaluate val/test, save model + metrics + history + plots.

    plots_fn(plot_dir, trainer) may add model-specific plots; it returns {title: png path}.
    """
    cfg = TrainerConfig.from_hparams(job.hparams, device=job.device, seed=job.seed, metric=metric,
                                     higher_is_better=higher_is_better)
    trainer = Trainer(model, cfg, loss_fn=loss_fn, metric_fn=metric_fn, checkpoint_dir=job.checkpoint_dir,
                      log=job.log, on_epoch=job.on_epoch, control_file=job.control_file,
                      optimizer_factory=optimizer_factory)
    summary = trainer.fit(train, val)
    calibrated = calibrate(model, val) if calibrate is not None else None
    metrics = {"val": trainer.evaluate(val), "test": trainer.evaluate(test), "baseline": dict(baseline or {})}
    out = Path(job.out_dir)
    model.save(out, extra=extra or {})
    plot_dir = out / "plots"
    found = standard_plots(summary, metric, plot_dir)
    if plots_fn is not None:
        found.update(plots_fn(plot_dir, trainer))
    notes: dict[str, Any] = {"best_epoch": summary.best_epoch, f"best_val_{metric}": summary.best_metric,
                             "stopped_early": summary.stopped_early}
    if baseline_name:
        notes["baseline_name"] = baseline_name
    if summary.notes:
        notes["trainer_notes"] = summary.notes
    if calibrated:
        notes["calibrated_on_val"] = calibrated
    job.log.info(
        f"{job.model}: test {metric} {metrics['test'].get(metric, float('nan')):.4f} "
        f"(val {metrics['val'].get(metric, float('nan')):.4f}, best epoch {summary.best_epoch}, "
        f"{summary.samples_per_s:.0f} samples/s on {summary.device})"
    )
    return FitResult(
        metrics=metrics, history=summary.history, param_count=model.num_parameters(),
        epochs_run=summary.epochs_run, samples_per_s=summary.samples_per_s, wall_time_s=summary.wall_time_s,
        device=summary.device, resumed_from=summary.resumed_from, plots=found, notes=notes,
    )


def standard_plots(summary: TrainSummary, metric: str, plot_dir: Path) -> dict[str, Path]:
    if not summary.history:
        return {}
    return {
        "loss curves": plots.loss_curves(summary.history, plot_dir / "loss.png"),
        f"validation {metric}": plots.metric_curve(summary.history, metric, plot_dir / f"val_{metric}.png",
                                                   best_epoch=summary.best_epoch),
    }
