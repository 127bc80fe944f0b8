"""What the trainer and a plain replay of its training (bench/replay.py) must do alike (the
learning-rate schedule, optimiser, precision and seeding), and the process-wide settings of a fit,
which the plain replay leaves at PyTorch's defaults on purpose."""
from __future__ import annotations

import contextlib
import gc
import math
import random
from typing import Callable, Iterator

import torch

from unified_pipeline.training.trainer_config import TrainerConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate used for optimiser step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is bf16 autocast on CUDA and fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def make_optimizer(params: list, cfg: TrainerConfig, factory: Callable | None = None) -> torch.optim.Optimizer:
    if factory is not None:
        return factory(params, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def allow_tf32() -> str:
    """TF32 tensor cores for fp32 matmuls and convolutions on CUDA (about 10 bits of mantissa,
    the precision bf16 autocast already trades away, at several times fp32's speed); returns
    the previous matmul precision for `torch.set_float32_matmul_precision`."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return previous


@contextlib.contextmanager
def fit_process_settings(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU (a resumed run ends with bit-identical weights), TF32 for fp32
    work on CUDA, and objects older than the fit left out of garbage collections; the previous
    settings come back after."""
    matmul = allow_tf32() if device.type == "cuda" else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every new tensor with NaN only helps find kernels that read memory they did
        # not write; it cost up to 10% of samples/s on the small models and changes no result.
        torch.utils.deterministic.fill_uninitialized_memory = False
    # A full collection walks every object in the process (half a million once Dagster is
    # loaded, about 0.25 s), and one can land in any training epoch.
    froze = gc.get_freeze_count() == 0 and gc.isenabled()
    if froze:
        gc.freeze()
    try:
        yield
    finally:
        if froze:
            gc.unfreeze()
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
