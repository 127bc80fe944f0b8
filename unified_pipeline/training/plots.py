"""Training plots as PNG files (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from unified_pipeline import atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "loss") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    epochs = [r["epoch"] for r in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax.plot(epochs, [r.get(key, float("nan")) for r in history], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def metric_curve(history: Sequence[dict[str, Any]], metric: str, path: Path, best_epoch: int | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r.get(f"val_{metric}", float("nan")) for r in history], marker="o", ms=3, label=f"val {metric}")
    if best_epoch:
        ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "test confusion matrix") -> Path:
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix, dtype=float)
    k = len(classes)
    side = min(12.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 30:
        ax.set_xticks(range(k), [str(c) for c in classes], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), [str(c) for c in classes], fontsize=8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, Path(path))


# Keys of a history record that are the x axis or bookkeeping rather than a curve worth drawing.
X_KEYS = ("epoch", "trial", "step")
GROUP_KEYS = ("dataset", "model")  # one line per environment / dataset / advised model, never joined
_NOT_CURVES = {"time_s", "elapsed_s", "samples_per_s", "lr", "epochs"}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def history_groups(history: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    """History records by the dataset, environment or advised model they belong to (one plot line each)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in history:
        if isinstance(rec, dict):
            group = next((str(rec[k]) for k in GROUP_KEYS if isinstance(rec.get(k), str)), "")
            out.setdefault(group, []).append(rec)
    return out


def _x(records: list[dict[str, Any]]) -> tuple[str, list[float]]:
    for key in X_KEYS:
        if all(_number(r.get(key)) for r in records):
            return key, [r[key] for r in records]
    return "record", list(range(1, len(records) + 1))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "curve"


def _lines_plot(groups: dict[str, list[dict[str, Any]]], keys: Sequence[tuple[str, str]], path: Path,
                title: str, ylabel: str) -> Path | None:
    """One line per (group, key) with at least one finite number; None when there is nothing to draw."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    drawn, xlabel = 0, "epoch"
    for group, records in groups.items():
        for key, label in keys:
            rows = [r for r in records if _number(r.get(key))]
            if not rows:
                continue
            xlabel, xs = _x(rows)
            ax.plot(xs, [r[key] for r in rows], marker="o", ms=3,
                    label=" ".join(p for p in (group, label) if p) or key)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def history_plots(history: Sequence[Any], folder: Path, name: str) -> list[Path]:
    """Every curve a history holds, whatever the model wrote: losses, each validation metric, and
    for histories without losses (NOTEARS iterations, controller trials) every numeric series.
    Records of different datasets, environments or advised models are separate lines."""
    groups = history_groups(history)
    if not groups:
        return []
    keys = {k for recs in groups.values() for r in recs for k, v in r.items() if _number(v)}
    written = []
    losses = [(k, label) for k, label in (("train_loss", "train"), ("val_loss", "validation")) if k in keys]
    if losses:
        written.append(_lines_plot(groups, losses, folder / "loss.png", f"{name} loss", "loss"))
    metrics = sorted(k for k in keys if k.startswith("val_") and k != "val_loss")
    for key in metrics:
        written.append(_lines_plot(groups, [(key, "")], folder / f"{key}.png", f"{name} validation {key[4:]}", key[4:]))
    if not losses and not metrics:
        for key in sorted(keys - set(X_KEYS) - _NOT_CURVES):
            written.append(_lines_plot(groups, [(key, "")], folder / f"{_slug(key)}.png", f"{name} {key}", key))
    return [p for p in written if p is not None]
