"""Recorded durations come from a monotonic clock: a wall-clock jump during training changes none."""
import itertools
import time

import tiny_data

JUMP_S = 1e6  # the wall clock moves forward by this much after its first reading


def _tensors(raw, make, kind):
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import DatasetRef

    ds = make(raw)
    ref = DatasetRef(ds.name, kind, ds)
    version, _, manifest = build_manifest(ref)
    return {ds.name: build_tensors(ref, manifest, version, {})[0]}


def _jumping_clock(monkeypatch):
    real = time.time
    calls = itertools.count()
    monkeypatch.setattr(time, "time", lambda: real() + (JUMP_S if next(calls) > 0 else 0.0))


def test_training_and_notears_durations_ignore_a_clock_jump(home, tmp_path, monkeypatch):
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.train_model import train_or_reuse

    vision = _tensors(tmp_path / "raw", tiny_data.vision, "vision")
    causal = _tensors(tmp_path / "raw", tiny_data.causal, "causal")
    _jumping_clock(monkeypatch)
    out = train_or_reuse("vision_service", vision, {"epochs": 1, "batch_size": 16, "widths": [8],
                                                    "blocks_per_stage": 1, "warm_start": False})
    assert 0 < out.wall_time_s < JUMP_S / 10
    assert ModelRegistry().get("vision_service", "latest").lineage["wall_time_s"] < JUMP_S / 10
    out = train_or_reuse("causal_reasoning_engine", causal, {"max_outer": 3})
    assert 0 < out.wall_time_s < JUMP_S / 10
    assert 0 < out.metrics["test"]["tiny_causal/wall_s"] < JUMP_S / 10
    history = ModelRegistry().get("causal_reasoning_engine", "latest").path / "history.json"
    import json

    assert all(0 <= r["elapsed_s"] < JUMP_S / 10 for r in json.loads(history.read_text()))
