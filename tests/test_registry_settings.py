"""Registry settings from the preset: promotion rule, automatic retention, preset lineage."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import tiny_data
from unified_pipeline.errors import ConfigError
from unified_pipeline.registry import ModelRegistry, policy_from_hparams, preset_lineage
from unified_pipeline.registry.policy import HPARAM_KEYS

M = "vision_service"
LINEAGE = {"data_versions": {"d": "x"}, "code_version": "c", "hparams": {}}


def _folder(tmp_path: Path, name: str, accuracy: float) -> Path:
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(name.encode())
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": accuracy}}))
    return folder


def _add(reg, tmp_path, name, accuracy=0.9, **kw):
    return reg.register(M, _folder(tmp_path, name, accuracy), lineage=LINEAGE, metric="accuracy", **kw)


def test_policy_defaults_and_clear_errors():
    policy = policy_from_hparams({"epochs": 3})
    assert (policy.promotion_rule, policy.keep_versions) == ("better_or_equal", None)
    assert policy_from_hparams({"promotion_rule": "never", "keep_versions": 2}).keep_versions == 2
    with pytest.raises(ConfigError, match=r"vision_service: hyperparameter promotion_rule 'sometimes' is not a "
                                          r"promotion rule; valid: \['always', 'never', 'better_or_equal'"):
        policy_from_hparams({"promotion_rule": "sometimes"}, M)
    for bad in (0, -1, True, "3", 2.5):
        with pytest.raises(ConfigError, match="keep_versions must be an integer >= 1 or null"):
            policy_from_hparams({"keep_versions": bad})


def test_register_with_keep_versions_prunes_but_never_an_aliased_version(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    _add(reg, tmp_path, "a", 0.9)  # v1: production, and stays as such
    for name in ("b", "c", "d"):
        assert _add(reg, tmp_path, name, 0.5, keep_versions=5).pruned.removed == []
    res = _add(reg, tmp_path, "e", 0.5, keep_versions=2)
    assert not res.promoted and res.prune_error is None
    assert res.pruned.removed == [f"{M}/v2", f"{M}/v3"]
    assert res.pruned.kept == {f"{M}/v1": "holds alias production", f"{M}/v4": "among the newest 2",
                               f"{M}/v5": "holds alias latest"}
    assert [v.number for v in reg.list(M)] == [1, 4, 5]
    assert not (reg.root / M / "v2").exists()
    assert [e["event"] for e in reg.events(M)][-2:] == ["register", "prune"]
    assert _add(reg, tmp_path, "f", 0.5).pruned is None  # no keep_versions: nothing pruned
    assert len(reg.list(M)) == 4


def test_bad_keep_versions_is_refused_before_anything_is_written(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ConfigError, match="keep_versions must be an integer >= 1"):
        _add(reg, tmp_path, "a", keep_versions=0)
    assert reg.list(M) == []


def test_a_failing_automatic_prune_keeps_the_new_version_and_says_why(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    _add(reg, tmp_path, "a", 0.9)
    _add(reg, tmp_path, "b", 0.5)
    record = reg.root / M / "v2" / "version.json"
    record.chmod(0o644)
    record.write_text(record.read_text().replace('"b"', '"B"') + " ")
    res = _add(reg, tmp_path, "c", 0.5, keep_versions=1)
    assert res.version.name == f"{M}/v3" and res.pruned is None
    assert "automatic prune (keep_versions=1) failed" in res.prune_error and "v2/version.json" in res.prune_error
    assert reg.get(M, "latest").number == 3


def test_preset_lineage_hashes_the_file(tmp_path):
    p = tmp_path / "training_preset.json"
    p.write_bytes(b'{"preset_name": "x"}')
    info = preset_lineage("x", "1.2", p)
    assert info == {"name": "x", "version": "1.2", "path": str(p),
                    "sha256": hashlib.sha256(b'{"preset_name": "x"}').hexdigest()}
    with pytest.raises(ConfigError, match="missing.json: cannot read preset file"):
        preset_lineage("x", "1", tmp_path / "missing.json")


# ------------------------------------------------------------ through train_or_reuse
HP = {"epochs": 1, "batch_size": 8, "seed": 0, "use_gpu": False}


@pytest.fixture
def tiny_tensors(home, tmp_path):
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import DatasetRef

    ds = tiny_data.vision(tmp_path / "raw")
    ref = DatasetRef(ds.name, "vision", ds)
    version, _, manifest = build_manifest(ref)
    return {ds.name: build_tensors(ref, manifest, version, {})[0]}


def test_registry_settings_do_not_change_the_fingerprint():
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.train_model import NON_SEMANTIC_HPARAMS, step_fingerprint

    assert HPARAM_KEYS <= NON_SEMANTIC_HPARAMS
    dirs = {"tiny_images": Path("/tensors/tiny_images/abc123")}
    base = step_fingerprint(MODELS[M], dirs, {}, HP)
    assert step_fingerprint(MODELS[M], dirs, {}, {**HP, "promotion_rule": "never", "keep_versions": 1}) == base
    assert step_fingerprint(MODELS[M], dirs, {}, {**HP, "seed": 1}) != base


def test_bad_promotion_rule_fails_before_training(home):
    from unified_pipeline.train_model import train_or_reuse

    missing = {"tiny_images": home / "no_tensors_here"}  # never read: the setting is checked first
    with pytest.raises(ConfigError, match="promotion_rule 'sometimes' is not a promotion rule; valid"):
        train_or_reuse(M, missing, {**HP, "promotion_rule": "sometimes"})
    with pytest.raises(ConfigError, match="keep_versions must be an integer >= 1"):
        train_or_reuse(M, missing, {**HP, "keep_versions": 0})
    assert ModelRegistry().list(M) == []


def test_train_or_reuse_applies_rule_retention_and_records_the_preset(tiny_tensors, tmp_path):
    from unified_pipeline.train_model import train_or_reuse

    preset_file = tmp_path / "p.json"
    preset_file.write_text("{}")
    info = preset_lineage("unit", "3.1", preset_file)
    first = train_or_reuse(M, tiny_tensors, HP, preset_info=info)
    assert first.promoted and first.version == f"{M}/v1"
    kept_back = train_or_reuse(M, tiny_tensors, {**HP, "promotion_rule": "never"}, force=True, preset_info=info)
    assert not kept_back.promoted and "promote_rule 'never'" in kept_back.promotion_note
    assert first.fingerprint == kept_back.fingerprint  # the rule is not part of what the model computes
    forced = train_or_reuse(M, tiny_tensors, {**HP, "promotion_rule": "always", "keep_versions": 1}, force=True)
    assert forced.promoted and forced.version == f"{M}/v3"

    reg = ModelRegistry()
    assert [v.number for v in reg.list(M)] == [1, 3]  # v2 pruned; v1 was production
    assert reg.get(M, "production").number == 3
    v1 = reg.get(M, "v1")
    assert v1.lineage["preset"] == info and v1.lineage["hparams"]["epochs"] == 1
    assert reg.get(M, "v3").lineage["preset"] is None  # trained without a preset file
