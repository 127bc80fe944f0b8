"""The bf16 autocast path that CUDA runs by default, exercised on the CPU: one short fit per
service model under `torch.autocast("cpu", dtype=torch.bfloat16)`; the loss falls and the
saved weights are fp32 (autocast computes in bf16, parameters and saved state stay fp32)."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from test_models import AUDIO_CFG, DIGITS, _bundle, _job, _write_clips, _write_images
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.models import audio_rnn, multimodal_fusion, text_transformer, vision_cnn

BF16 = {"epochs": 4, "batch_size": 16, "learning_rate": 5e-3, "checkpoint_interval": 0,
        "early_stopping_patience": 0, "precision": "bf16"}


def _saved_dtypes(out_dir) -> set[torch.dtype]:
    with safe_open(str(out_dir / "weights.safetensors"), framework="pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}


def _check(result, out_dir):
    losses = [r["train_loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    assert _saved_dtypes(out_dir) == {torch.float32}
    assert result.device == "cpu"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three encoders fitted in bf16; the fusion test builds on them."""
    work = tmp_path_factory.mktemp("bf16")
    _write_images(work / "raw" / "bars", per_class=12)
    _write_clips(work / "raw" / "tones", per_class=12)
    root = work / "raw" / "numbers"
    root.mkdir(parents=True)
    from unified_pipeline.datasets.samples.number_words import number_word_rows
    import csv

    with open(root / "data.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(r for r in number_word_rows() if r[1] in DIGITS)
    bundles = {"bars": _bundle("vision", work / "raw" / "bars"),
               "tones": _bundle("audio", work / "raw" / "tones", AUDIO_CFG),
               "numbers": _bundle("text", root, PreprocessConfig(max_text_len=16))}
    text_hp = {**BF16, "d_model": 16, "n_heads": 2, "n_layers": 1, "ngram_buckets": 256}
    out = {}
    for name, module, ds, hp in [("vision_service", vision_cnn, "bars", {**BF16, "widths": [8, 16], "blocks_per_stage": 1}),
                                 ("audio_service", audio_rnn, "tones", {**BF16, "hidden_size": 16, "conv_channels": 16}),
                                 ("text_service", text_transformer, "numbers", text_hp)]:
        job = _job(work, name, {ds: bundles[ds]}, dict(hp))
        out[name] = (module.fit(job), job.out_dir)
    return work, bundles, out


@pytest.mark.parametrize("name", ["vision_service", "audio_service", "text_service"])
def test_encoder_trains_under_cpu_bf16_autocast(trained, name):
    _work, _bundles, out = trained
    _check(*out[name])


def test_fusion_trains_under_cpu_bf16_autocast(trained):
    work, bundles, out = trained
    hp = {**BF16, "epochs": 3, "pairs_train": 240, "pairs_eval": 48}
    upstream = {m: out[m][1] for m in ("vision_service", "audio_service", "text_service")}
    job = _job(work, "multimodal_service", dict(bundles), hp, upstream)
    _check(multimodal_fusion.fit(job), job.out_dir)


def test_bf16_autocast_really_runs_in_bf16_on_cpu():
    """Guards the premise: CPU autocast lowers matmuls to bf16, so the fits above took that path."""
    layer = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.ones(2, 8)).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32
