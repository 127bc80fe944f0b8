"""Imported once by the executor's forkserver, so every step process forks with the heavy
libraries already loaded instead of importing them again (seconds per step on small machines).
Nothing here starts threads or touches CUDA: forking after these imports is safe."""
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations  # noqa: E402,F401
import pandas  # noqa: E402,F401
import safetensors.torch  # noqa: E402,F401
import torch  # noqa: E402,F401
import torchaudio  # noqa: E402,F401

import unified_pipeline.definitions  # noqa: E402,F401
import unified_pipeline.quality.runner  # noqa: E402,F401
import unified_pipeline.train_model  # noqa: E402,F401
