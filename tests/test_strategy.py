"""The adaptive_learning_controller's strategy reaches the models it advises, and stale control commands do not."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from test_controller import _vision_bundle
from unified_pipeline.models import adaptive_learning_controller as alc
from unified_pipeline.training.control import write_command
from unified_pipeline.training.job import FitJob
from unified_pipeline.training.strategy import apply_advice

VISION_HP = {"epochs": 2, "batch_size": 32, "learning_rate": 2e-3, "early_stopping_patience": 0,
             "widths": [8], "blocks_per_stage": 1, "adaptive_strategy": True, "warm_start": False}


@pytest.fixture
def controller_version(tmp_path, home):
    """A real (tiny) controller study on vision data, registered as adaptive_learning_controller/v1."""
    from unified_pipeline.registry import ModelRegistry

    torch.set_num_threads(1)
    bundle = _vision_bundle()
    hp = {"learning_rate": 1e-3, "batch_size": 16, "budget_epochs": 1, "study_epochs": 3,
          "max_train_samples": 64, "max_val_samples": 30, "warm_start_trials": 0,
          "advised_presets": {"vision_service": VISION_HP}}
    out = tmp_path / "ctl"
    alc.fit(FitJob("adaptive_learning_controller", {"tiny": bundle}, {}, hp, "cpu", tmp_path / "ck", out,
                   log=logging.getLogger("test")))
    ModelRegistry().register("adaptive_learning_controller", out, metric="wins_fraction",
                             lineage={"data_versions": {"tiny": "t"}, "code_version": "x", "hparams": hp})
    tensors = bundle.save(tmp_path / "tensors" / "tiny" / "t1")
    return json.loads((out / "strategy.json").read_text())["models"]["vision_service"], tensors


def test_controller_lane_starts_from_the_advised_models_own_preset(controller_version):
    entry, _ = controller_version
    # The lane's preset is vision_service's (lr 2e-3, batch 32), not the controller step's (1e-3, 16).
    assert entry["preset"]["learning_rate"] == 2e-3 and entry["preset"]["batch_size"] == 32


def test_advised_model_trains_with_the_strategy_and_records_it(controller_version, home):
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.train_model import train_or_reuse

    entry, tensors = controller_version
    out = train_or_reuse("vision_service", {"tiny": tensors}, dict(VISION_HP),
                         advisors=("adaptive_learning_controller",), fixed={"early_stopping_patience"})
    assert out.strategy["used"] and out.strategy["source"] == "adaptive_learning_controller/v1"
    lineage = ModelRegistry().get("vision_service", "latest").lineage
    assert lineage["strategy"] == out.strategy
    hp = lineage["hparams"]
    assert hp["learning_rate"] == pytest.approx(2e-3 * entry["lr_multiplier"])
    assert hp["batch_size"] == entry["batch_size"]
    assert hp["early_stopping_patience"] == 0  # set by the run config: advice never overrides it
    assert out.strategy["kept_from_run_config"] == ["early_stopping_patience"]

    # Same data, code and preset: reused, not retrained (advice alone never retrains).
    again = train_or_reuse("vision_service", {"tiny": tensors}, dict(VISION_HP),
                           advisors=("adaptive_learning_controller",), fixed={"early_stopping_patience"})
    assert again.reused and again.version == out.version


def test_advice_off_keeps_the_preset_and_says_why(controller_version):
    _, tensors = controller_version
    hp, record = apply_advice("vision_service", {**VISION_HP, "adaptive_strategy": False},
                              {"adaptive_learning_controller": ("adaptive_learning_controller/v1", tensors)})
    assert hp["learning_rate"] == 2e-3 and record == {"used": False, "reason": "adaptive_strategy is off for this scenario"}


def test_advisor_without_an_entry_for_the_model_is_skipped(tmp_path):
    (tmp_path / "strategy.json").write_text(json.dumps({"models": {"audio_service": {}}}))
    hp, record = apply_advice("vision_service", dict(VISION_HP), {"c": ("c/v1", tmp_path)})
    assert hp == VISION_HP and not record["used"] and "vision_service" in record["reason"]


def test_command_written_before_training_started_is_dropped(home, tmp_path, caplog):
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.train_model import control_path, train_or_reuse

    tensors = _vision_bundle().save(tmp_path / "tensors" / "tiny" / "t1")
    ctl = control_path("vision_service")
    ctl.parent.mkdir(parents=True, exist_ok=True)
    write_command(ctl, stop=True)  # nobody was training: must not stop the next run
    with caplog.at_level(logging.WARNING):
        out = train_or_reuse("vision_service", {"tiny": tensors}, {**VISION_HP, "adaptive_strategy": False})
    assert out.epochs_run == VISION_HP["epochs"] and not ctl.exists()
    assert "dropped a control command" in caplog.text
    assert ModelRegistry().get("vision_service", "latest").lineage["control_commands"] == []
