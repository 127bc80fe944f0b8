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
