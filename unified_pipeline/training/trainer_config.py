"""Settings of the training loop, read from resolved hyperparameters with clear errors."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from unified_pipeline.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adam", "sgd")  # built by fit_settings.make_optimizer
# Preset spellings that differ from the field names.
ALIASES = {"lr": "learning_rate", "keep_last_checkpoints": "keep_last", "patience": "early_stopping_patience"}


def canonical(hparams: dict[str, Any]) -> dict[str, Any]:
    """The preset's spellings as field names: an alias yields to the field name when both are given,
    `mixed_precision` becomes `precision`, and `early_stopping: false` turns the patience off."""
    out = {ALIASES.get(k, k): v for k, v in hparams.items() if not (k in ALIASES and ALIASES[k] in hparams)}
    if "mixed_precision" in out and "precision" not in out:
        out["precision"] = "auto" if as_flag(out["mixed_precision"]) else "fp32"
    if "early_stopping" in out and not as_flag(out["early_stopping"]):
        out["early_stopping_patience"] = 0
    return out


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # 0 = off
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or "bf16" / "fp16" / "fp32"
    compile: bool = False
    early_stopping_patience: int = 0  # 0 = off; epochs without val-metric improvement
    checkpoint_interval: int = 5  # 0 = only on a new best and at the end
    keep_last: int = 2  # plus the best
    seed: int = 0
    device: str = "cpu"
    metric: str = "accuracy"
    higher_is_better: bool = True
    loader_threshold_bytes: int = 512 * 2**20  # bigger datasets stream through a pinned DataLoader
    optimizer: str = "adamw"  # one of OPTIMIZERS

    @classmethod
    def from_hparams(cls, hparams: dict, **overrides) -> "TrainerConfig":
        """Pick the known keys out of resolved hyperparameters (unknown keys are ignored)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        merged = {**canonical(hparams or {}), **overrides}
        values = {k: _coerce(k, fields[k].type, v) for k, v in merged.items() if k in fields}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
            ("learning_rate", self.learning_rate > 0), ("weight_decay", self.weight_decay >= 0),
            ("warmup_epochs", self.warmup_epochs >= 0), ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1),
            ("grad_clip", self.grad_clip >= 0), ("precision", self.precision in PRECISIONS),
            ("early_stopping_patience", self.early_stopping_patience >= 0),
            ("checkpoint_interval", self.checkpoint_interval >= 0), ("keep_last", self.keep_last >= 1),
            ("optimizer", self.optimizer in OPTIMIZERS),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"trainer setting {name!r} has invalid value {getattr(self, name)!r}")


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(type_name))
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return kind(value) if kind else value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trainer setting {name!r}: cannot use {value!r} ({exc})") from exc


def as_flag(value: Any) -> bool:
    """A preset or run-config switch: a bool, or a string such as "true", "yes", "on", "1"."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
