"""`-c` run config: named overrides and any other hyperparameter the model or trainer knows."""
import pytest

from unified_pipeline.assets.model_assets import TrainConfig, run_config_overrides
from unified_pipeline.errors import ConfigError
from unified_pipeline.models.registry import MODELS
from unified_pipeline.presets import load_preset


def test_any_known_hyperparameter_can_be_overridden_and_named_fields_win():
    preset = load_preset()
    base = preset.hparams("collaborative_training", "text_service")
    cfg = TrainConfig(epochs=3, hparams={"dropout": 0.3, "epochs": 99, "promotion_rule": "never"})
    overrides = run_config_overrides(cfg, MODELS["text_service"])
    assert overrides == {"dropout": 0.3, "epochs": 3, "promotion_rule": "never"}
    resolved = preset.hparams("collaborative_training", "text_service", overrides)
    assert resolved["dropout"] == 0.3 and resolved["epochs"] == 3 and resolved["promotion_rule"] == "never"


def test_unknown_hyperparameter_is_refused_with_the_valid_names():
    preset = load_preset()
    base = preset.hparams("collaborative_training", "vision_service")
    with pytest.raises(ConfigError, match=r"\['dropuot'\].*valid: .*'learning_rate'"):
        run_config_overrides(TrainConfig(hparams={"dropuot": 0.3}), MODELS["vision_service"])


@pytest.mark.parametrize("model, hparams", [
    ("audio_service", {"num_layers": 2}),  # fields of the model's settings dataclass
    ("multimodal_service", {"finetune": ["text"]}),
    ("text_service", {"lr": 0.01, "warm_start": False}),  # a preset spelling and a pipeline switch
])
def test_every_setting_of_the_model_is_accepted(model, hparams):
    assert run_config_overrides(TrainConfig(hparams=hparams), MODELS[model]) == hparams


def test_settings_the_data_decides_are_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"\['num_classes'\].*valid:"):
        run_config_overrides(TrainConfig(hparams={"num_classes": 3}), MODELS["vision_service"])
    with pytest.raises(ConfigError, match=r"did you mean 'learning_rate' for 'learnig_rate'\?"):
        run_config_overrides(TrainConfig(hparams={"learnig_rate": 0.1}), MODELS["vision_service"])


def test_one_set_of_defaults_per_model():
    """The settings dataclass's defaults are the values training uses (text_service d_model 64)."""
    spec = MODELS["text_service"].spec()
    assert spec.defaults()["d_model"] == 64 and "vocab_size" not in spec.defaults()
    assert spec.resolve({"d_model": 32})["d_model"] == 32


def test_run_config_schema_lists_each_models_settings_without_importing_it():
    """The Dagster schema is built from the module's source (the definitions never import torch);
    it names exactly the settings the imported SPEC has."""
    from unified_pipeline.models.spec import declared_setting_names

    for name, entry in MODELS.items():
        assert declared_setting_names(entry.module) == entry.spec().setting_names(), name
