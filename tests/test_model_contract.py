"""A new model through the public contract alone: one module (contract_model.py) and one registry
line; it trains, is checked, versioned, listed and predicted like a built-in model."""
from __future__ import annotations

import json
from pathlib import Path

from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data
from unified_pipeline.models.registry import BUILT_IN, MODELS, ModelEntry

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ModelEntry("pixel_mlp", "contract_model", ("vision",), "Two-layer MLP over the pixels", "accuracy", 0.6)


def test_a_model_added_by_one_module_and_one_registry_line(home, tmp_path, monkeypatch, capsys):
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.cli import main
    from unified_pipeline.definitions import build_definitions
    from unified_pipeline.registry import ModelRegistry

    for registry in (BUILT_IN, MODELS):  # the one line in models/registry.py fills both
        monkeypatch.setitem(registry, ENTRY.name, ENTRY)
    raw = tmp_path / "raw"
    tiny_data.vision(raw)
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["training_scenarios"]["collaborative_training"].update(epochs=30, batch_size=8)
    preset["model_specific_presets"]["pixel_mlp"] = {"hidden": 16, "learning_rate": 0.01}
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(tmp_path / "preset.json"))

    graph = build_definitions().resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get(AssetKey(["pixel_mlp"])).parent_keys} >= {"tiny_images/tensors"}
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    selection = AssetSelection.assets(AssetKey(["pixel_mlp"])).upstream()
    with DagsterInstance.ephemeral() as instance:
        result = materialize(assets, selection=selection, instance=instance, resources={"io_manager": JsonIOManager()})
    assert result.success
    checks = [(c.check_name, c.passed) for c in result.get_asset_check_evaluations() if c.asset_key == AssetKey(["pixel_mlp"])]
    assert checks == [("reaches_threshold", True)]

    version = ModelRegistry().resolve("pixel_mlp/production")
    assert version.name == "pixel_mlp/v1" and version.lineage["code_version"]
    assert version.lineage["hparams"]["hidden"] == 16  # its own setting, from model_specific_presets
    assert main(["models", "list"]) == 0
    assert "pixel_mlp" in capsys.readouterr().out
    image = sorted((raw / "tiny_images" / "2").glob("*.png"))[0]
    assert main(["predict", "pixel_mlp", str(image), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(image)) and out.split("\t")[1].split(" ")[0] in {"0", "1", "2"}
