"""Record the training a model step does, and replay it in a plain PyTorch loop.

`recording()` wraps `Trainer.fit` and the NOTEARS solvers for the length of a block. Each
trainer call keeps a copy of the module as it was before training, the model file's loss and
metric functions, the trainer settings, the splits and the trainer's own summary; each solver
call keeps its arguments and its time. `plain_fit` and `plain_solve` do the same work again
without the pipeline: same module, tensors, batch size, optimizer, precision and epochs.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from unified_pipeline.models import causal_reasoning
from unified_pipeline.training.fit_settings import autocast, make_optimizer, resolve_precision
from unified_pipeline.training.trainer import Trainer, TrainSummary
from unified_pipeline.training.trainer_config import TrainerConfig

SOLVERS = ("notears_linear", "notears_mlp")


@dataclass
class TrainerCall:
    initial: torch.nn.Module  # deep copy taken before training
    loss_fn: Callable
    metric_fn: Callable
    cfg: TrainerConfig
    train: tuple[torch.Tensor, ...]
    val: tuple[torch.Tensor, ...]
    optimizer_factory: Callable | None
    summary: TrainSummary | None = None  # None: the call did not finish (a pruned trial)

    def samples_and_time(self) -> tuple[float, float]:
        """Training samples and seconds as the trainer measured them (evaluation excluded)."""
        recs = self.summary.history if self.summary else []
        return sum(r["samples_per_s"] * r["time_s"] for r in recs), sum(r["time_s"] for r in recs)


@dataclass
class SolverCall:
    solver: str
    args: tuple
    kwargs: dict[str, Any]
    rows: int
    seconds: float = float("nan")


@dataclass
class Recording:
    trainers: list[TrainerCall] = field(default_factory=list)
    solvers: list[SolverCall] = field(default_factory=list)

    def finished(self) -> list[TrainerCall]:
        return [c for c in self.trainers if c.summary is not None]


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    rec = Recording()
    real_fit = Trainer.fit
    real_solvers = {name: getattr(causal_reasoning, name) for name in SOLVERS}

    def fit(self: Trainer, train, val):
        call = TrainerCall(copy.deepcopy(self.model), self.loss_fn, self.metric_fn, self.cfg, train, val,
                           self.optimizer_factory)
        rec.trainers.append(call)
        call.summary = real_fit(self, train, val)
        return call.summary

    def solver(name: str):
        def wrapped(x, *args, **kwargs):
            call = SolverCall(name, (x, *args), kwargs, rows=int(x.shape[0]))
            t0 = time.perf_counter()
            out = real_solvers[name](x, *args, **kwargs)
            call.seconds = time.perf_counter() - t0
            rec.solvers.append(call)
            return out
        return wrapped

    Trainer.fit = fit
    for name in SOLVERS:
        setattr(causal_reasoning, name, solver(name))
    try:
        yield rec
    finally:
        Trainer.fit = real_fit
        for name, fn in real_solvers.items():
            setattr(causal_reasoning, name, fn)


def plain_fit(call: TrainerCall) -> tuple[float, float, float]:
    """(training samples, training seconds, wall seconds) of the recorded run redone in a plain loop
    for as many epochs as the trainer ran, evaluating the validation split once per epoch as it does."""
    cfg, device = call.cfg, torch.device(call.cfg.device)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(call.initial).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, call.optimizer_factory)
    precision = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    train = tuple(t.to(device) for t in call.train)
    val = tuple(t.to(device) for t in call.val)
    n, bs = len(train[0]), min(cfg.batch_size, len(train[0]))
    seen, train_s = 0, 0.0
    for _ in range(len(call.summary.history)):
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(n, device=device).split(bs):
            if len(idx) < 2:  # the trainer leaves a lone trailing sample out (BatchNorm)
                continue
            with autocast(device, precision):
                loss = call.loss_fn(model, tuple(t[idx] for t in train))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            seen += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s += time.perf_counter() - t0
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            call.metric_fn(model, val)
    return seen, train_s, time.perf_counter() - started


def plain_solve(call: SolverCall) -> float:
    """Seconds of the recorded solver call made directly, without its progress callback."""
    from unified_pipeline.models import notears

    args = tuple(None if callable(a) and not isinstance(a, torch.nn.Module) else a for a in call.args)
    kwargs = {k: (None if callable(v) else v) for k, v in call.kwargs.items()}
    t0 = time.perf_counter()
    getattr(notears, call.solver)(*args, **kwargs)
    return time.perf_counter() - t0
