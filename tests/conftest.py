import os

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("UNIFIED_THREADS_PER_STEP", "1")
# Tests train on the CPU, deterministically, even on a GPU host: the device inventory says no
# GPU (subprocesses inherit it). A test that wants CUDA asks with @pytest.mark.cuda.
os.environ["UNIFIED_GPUS"] = "0"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Isolated run root and raw-data root for a test."""
    h = tmp_path / "home"
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("UNIFIED_HOME", str(h))
    monkeypatch.setenv("UNIFIED_DATA", str(raw))
    return h


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs on a CUDA device; skipped where none is present")


@pytest.fixture(autouse=True)
def _cuda_only_when_asked(request, monkeypatch):
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from unified_pipeline import devices

    monkeypatch.delenv("UNIFIED_GPUS", raising=False)
    devices.gpu_count.cache_clear()
    yield
    devices.gpu_count.cache_clear()
