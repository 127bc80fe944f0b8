import json
import warnings

import pytest

from unified_pipeline.errors import ConfigError
from unified_pipeline.presets import PresetWarning, default_preset_path, load_preset

# Shape of the original system's training_preset.json (keys it had that we do not use included).
ORIGINAL = {
    "preset_name": "Unified AI Training Preset",
    "preset_version": "1.0",
    "data_configuration": {"data_root": "../data", "validation_split": 0.2},
    "training_scenarios": {
        "quick_start": {"description": "quick", "datasets": ["vision_samples"], "epochs": 5, "batch_size": 8,
                        "target_models": ["vision_service", "audio_service"]},
        "collaborative_training": {"description": "Full model collaborative training using all available data",
                                   "datasets": ["all_available_datasets"], "epochs": 50, "batch_size": 16,
                                   "target_models": ["all_models"], "checkpoint_interval": 5,
                                   "enable_collaborative_training": True},
    },
    "training_configuration": {"learning_rate": 0.001, "optimizer": "adam", "loss_function": "categorical_crossentropy"},
    "hardware_configuration": {"use_gpu": True, "gpu_memory_limit": "8GB", "cpu_threads": 4, "mixed_precision": True},
    "model_specific_presets": {"vision_service": {"learning_rate": 0.002}, "causal_reasoning_engine": {}},
    "data_preprocessing": {"image": {"resize": [224, 224]}},
}


def write(tmp_path, obj):
    p = tmp_path / "training_preset.json"
    p.write_text(json.dumps(obj))
    return p


def test_project_preset_has_required_scenarios():
    preset = load_preset(default_preset_path())
    for name in ["quick_start", "collaborative_training", "vision_focus", "audio_focus", "concept_models_training",
                 "environment_simulator_training", "causal_reasoning_training", "adaptive_learning_training",
                 "alpha_deep_model_training"]:
        assert name in preset.training_scenarios
    sc = preset.scenario("collaborative_training")
    assert (sc.epochs, sc.batch_size, sc.checkpoint_interval) == (50, 16, 5)
    assert sc.target_models == ["all_models"] and sc.datasets == ["all_available_datasets"]
    assert sc.enable_collaborative_training


def test_original_shape_loads_with_warning_for_unused_keys(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preset = load_preset(write(tmp_path, ORIGINAL))
    text = " ".join(str(w.message) for w in caught if issubclass(w.category, PresetWarning))
    assert "loss_function" in text and "gpu_memory_limit" in text
    assert "vision_service" in preset.models_for("collaborative_training")


def test_hparams_resolution_order(tmp_path):
    preset = load_preset(write(tmp_path, ORIGINAL))
    hp = preset.hparams("collaborative_training", "vision_service", {"epochs": 3})
    assert hp["learning_rate"] == 0.002  # model-specific beats training_configuration
    assert hp["epochs"] == 3  # run config beats scenario
    assert hp["batch_size"] == 16
    assert preset.hparams("collaborative_training", "audio_service")["learning_rate"] == 0.001


def test_all_available_datasets_expands_and_unknown_dataset_lists_valid(tmp_path):
    preset = load_preset(write(tmp_path, ORIGINAL))
    assert preset.datasets_for("collaborative_training", ["digits", "langid"]) == ["digits", "langid"]
    with pytest.raises(ConfigError, match="vision_samples.*valid.*digits"):
        preset.datasets_for("quick_start", ["digits", "langid"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["training_scenarios"]["quick_start"].update(target_models=["vision_servce"]), "vision_servce.*valid"),
        (lambda p: p["training_scenarios"]["quick_start"].update(epochs=0), "epochs"),
        (lambda p: p["training_scenarios"]["quick_start"].update(batch_size="big"), "batch_size"),
        (lambda p: p["training_configuration"].update(learning_rate=-1), "learning_rate"),
        (lambda p: p["training_configuration"].update(optimizer="adagrad"), "optimizer.*adamw"),
        (lambda p: p["model_specific_presets"].update(nope={}), "nope"),
        (lambda p: p.pop("training_scenarios"), "training_scenarios"),
    ],
)
def test_bad_presets_name_the_field(tmp_path, mutate, message):
    bad = json.loads(json.dumps(ORIGINAL))
    mutate(bad)
    with pytest.raises(ConfigError, match=message):
        load_preset(write(tmp_path, bad))


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('{\n  "preset_name": "x",\n  oops\n}')
    with pytest.raises(ConfigError, match="line 3"):
        load_preset(p)


