"""Warm start: the decision, fine-tuning through train_or_reuse, lineage, and no promotion when worse."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import tiny_data
from unified_pipeline.models.registry import MODELS
from unified_pipeline.training.warm_start import plan_warm_start

AUDIO = MODELS["audio_service"]


def _tensors(root: Path, name: str, train: list[str], test: list[str], classes=("a", "b")) -> Path:
    d = root / "tensors" / "ds" / name
    d.mkdir(parents=True)
    (d / "samples.json").write_text(json.dumps({"train": train, "val": [], "test": test}))
    (d / "meta.json").write_text(json.dumps({"dataset": "ds", "data_version": "", "classes": list(classes)}))
    return d


class _Registry:
    def model_dir(self, model, number):
        return Path(f"/registry/{model}/v{number}")


def _production(version: str):
    return SimpleNamespace(name="audio_service/v1", model="audio_service", number=1,
                           lineage={"data_versions": {"ds": version}})


@pytest.fixture
def two_versions(home):
    ids = [f"a/{i}.wav" for i in range(45)]
    _tensors(home, "old", ids[:40], ids[40:])
    small = _tensors(home, "small", ids + ["a/new0.wav", "a/new1.wav"], ids[40:])  # 2 of 47 changed
    big = _tensors(home, "big", ids[:20] + [f"b/{i}.wav" for i in range(30)], ids[40:])
    return small, big


def test_small_change_warm_starts_and_names_the_new_train_samples(two_versions):
    small, _ = two_versions
    plan = plan_warm_start(AUDIO, {"ds": small}, {}, _production("old"), _Registry())
    assert plan.used and plan.spec.parent == "audio_service/v1"
    assert plan.spec.new_train_ids == {"a/new0.wav", "a/new1.wav"}  # a/40..44 moved split, not new
    assert plan.fraction == pytest.approx(2 / 47)
    rec = plan.record()
    assert rec["used"] and rec["parent"] == "audio_service/v1" and "fine-tune" in rec["reason"]


@pytest.mark.parametrize("case,expect", [
    ("big", "not below the limit"),
    ("no_production", "no production version"),
    ("disabled", "disabled by hyperparameter"),
    ("limit", "not below the limit 1%"),
    ("classes", "encoding changed"),
    ("not_classifier", "not applicable"),
])
def test_scratch_cases_say_why(two_versions, home, case, expect):
    small, big = two_versions
    entry, dirs, hp, prod = AUDIO, {"ds": small}, {}, _production("old")
    if case == "big":
        dirs = {"ds": big}
    elif case == "no_production":
        prod = None
    elif case == "disabled":
        hp = {"warm_start": False}
    elif case == "limit":
        hp = {"warm_start_max_change": 0.01}
    elif case == "classes":
        dirs = {"ds": _tensors(home, "relabelled", ["a/0.wav"], [], classes=("a", "b", "c"))}
    elif case == "not_classifier":
        entry = MODELS["environment_simulator"]
    plan = plan_warm_start(entry, dirs, hp, prod, _Registry())
    assert not plan.used and plan.spec is None and expect in plan.reason
    assert plan.record()["used"] is False and plan.record()["parent"] is None


def _build(ds_root: Path) -> Path:
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import DatasetRef

    ref = DatasetRef(ds_root.name, "audio", ds_root)
    version, _, manifest = build_manifest(ref)
    return build_tensors(ref, manifest, version, {})[0]


HP = {"epochs": 6, "batch_size": 8, "seed": 0, "use_gpu": False, "warm_start_epochs": 3,
      "hidden_size": 16, "conv_channels": 16, "spec_mask": 0}


def test_warm_start_end_to_end_lineage_reuse_and_no_promotion_when_worse(home, tmp_path):
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.train_model import train_or_reuse

    ds = tiny_data.audio(tmp_path / "raw", per_class=20)
    extra = tiny_data.audio(tmp_path / "more", per_class=3, seed=7)
    first = train_or_reuse("audio_service", {"tiny_audio": _build(ds)}, HP)
    assert first.version == "audio_service/v1" and first.promoted and not first.warm_start["used"]
    assert "no production version" in first.warm_start["reason"]

    for wav in extra.rglob("*.wav"):  # 6 new files of 46: 13% < 20%
        shutil.copy(wav, ds / wav.parent.name / f"new_{wav.name}")
    tensors = _build(ds)
    second = train_or_reuse("audio_service", {"tiny_audio": tensors}, HP)
    ws = second.warm_start
    assert second.version == "audio_service/v2" and not second.reused
    assert ws["used"] and ws["parent"] == "audio_service/v1" and ws["change_fraction"] == pytest.approx(6 / 46, abs=1e-6)
    samples = json.loads((tensors / "samples.json").read_text())
    new_train = sum(s.split("/")[-1].startswith("new_") for s in samples["train"])
    assert ws["new"] == new_train and ws["replayed"] == round(0.3 * (len(samples["train"]) - new_train))
    assert second.epochs_run <= 3
    v2 = ModelRegistry().get("audio_service", "v2")
    assert v2.lineage["parent"] == "audio_service/v1" and v2.lineage["warm_start"] == ws
    assert v2.metrics["test"]["accuracy"] >= 0.5

    again = train_or_reuse("audio_service", {"tiny_audio": tensors}, HP)
    assert again.reused and again.version == second.version

    # A real but useless run: a vanishing learning rate for one epoch, from scratch.
    worse_hp = {**HP, "epochs": 1, "learning_rate": 1e-7, "warm_start": False}
    worse = train_or_reuse("audio_service", {"tiny_audio": tensors}, worse_hp)
    prod = ModelRegistry().get("audio_service", "production")
    assert worse.version == "audio_service/v3" and worse.warm_start["used"] is False
    assert worse.metrics["test"]["accuracy"] < prod.metrics["test"]["accuracy"]
    assert not worse.promoted and prod.name != "audio_service/v3"
    assert worse.promotion_note.startswith("registered, not promoted: test accuracy")

    # A downstream model reads the version its upstream asset produced in the run, promoted or
    # not; called without one (CLI, Python), it reads the production version.
    student_hp = {"epochs": 1, "batch_size": 8, "seed": 0, "use_gpu": False}
    given = train_or_reuse("audio_student", {"tiny_audio": tensors}, student_hp, upstream={"audio_service": worse.version})
    default = train_or_reuse("audio_student", {"tiny_audio": tensors}, student_hp)
    registry = ModelRegistry()
    assert registry.resolve(given.version).lineage["upstream"] == {"audio_service": "audio_service/v3"}
    assert registry.resolve(default.version).lineage["upstream"] == {"audio_service": prod.name}
    assert not default.reused and default.fingerprint != given.fingerprint
