"""Using trained models: `load_model` and `predict` resolve a registry version (production by default)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

from unified_pipeline.errors import ConfigError
from unified_pipeline.models.registry import MODELS, declared_models


def model_dir(name: str, version: str | int | None = None) -> Path:
    """Folder of a verified registered version (checksums checked before anything loads)."""
    from unified_pipeline.registry import ModelRegistry

    if name not in declared_models():
        raise ConfigError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    return ModelRegistry().model_dir(name, version)


def load_model(name: str, version: str | int | None = None, device: str = "cpu") -> Any:
    """The trained nn.Module of a model (production version unless `version` is given)."""
    from unified_pipeline.models.base import BaseModel

    return BaseModel.load(model_dir(name, version), device=device)


def predict(name: str, inputs: list[str], version: str | None = None,
            top: int = 1) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """(item, [(label, score), ...]) for each input item (models/spec.py `ModelSpec.predictions`)."""
    folder = model_dir(name, version)
    spec = MODELS[name].spec()
    if spec.predict is None:
        raise ConfigError(f"model {name!r} has no predict(); use its Python API instead")
    if inputs == ["-"]:
        inputs = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    yield from spec.predictions(folder, inputs, top=top)
