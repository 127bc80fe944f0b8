"""audio_student: distillation from a teacher that knows more than the student's labels."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.errors import ConfigError
from unified_pipeline.models import audio_student
from unified_pipeline.models.audio_rnn import AudioRNN, AudioRNNConfig
from unified_pipeline.models.base import BaseModel
from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
from unified_pipeline.training.job import FitJob
from unified_pipeline.training.trainer import Trainer, TrainerConfig

MELS, FRAMES, CLASSES = 8, 12, ["a", "b", "c"]


def _clips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class k = a loud band of mel bins 2k..2k+1 over noise; random valid lengths."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    x = 0.6 * torch.randn(n, MELS, FRAMES, generator=g)
    for i, k in enumerate(y.tolist()):
        x[i, 2 * k:2 * k + 2] += 1.5
    lengths = torch.randint(FRAMES // 2, FRAMES + 1, (n,), generator=g)
    return x, lengths, y


def _teacher(tmp_path) -> str:
    torch.manual_seed(0)
    model = AudioRNN(AudioRNNConfig(num_classes=3, n_mels=MELS, conv_channels=8, hidden_size=8, spec_mask=0))
    cfg = TrainerConfig(epochs=6, batch_size=32, learning_rate=1e-2, checkpoint_interval=0)
    Trainer(model, cfg, loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn,
            checkpoint_dir=None).fit(_clips(600, 1), _clips(100, 2))
    out = tmp_path / "teacher"
    model.save(out, extra={"classes": CLASSES})
    return out


def _bundle(noisy_fraction: float) -> TensorBundle:
    x, lengths, y = _clips(90, 3)
    # Half of the student's labels are wrong in a consistent way (k -> k+1); the teacher, trained
    # on clean data elsewhere, knows better: exactly what distillation should pass on.
    flip = torch.arange(len(y)) < int(noisy_fraction * len(y))
    y = torch.where(flip, (y + 1) % 3, y)
    tensors = {"train/x": x, "train/lengths": lengths, "train/y": y}
    for split, seed in (("val", 4), ("test", 5)):
        vx, vl, vy = _clips(150, seed)
        tensors.update({f"{split}/x": vx, f"{split}/lengths": vl, f"{split}/y": vy})
    meta = {"dataset": "tiny", "kind": "audio", "classes": CLASSES, "n_mels": MELS, "data_version": "t",
            "splits": {"train": 90, "val": 150, "test": 150}}
    return TensorBundle(tensors=tensors, meta=meta)


def _job(tmp_path, teacher, **hp) -> FitJob:
    return FitJob("audio_student", {"tiny": _bundle(0.45)}, {"audio_service": teacher},
                  {"epochs": 8, "batch_size": 16, "learning_rate": 1e-2, "distill_alpha": 0.9, "channels": 8, **hp},
                  "cpu", tmp_path / "ckpt", tmp_path / "out", log=logging.getLogger("test"))


def test_distilled_student_beats_the_same_student_without_teacher(tmp_path):
    torch.set_num_threads(1)
    teacher = _teacher(tmp_path)
    result = audio_student.fit(_job(tmp_path, teacher))
    distilled, alone = result.metrics["test"]["accuracy"], result.metrics["baseline"]["accuracy"]
    assert distilled > alone + 0.1, (distilled, alone)
    assert result.notes["baseline_name"] == audio_student.BASELINE_NAME
    assert result.param_count < BaseModel.load(teacher).num_parameters()
    out = tmp_path / "out"
    assert len(json.loads((out / "baseline_history.json").read_text())) == 8
    # The saved student reloads and predicts like the trained one.
    student = BaseModel.load(out)
    x, lengths, y = _clips(150, 5)
    acc = (student(x, lengths).argmax(-1) == y).float().mean().item()
    assert acc == pytest.approx(distilled, abs=1e-6)


def test_teacher_views_and_missing_teacher(tmp_path):
    x, lengths, _ = _clips(10, 0)
    views = audio_student.masked_views(x, lengths, 2, seed=0)
    assert views.shape == (20, MELS, FRAMES) and not torch.equal(views[:10], x)
    assert torch.equal(views, audio_student.masked_views(x, lengths, 2, seed=0))
    with pytest.raises(ConfigError, match="audio_service"):
        audio_student.fit(FitJob("audio_student", {"tiny": _bundle(0.0)}, {}, {}, "cpu", tmp_path / "c", tmp_path / "o"))
