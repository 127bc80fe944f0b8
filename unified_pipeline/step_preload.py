"""Imported once by the executor's forkserver, so every step process forks with the heavy
libraries already loaded instead of importing them again (seconds per step on small machines).
Nothing here starts threads or touches CUDA: forking after these imports is safe."""
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import sys  # noqa: E402

from unified_pipeline.install_check import BrokenInstall, require_loadable_extensions  # noqa: E402

try:
    require_loadable_extensions()
except BrokenInstall as exc:
    # The forkserver skips a preload that raises ImportError and dies on anything else, which the
    # executor would report only as an EOFError per step: say it once, then let steps fail on their own.
    print(f"error: {exc} (hint: {exc.hint})", file=sys.stderr)
    raise ImportError(str(exc)) from None

import great_expectations  # noqa: E402,F401
import pandas  # noqa: E402,F401
import safetensors.torch  # noqa: E402,F401
import torch  # noqa: E402,F401

import unified_pipeline.definitions  # noqa: E402,F401
import unified_pipeline.quality.runner  # noqa: E402,F401
import unified_pipeline.train_model  # noqa: E402,F401

try:  # the manifest's preview table (pandas' to_markdown); optional
    import tabulate  # noqa: E402,F401
except ImportError:
    pass

from unified_pipeline.dagster_home import preload_instance_modules  # noqa: E402

preload_instance_modules()
