"""unified-pipeline: a Dagster pipeline that validates raw data and trains real PyTorch models."""
from __future__ import annotations

__version__ = "0.1.0"


def load_model(name: str, version: str | int | None = None, device: str = "cpu"):
    """Load a trained model by registry name (production version unless `version` is given)."""
    from unified_pipeline.inference import load_model as _load

    return _load(name, version, device)
