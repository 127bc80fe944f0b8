"""Model instances declared in a preset: several models of one architecture, each its own asset,
registry line, check and CLI name; an upstream swap that falls back when its data is absent."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data
from unified_pipeline.errors import ConfigError
from unified_pipeline.models.registry import BUILT_IN, MODELS, reset_instances

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def built_in_models_after():
    yield
    reset_instances()


def write_preset(tmp_path, monkeypatch, instances: dict, **changes) -> Path:
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["model_instances"] = instances
    preset["training_scenarios"]["collaborative_training"].update(epochs=2, batch_size=8)
    preset["model_specific_presets"]["vision_service"] = {"batch_size": 8, "learning_rate": 0.01}
    preset.update(changes)
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    return path


def test_instances_register_with_their_architecture_and_settings(tmp_path, monkeypatch):
    from unified_pipeline.presets import load_preset

    path = write_preset(tmp_path, monkeypatch, {
        "vision_b": {"architecture": "vision_service", "datasets": ["images_b"], "hparams": {"dropout": 0.3}}})
    preset = load_preset(path)
    entry = MODELS["vision_b"]
    assert entry.base == "vision_service" and entry.module == BUILT_IN["vision_service"].module
    assert entry.default_datasets == ("images_b",) and entry.only_named_datasets and entry.advisors == ()
    hp = preset.hparams("collaborative_training", "vision_b")
    # The architecture's preset first, then the instance's own values.
    assert hp["batch_size"] == 8 and hp["learning_rate"] == 0.01 and hp["dropout"] == 0.3
    assert "dropout" not in preset.hparams("collaborative_training", "vision_service")
    load_preset(ROOT / "presets" / "training_preset.json")
    assert "vision_b" not in MODELS  # loading another preset forgets the instances


@pytest.mark.parametrize("instances, message", [
    ({"v2": {"architecture": "vision_serv"}}, "unknown architecture 'vision_serv'"),
    ({"text_service": {"architecture": "vision_service"}}, "would replace the built-in model"),
    ({"bad-name": {"architecture": "vision_service"}}, "must start with a letter"),
    ({"m2": {"architecture": "multimodal_service", "upstream": {"text_service": "vision_service"}}},
     "needs a declared model of architecture text_service"),
    ({"v2": {"architecture": "vision_service", "datasets": ["a", "b"]}}, "reads one dataset of each kind"),
])
def test_bad_instances_are_refused_by_name(tmp_path, monkeypatch, instances, message):
    from unified_pipeline.presets import load_preset

    with pytest.raises(ConfigError, match=message):
        load_preset(write_preset(tmp_path, monkeypatch, instances))


# The README's example: multimodal_service reads words with a text model trained on number words.
WORD_SIDE = {
    "number_words_text": {"architecture": "text_service", "datasets": ["number_words"]},
    "multimodal_service": {"architecture": "multimodal_service", "upstream": {"text_service": "number_words_text"}},
}


def _raw(tmp_path, monkeypatch, *makers) -> Path:
    raw = tmp_path / "raw"
    for make in makers:
        make(raw)
    monkeypatch.setenv("UNIFIED_DATA", str(raw))
    return raw


def test_multimodal_word_side_falls_back_when_its_text_instance_has_no_data(home, tmp_path, monkeypatch):
    from unified_pipeline.definitions import build_definitions

    raw = _raw(tmp_path, monkeypatch, tiny_data.vision, tiny_data.audio, tiny_data.text)
    write_preset(tmp_path, monkeypatch, WORD_SIDE)

    def text_parent():
        graph = build_definitions().resolve_asset_graph()
        parents = {k.to_user_string() for k in graph.get(AssetKey(["multimodal_service"])).parent_keys}
        return parents & {"text_service", "number_words_text"}

    assert text_parent() == {"text_service"}  # no number_words dataset here
    shutil.copytree(raw / "tiny_text", raw / "number_words")
    assert text_parent() == {"number_words_text"}


def test_an_instance_trains_checks_registers_and_predicts_by_its_own_name(home, tmp_path, monkeypatch, capsys):
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.cli import main
    from unified_pipeline.definitions import build_definitions

    raw = _raw(tmp_path, monkeypatch, tiny_data.vision)
    shutil.copytree(raw / "tiny_images", raw / "images_b")
    write_preset(tmp_path, monkeypatch, {"vision_b": {"architecture": "vision_service", "datasets": ["images_b"]}})
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(AssetKey(["vision_b"])).parent_keys}
    assert "images_b/tensors" in parents and "tiny_images/tensors" not in parents
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    selection = AssetSelection.assets(AssetKey(["vision_b"])).upstream() - AssetSelection.assets(
        AssetKey(["images_b", "raw_files"]))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(assets, selection=selection, instance=instance, resources={"io_manager": JsonIOManager()})
    assert result.success
    checks = [(c.check_name, c.passed) for c in result.get_asset_check_evaluations() if c.asset_key == AssetKey(["vision_b"])]
    assert checks == [("reaches_threshold", True)]
    mats = {e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert mats["vision_b"]["version"].value == "vision_b/v1"
    reset_instances()  # the CLI finds the instance through the preset, as a new process would
    assert main(["models", "list"]) == 0
    assert "vision_b" in capsys.readouterr().out
    image = sorted((raw / "images_b" / "1").glob("*.png"))[0]
    assert main(["predict", "vision_b", str(image)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(image)) and out.split("\t")[1].split(" ")[0] in {"0", "1", "2"}


def test_readme_instance_examples_load(tmp_path, monkeypatch):
    import re

    from unified_pipeline.presets import load_preset

    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Several models of one kind")
    section = readme[start:readme.index("\n## ", start + 1)]
    blocks = [json.loads("{" + b.strip() + "}")["model_instances"] for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    assert len(blocks) == 2
    preset = load_preset(write_preset(tmp_path, monkeypatch, blocks[0]))
    assert MODELS["vision_cats"].default_datasets == ("cats",) and MODELS["vision_xray"].base == "vision_service"
    assert preset.hparams("collaborative_training", "vision_cats")["epochs"] == 20
    load_preset(write_preset(tmp_path, monkeypatch, blocks[1]))
    assert MODELS["multimodal_service"].upstream_models[-1] == "number_words_text"
    assert blocks[1] == WORD_SIDE  # the fallback test runs exactly this example
