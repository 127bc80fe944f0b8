"""Using trained models: `load_model` and `predict` resolve a registry version (production by default)."""
from __future__ import annotations

import importlib
import inspect
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
    """(item, [(label, score), ...]) for each input of a model's module-level `predict`.

    `predict(model_dir, inputs[, top])` returns, per input, one (label, score) pair or a list
    of them; or a dict {item: pairs} when one input may hold several items (the records of a
    .jsonl file), in which case the dict's keys name what each result is about."""
    folder = model_dir(name, version)
    module = importlib.import_module(MODELS[name].module)
    if not hasattr(module, "predict"):
        raise ConfigError(f"model {name!r} has no predict(); use its Python API instead")
    if inputs == ["-"]:
        inputs = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if "top" in inspect.signature(module.predict).parameters:
        results = module.predict(folder, inputs, top=top)
    else:
        results = module.predict(folder, inputs)
    for item, result in (results.items() if isinstance(results, dict) else zip(inputs, results)):
        yield item, [result] if _is_pair(result) else list(result)


def _is_pair(result: Any) -> bool:
    return isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str)
