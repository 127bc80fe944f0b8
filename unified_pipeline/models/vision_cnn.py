"""vision_service: a small CNN image classifier (conv-norm-activation blocks, adaptive pooling).

Adaptive average pooling before the head makes one architecture serve 8x8 digits and larger
user images alike; the input shape and classes come from the tensor bundle's meta.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.inputs import classifier_job, probabilities_to_labels
from unified_pipeline.models.spec import ModelSpec, config_from
from unified_pipeline.training.job import FitJob, FitResult


@dataclass
class VisionCNNConfig:
    num_classes: int = 10
    in_channels: int = 1
    image_size: list[int] = field(default_factory=lambda: [8, 8])
    widths: list[int] = field(default_factory=lambda: [32, 64])
    blocks_per_stage: int = 2
    dropout: float = 0.2
    norm: str = "batch"  # "batch" or "group"
    activation: str = "gelu"  # "gelu" or "relu"
    max_shift: int = 1  # random translation in pixels, training mode only


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ConfigError(f"vision_service: norm must be 'batch' or 'group', got {kind!r}")


def _act(kind: str) -> nn.Module:
    if kind == "gelu":
        return nn.GELU()
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ConfigError(f"vision_service: activation must be 'gelu' or 'relu', got {kind!r}")


@register_architecture("vision_cnn")
class VisionCNN(BaseModel):
    config_cls = VisionCNNConfig

    def __init__(self, config: VisionCNNConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        c_in = config.in_channels
        min_side = min(config.image_size)
        for stage, width in enumerate(config.widths):
            for _ in range(config.blocks_per_stage):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), _norm(config.norm, width), _act(config.activation)]
                c_in = width
            # Downsample between stages while the feature map is still large enough to halve.
            if stage < len(config.widths) - 1 and min_side >= 4:
                layers.append(nn.MaxPool2d(2))
                min_side //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = c_in
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(c_in, config.num_classes))

    @torch.compiler.disable
    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        # Pad then crop at a random offset per batch: cheap translation augmentation. Kept out of
        # torch.compile's graph, which would bake one offset in and recompile for every other.
        s = self.config.max_shift
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (s, s, s, s))
        dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
        return padded[..., dy:dy + h, dx:dx + w]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch [N,C,H,W] -> embedding [N, embedding_dim]."""
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.config.max_shift > 0:
            x = self._shift(x)
        return self.head(self.encode(x))


def build(meta: dict[str, Any], hp: dict[str, Any]) -> VisionCNN:
    cfg = config_from(VisionCNNConfig, hp, num_classes=len(meta["classes"]), in_channels=int(meta.get("channels", 1)),
                      image_size=[int(s) for s in meta["image_size"]])
    cfg.widths = [int(w) for w in cfg.widths]
    return VisionCNN(cfg)


def fit(job: FitJob) -> FitResult:
    from unified_pipeline.training.classification import fit_classifier

    job, bundle, data = classifier_job(job, SPEC, "vision", ("x",))
    meta = bundle.meta
    torch.manual_seed(job.seed)
    model = build(meta, job.hparams)
    extra = {
        "dataset": meta.get("dataset"),
        "channels": int(meta.get("channels", 1)),
        "image_size": list(meta["image_size"]),
        "mode": meta.get("mode"),
        "mean": meta.get("mean"),
        "std": meta.get("std"),
    }
    return fit_classifier(job, model, data, classes=list(meta["classes"]), extra=extra)


def load_images(paths: Sequence[str | Path], extra: dict[str, Any]) -> torch.Tensor:
    """Decode image files exactly as the data lane does (mode, size, /255, per-channel mean/std)."""
    from unified_pipeline.datasets.vision import load_image

    h, w = (int(v) for v in extra["image_size"])
    mode = extra.get("mode") or ("L" if int(extra.get("channels", 1)) == 1 else "RGB")
    mean = torch.tensor(extra.get("mean") or [0.0], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(extra.get("std") or [1.0], dtype=torch.float32).view(-1, 1, 1)
    out = []
    for p in paths:
        try:
            arr = load_image(Path(p), mode, (h, w))
        except Exception as exc:  # PIL raises many types for broken files
            raise DatasetError(f"{p}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        out.append((torch.tensor(arr, dtype=torch.float32) / 255.0 - mean) / std)
    return torch.stack(out)


@torch.no_grad()
def predict(model_dir: Path, inputs: Sequence[str | Path], top: int = 1) -> list:
    """Image file paths -> (label, probability) per image."""
    model = BaseModel.load(model_dir)
    x = load_images(list(inputs), model.extra)
    return probabilities_to_labels(model(x), model.extra["classes"], top)


SPEC = ModelSpec(
    settings=VisionCNNConfig, fit=fit, predict=predict, build=build, inputs=("x",),
    derived=("num_classes", "in_channels", "image_size"), warm_start=True,
    trainer_defaults={"epochs": 30, "batch_size": 64, "learning_rate": 3e-3, "weight_decay": 1e-4,
                      "early_stopping_patience": 8},
)
