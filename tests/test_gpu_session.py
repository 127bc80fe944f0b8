"""The device check's logic on the CPU: the missing-wheels failure, the short preset, and the
per-model CUDA-against-CPU bench in its CPU-only mode writing to a scratch document."""
import json
import os
import subprocess
from pathlib import Path

import tiny_data

ROOT = Path(__file__).resolve().parents[1]


def test_session_without_wheels_fails_with_one_clear_line(tmp_path):
    # A copy of the script in a project folder without .whl/ (it runs from its own project root).
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_session.sh").write_text((ROOT / "bench" / "gpu_session.sh").read_text())
    env = {**os.environ, "GPU_SESSION_WORK": str(tmp_path / "work")}
    env.pop("GPU_SESSION_DRY", None)
    proc = subprocess.run(["bash", str(tmp_path / "bench" / "gpu_session.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no wheels in .whl/" in lines[0], lines


def test_short_preset_caps_every_epoch_count_and_still_loads(tmp_path, monkeypatch):
    from bench.gpu_preset import short_preset
    from unified_pipeline.presets import load_preset

    path = tmp_path / "short.json"
    path.write_text(json.dumps(short_preset(2)))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    preset = load_preset()
    for scenario in preset.training_scenarios:
        for model in preset.available_models_for(scenario):
            assert preset.hparams(scenario, model)["epochs"] <= 2, (scenario, model)
    assert preset.hparams("collaborative_training", "adaptive_learning_controller")["budget_epochs"] == 2


def test_models_bench_cpu_only_writes_its_rows_to_the_given_document(home, tmp_path, monkeypatch):
    import bench.common as common
    from bench import gpu_models
    from unified_pipeline.datasets import get_kind
    from unified_pipeline.datasets.base import PreprocessConfig
    from unified_pipeline.hashing import dataset_version

    raw = tiny_data.vision(tmp_path / "raw")
    kind = get_kind("vision")
    _, hashes = dataset_version(raw)
    bundle = kind.build_tensors(raw, kind.build_manifest(raw, hashes), PreprocessConfig())
    bundle.meta.update(dataset="digits", kind="vision")
    bundle.save(home / "tensors" / "digits" / "v1")
    doc = tmp_path / "bench.md"
    monkeypatch.setattr(common, "DOC", doc)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    rows = gpu_models.run(epochs=1, max_train=24, cpu_only=True, section="dry_models",
                          models=["vision_service", "multimodal_service"])
    assert rows[0]["model"] == "vision_service" and rows[0]["cpu_samples_per_s"] > 0
    assert rows[1]["gpu_device"].startswith("skipped")  # no audio or text data here
    text = doc.read_text()
    assert "<!-- dry_models:begin -->" in text and "dry run" in text
    assert gpu_models.shrink(bundle, 5).split("train")["x"].shape[0] == 5
    assert gpu_models.shrink(bundle, 5).split("test")["x"].shape[0] == bundle.split("test")["x"].shape[0]
