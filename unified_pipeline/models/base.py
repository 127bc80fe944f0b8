"""Base class for every model: weights in safetensors, config in JSON, rebuilt from config alone.

`save(directory)` writes `weights.safetensors` and `config.json`; `BaseModel.load(directory)`
reads the architecture name from the config, builds that class from its config dataclass and
loads the weights. Nothing is unpickled.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from unified_pipeline import atomic
from unified_pipeline.errors import IntegrityError

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"

_ARCHITECTURES: dict[str, str] = {}  # architecture name -> "module:Class"


def register_architecture(name: str):
    """Class decorator: makes `BaseModel.load` able to rebuild the class from a config file."""

    def wrap(cls):
        cls.architecture = name
        _ARCHITECTURES[name] = f"{cls.__module__}:{cls.__qualname__}"
        return cls

    return wrap


def _resolve(name: str) -> type["BaseModel"]:
    target = _ARCHITECTURES.get(name)
    if target is None:
        # Architectures register on import; config.json records the module to import.
        raise IntegrityError(f"unknown architecture {name!r}; known: {sorted(_ARCHITECTURES)}")
    module, qual = target.split(":")
    return getattr(importlib.import_module(module), qual)


class BaseModel(nn.Module):
    """nn.Module with a dataclass config (`config_cls`) and safetensors persistence."""

    architecture: ClassVar[str] = ""
    config_cls: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write weights and config (plus `extra` JSON facts needed at inference, e.g. class names)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic.save_safetensors(directory / WEIGHTS_FILE, self.state_dict(), metadata={"architecture": self.architecture})
        atomic.write_json(
            directory / CONFIG_FILE,
            {
                "architecture": self.architecture,
                "module": type(self).__module__,
                "config": self.config_dict(),
                "extra": extra or {},
            },
        )
        return directory

    @staticmethod
    def read_config(directory: str | Path) -> dict[str, Any]:
        return json.loads((Path(directory) / CONFIG_FILE).read_text())

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "BaseModel":
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = cls.read_config(directory)
        module = cfg.get("module", "")
        if module.startswith("unified_pipeline."):
            importlib.import_module(module)  # registers the architecture
        model_cls = _resolve(cfg["architecture"])
        fields = {f.name for f in dataclasses.fields(model_cls.config_cls)}
        config = model_cls.config_cls(**{k: v for k, v in cfg["config"].items() if k in fields})
        model = model_cls(config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=str(device)))
        model.extra = cfg.get("extra", {})
        return model.to(device).eval()
