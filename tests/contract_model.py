"""A model written against the public contract alone (models/spec.py): settings dataclass,
build, fit, predict and SPEC. The test registers it with one registry line."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.inputs import one_bundle, probabilities_to_labels, split_tensors
from unified_pipeline.models.spec import ModelSpec, config_from
from unified_pipeline.models.vision_cnn import load_images

IMAGE_FACTS = ("dataset", "channels", "image_size", "mode", "mean", "std")


@dataclass
class PixelMLPConfig:
    """num_classes and in_features come from the data; hidden is the one setting."""

    num_classes: int = 2
    in_features: int = 64
    hidden: int = 32


@register_architecture("pixel_mlp")
class PixelMLP(BaseModel):
    """Two dense layers over the flattened pixels."""

    config_cls = PixelMLPConfig

    def __init__(self, config: PixelMLPConfig):
        super().__init__(config)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(config.in_features, config.hidden), nn.ReLU(),
                                 nn.Linear(config.hidden, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(meta: dict, hp: dict) -> PixelMLP:
    h, w = (int(s) for s in meta["image_size"])
    return PixelMLP(config_from(PixelMLPConfig, hp, num_classes=len(meta["classes"]),
                                in_features=int(meta.get("channels", 1)) * h * w))


def fit(job):
    from unified_pipeline.training.classification import fit_classifier

    job = dataclasses.replace(job, hparams=SPEC.resolve(job.hparams))
    bundle = one_bundle(job, "vision")
    data = {s: split_tensors(bundle, s, ("x",)) for s in ("train", "val", "test")}
    torch.manual_seed(job.seed)
    return fit_classifier(job, build(bundle.meta, job.hparams), data, classes=list(bundle.meta["classes"]),
                          extra={k: bundle.meta.get(k) for k in IMAGE_FACTS})


@torch.no_grad()
def predict(model_dir, inputs, top: int = 1) -> list:
    model = BaseModel.load(model_dir)
    return probabilities_to_labels(model(load_images(list(inputs), model.extra)), model.extra["classes"], top)


SPEC = ModelSpec(settings=PixelMLPConfig, fit=fit, predict=predict, build=build, inputs=("x",),
                 derived=("num_classes", "in_features"))
