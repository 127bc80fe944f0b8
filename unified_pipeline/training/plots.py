"""Training plots as PNG files (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

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
