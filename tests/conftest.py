import os

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("UNIFIED_THREADS_PER_STEP", "1")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Isolated run root and raw-data root for a test."""
    h = tmp_path / "home"
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("UNIFIED_HOME", str(h))
    monkeypatch.setenv("UNIFIED_DATA", str(raw))
    return h
