"""Trains a tiny classifier with a checkpoint every epoch; run as a script by the kill/resume tests.

usage: _train_worker.py CKPT_DIR OUT_FILE [EPOCHS] [EPOCH_SLEEP_S] [STEP_SLEEP_S]
Exit code 75 when stopped by SIGINT/SIGTERM after writing a checkpoint.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_pipeline import atomic  # noqa: E402
from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss  # noqa: E402
from unified_pipeline.training.trainer import Trainer, TrainerConfig, TrainingInterrupted  # noqa: E402

INTERRUPTED = 75


class Crash(BaseException):
    """Stands in for a process dying right after a checkpoint was committed."""


def make_data(n: int = 240, d: int = 6, k: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, k, generator=g)).argmax(1)
    cut = int(n * 0.75)
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(24, 3))


def train(ckpt_dir, epochs: int = 6, epoch_sleep: float = 0.0, step_sleep: float = 0.0, crash_after: int | None = None,
          control_file=None, log=None, on_epoch_hook=None, **overrides):
    torch.set_num_threads(1)
    train_split, val_split = make_data()
    model = build_model()

    def loss_fn(m, batch):
        if step_sleep:
            time.sleep(step_sleep)
        return cross_entropy_loss(m, batch)

    def on_epoch(record):
        if on_epoch_hook is not None:
            on_epoch_hook(record)
        if epoch_sleep:
            time.sleep(epoch_sleep)
        if crash_after is not None and record["epoch"] == crash_after:
            raise Crash(f"crash after epoch {crash_after}")

    settings = dict(epochs=epochs, batch_size=16, learning_rate=1e-2, warmup_epochs=1, checkpoint_interval=1, seed=3)
    settings.update(overrides)
    cfg = TrainerConfig(**settings)
    trainer = Trainer(model, cfg, loss_fn=loss_fn, metric_fn=classification_metric_fn, checkpoint_dir=ckpt_dir,
                      on_epoch=on_epoch, control_file=control_file, log=log)
    summary = trainer.fit(train_split, val_split)
    return model, summary


def main(argv: list[str]) -> int:
    ckpt_dir, out_file = Path(argv[0]), Path(argv[1])
    epochs = int(argv[2]) if len(argv) > 2 else 6
    epoch_sleep = float(argv[3]) if len(argv) > 3 else 0.0
    step_sleep = float(argv[4]) if len(argv) > 4 else 0.0
    try:
        model, summary = train(ckpt_dir, epochs, epoch_sleep, step_sleep)
    except TrainingInterrupted as exc:
        print(f"interrupted; checkpoint {exc.checkpoint}", flush=True)
        return INTERRUPTED
    atomic.save_safetensors(out_file, model.state_dict())
    print(f"done resumed_from={summary.resumed_from}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