def test_unknown_scenario_lists_valid(tmp_path):
    preset = load_preset(write(tmp_path, ORIGINAL))
    with pytest.raises(ConfigError, match="quick_start"):
        preset.scenario("slow_start")


def test_registry_settings_resolve_into_hparams(tmp_path):
    preset = load_preset(write(tmp_path, ORIGINAL))
    hp = preset.hparams("collaborative_training", "audio_service")
    assert (hp["promotion_rule"], hp["keep_versions"]) == ("better_or_equal", None)
    custom = json.loads(json.dumps(ORIGINAL))
    custom["training_configuration"].update(promotion_rule="strictly_better", keep_versions=4)
    custom["model_specific_presets"]["vision_service"]["promotion_rule"] = "always"
    preset = load_preset(write(tmp_path, custom))
    assert preset.hparams("collaborative_training", "audio_service")["promotion_rule"] == "strictly_better"
    hp = preset.hparams("collaborative_training", "vision_service")
    assert (hp["promotion_rule"], hp["keep_versions"]) == ("always", 4)


@pytest.mark.parametrize("change, message", [
    ({"promotion_rule": "sometimes"},
     r"training_configuration\.promotion_rule: .*'sometimes'.*valid: \['always', 'never', 'better_or_equal'"),
    ({"keep_versions": 0}, r"training_configuration\.keep_versions: .*greater than or equal to 1"),
])
def test_bad_registry_settings_name_the_field(tmp_path, change, message):
    bad = json.loads(json.dumps(ORIGINAL))
    bad["training_configuration"].update(change)
    with pytest.raises(ConfigError, match=message):
        load_preset(write(tmp_path, bad))


@pytest.mark.parametrize("section, where", [
    ({"model_specific_presets": {"vision_service": {"learnig_rate": 0.1}}}, "model_specific_presets.vision_service"),
    ({"model_instances": {"vision_b": {"architecture": "vision_service", "hparams": {"dropuot": 0.1}}}},
     "model_instances.vision_b.hparams"),
])
def test_misspelt_model_setting_is_refused_with_file_section_and_suggestion(tmp_path, section, where):
    from unified_pipeline.models.registry import MODELS, reset_instances
    from unified_pipeline.presets import check_model_settings

    path = write(tmp_path, {**ORIGINAL, **section})
    try:
        preset = load_preset(path)
        with pytest.raises(ConfigError, match=rf"{path}: {where}: \[.*valid: .*did you mean"):
            check_model_settings(preset, list(MODELS), path)
    finally:
        reset_instances()


def test_project_preset_uses_only_real_settings():
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.presets import check_model_settings

    check_model_settings(load_preset(default_preset_path()), list(MODELS), default_preset_path())


# A model's own preset section and its SPEC's trainer_defaults describe the same model's training;
# where both set a value they should agree. These differ and stay as they are: under a preset the
# section's value is what trains the model, and the SPEC's is what a fit without a preset uses
# (tests, bench), so changing either would move a trained result.
KNOWN_TRAINER_DEFAULT_DIFFERENCES = {  # (model, key): (SPEC trainer_defaults, model_specific_presets)
    ("text_service", "epochs"): (12, 14),
    ("text_service", "batch_size"): (64, 32),
    ("text_service", "early_stopping_patience"): (8, 6),
}


def test_model_presets_agree_with_the_specs_trainer_defaults():
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.training.trainer_config import canonical

    preset = load_preset(default_preset_path())
    differ = {}
    for model, section in preset.model_specific_presets.items():
        spec_defaults = MODELS[model].spec().trainer_defaults
        for key, value in canonical(section).items():
            if key in spec_defaults and spec_defaults[key] != value:
                differ[(model, key)] = (spec_defaults[key], value)
    assert differ == KNOWN_TRAINER_DEFAULT_DIFFERENCES
