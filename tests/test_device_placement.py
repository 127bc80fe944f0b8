"""What a CUDA run relies on, checked on the CPU: splits copied to the device once, packing and
padding trims that never read device values back, fp32 retrieval metrics under autocast,
TF32 switched on and off around a CUDA fit, NOTEARS kept on the CPU, torch.compile only
where it keeps one graph. tests/test_cuda_steps.py checks the rest on a GPU."""
from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import _train_worker as worker
from unified_pipeline.models import audio_rnn, text_transformer, vision_cnn
from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
from unified_pipeline.training.fit_settings import fit_process_settings
from unified_pipeline.training.trainer import Trainer, TrainerConfig


def test_validation_and_test_splits_are_copied_to_the_device_once(monkeypatch):
    (xt, yt), (xv, yv) = worker.make_data()
    val = (xv, yv)
    moved: dict[int, int] = {}
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if any(self is t for t in val):
            moved[id(self)] = moved.get(id(self), 0) + 1
        return real_to(self, *args, **kwargs)

    trainer = Trainer(worker.build_model(), TrainerConfig(epochs=3, batch_size=32, checkpoint_interval=0),
                      loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn, checkpoint_dir=None)
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    trainer.fit((xt, yt), val)
    trainer.evaluate(val)
    assert moved and max(moved.values()) == 1, moved  # three epochs and a final evaluation, one copy


def _old_pack(rnn, h, n):
    packed = pack_padded_sequence(h, n, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])[0]


def test_packing_without_device_round_trips_matches_torch_packing():
    torch.manual_seed(0)
    rnn = torch.nn.GRU(5, 7, batch_first=True, bidirectional=True)
    h = torch.randn(6, 9, 5, requires_grad=True)
    n = torch.tensor([9, 3, 7, 1, 9, 4])
    ours, theirs = audio_rnn.run_packed(rnn, h, n), _old_pack(rnn, h, n)
    assert torch.equal(ours, theirs)
    g1 = torch.autograd.grad(ours.square().sum(), h)[0]
    g2 = torch.autograd.grad(theirs.square().sum(), h)[0]
    assert torch.equal(g1, g2)


def test_audio_model_declares_host_lengths_and_gives_the_same_output_for_either_placement():
    torch.manual_seed(0)
    model = audio_rnn.AudioRNN(audio_rnn.AudioRNNConfig(num_classes=3, n_mels=8, conv_channels=8, hidden_size=8)).eval()
    x, n = torch.randn(4, 8, 20), torch.tensor([20, 11, 5, 16])
    assert model.host_fields == (1,)
    with torch.no_grad():
        assert torch.equal(model(x, n), model(x, n.to(torch.int32)))


def test_text_padding_trim_only_changes_speed(monkeypatch):
    torch.manual_seed(0)
    cfg = text_transformer.TextTransformerConfig(vocab_size=12, max_len=16, num_classes=2, d_model=16, n_heads=2,
                                                 n_layers=1, ngram_buckets=64, conv_kernel=3)
    model = text_transformer.TextTransformer(cfg).eval()
    x = torch.zeros(3, 16, dtype=torch.long)
    x[0, :5], x[1, :2] = torch.arange(2, 7), torch.tensor([3, 4])  # row 2 is all padding
    assert text_transformer.trim_padding(x).shape == (3, 5)
    with torch.no_grad():
        trimmed = model(x)
        monkeypatch.setattr(text_transformer, "trim_padding", lambda t: t)  # what an accelerator computes
        full = model(x)
    assert torch.allclose(trimmed, full, atol=1e-5)


def test_alpha_recall_is_computed_in_fp32_under_bf16_autocast():
    from test_concept_models import _memory_bundle

    from unified_pipeline.models import alpha_deep_model as A

    bundle = _memory_bundle()
    hp = {**A.SPEC.defaults(), "hidden": 32, "embed_dim": 16}
    torch.manual_seed(0)
    model = A.AlphaDeepModel(A.config_from_bundle("memory", bundle, hp)).eval()
    test = A.memory_split("memory", bundle, "test")
    metric = A.make_metric(hp, test[4].mean(0))
    with torch.no_grad():
        plain = metric(model, test)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = metric(model, test)
    assert under_autocast == plain
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert A.encode(model, test).dtype == torch.bfloat16  # autocast would have changed the codes


def test_tf32_is_on_for_a_cuda_fit_and_restored_after():
    before = torch.get_float32_matmul_precision()
    with fit_process_settings(torch.device("cuda", 0)):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == before
    with fit_process_settings(torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == before


def test_notears_stays_on_the_cpu_and_says_why(monkeypatch):
    from unified_pipeline.models.causal_reasoning import engine_device

    device, why = engine_device("cuda:1")
    assert device == "cpu" and "launch-bound" in why
    assert engine_device("cpu")[0] == "cpu"
    monkeypatch.setenv("UNIFIED_CAUSAL_DEVICE", "job")
    assert engine_device("cuda:1")[0] == "cuda:1"


def test_compile_is_left_off_where_the_graph_breaks(caplog):
    model = audio_rnn.AudioRNN(audio_rnn.AudioRNNConfig(num_classes=3, n_mels=8, conv_channels=8, hidden_size=8))
    with caplog.at_level(logging.INFO):
        trainer = Trainer(model, TrainerConfig(compile=True), loss_fn=cross_entropy_loss,
                          metric_fn=classification_metric_fn, checkpoint_dir=None, log=logging.getLogger("t"))
    assert trainer.net is model
    assert "torch.compile left off for AudioRNN" in caplog.text


def test_vision_augmentation_does_not_recompile(monkeypatch):
    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch.manual_seed(0)
    model = vision_cnn.VisionCNN(vision_cnn.VisionCNNConfig(num_classes=3, image_size=[8, 8], widths=[4, 8],
                                                            blocks_per_stage=1, max_shift=2)).train()
    net = torch.compile(model, backend="eager")
    x = torch.randn(4, 1, 8, 8)
    for _ in range(6):  # six random offsets, one graph
        net(x).sum().backward()
    torch._dynamo.reset()


@pytest.mark.parametrize("fused", [True, False])
def test_recurrent_layer_leaves_autocast_when_it_would_lose_the_fused_kernel(monkeypatch, fused):
    torch.manual_seed(0)
    model = audio_rnn.AudioRNN(audio_rnn.AudioRNNConfig(num_classes=3, n_mels=8, conv_channels=8, hidden_size=8))
    monkeypatch.setattr(audio_rnn, "fused_under_autocast", lambda rnn, device: fused)
    seen = []
    model.rnn.register_forward_hook(lambda _m, args, _out: seen.append(args[0].data.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(4, 8, 20), torch.tensor([20, 11, 5, 16]))
    assert seen == [torch.bfloat16 if fused else torch.float32]
