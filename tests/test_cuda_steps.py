"""On a CUDA device only (skipped elsewhere; run by bench/gpu_session.sh): training steps that
never wait for the GPU, the GRU on cuDNN's fused kernel under bf16 autocast, leases that make
their GPU the current device, and shards streamed to the GPU.

"Never wait" is measured with torch's sync debug mode: the number of synchronising calls in a
whole fit must not grow with the number of steps (evaluation and the end of an epoch may read
values back; a step may not)."""
from __future__ import annotations

import warnings

import pytest
import torch

from unified_pipeline.models import alpha_deep_model as A
from unified_pipeline.models import audio_rnn, environment_simulator as E, text_transformer, vision_cnn
from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
from unified_pipeline.training.trainer import Trainer, TrainerConfig

pytestmark = pytest.mark.cuda
N = 512


def _classifier_case(name):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (N,), generator=g)
    if name == "vision":
        model = vision_cnn.VisionCNN(vision_cnn.VisionCNNConfig(num_classes=3, image_size=[8, 8], widths=[8, 16]))
        inputs = (torch.randn(N, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1),)
    elif name == "audio":
        model = audio_rnn.AudioRNN(audio_rnn.AudioRNNConfig(num_classes=3, n_mels=8, conv_channels=16, hidden_size=16))
        inputs = (torch.randn(N, 8, 24, generator=g) + y.view(-1, 1, 1), torch.randint(6, 25, (N,), generator=g))
    else:
        cfg = text_transformer.TextTransformerConfig(vocab_size=12, max_len=16, num_classes=3, d_model=16,
                                                     n_heads=2, n_layers=1, ngram_buckets=256)
        model = text_transformer.TextTransformer(cfg)
        x = torch.randint(2, 12, (N, 16), generator=g)
        x[:, 10:] = 0
        x[:, 0] = y + 2
        inputs = (x,)
    data = (*inputs, y)
    return model, cross_entropy_loss, classification_metric_fn, data, "accuracy", True


def _world_case():
    from test_concept_models import _spring_bundle

    bundle = _spring_bundle(episodes=30, steps=40)
    world = E.WorldModel(2, 1, members=3, hidden=32, layers=2)
    t = bundle.split("train")
    data = (world.inputs(t["state"], t["action"]), world.targets(t["state"], t["next_state"], t["reward"]))
    return world, E.gaussian_nll, E.normalised_mse, data, "mse", False


def _alpha_case():
    from test_concept_models import _memory_bundle

    bundle = _memory_bundle(n=600)
    hp = {**A.SPEC.defaults(), "hidden": 32, "embed_dim": 16}
    model = A.AlphaDeepModel(A.config_from_bundle("memory", bundle, hp))
    train = A.memory_split("memory", bundle, "train")
    return model, A.make_loss(hp), A.make_metric(hp, train[4].mean(0)), train, "selection_score", True


CASES = {"vision": lambda: _classifier_case("vision"), "audio": lambda: _classifier_case("audio"),
         "text": lambda: _classifier_case("text"), "environment_world": _world_case, "alpha": _alpha_case}


def _syncs_in_fit(case, steps_per_epoch: int) -> tuple[int, int]:
    torch.manual_seed(0)
    model, loss_fn, metric_fn, data, metric, higher = case()
    n = len(data[0])
    cut = n * 3 // 4
    train, val = tuple(t[:cut] for t in data), tuple(t[cut:] for t in data)
    batch_size = max(2, cut // steps_per_epoch)
    cfg = TrainerConfig(epochs=2, batch_size=batch_size, device="cuda:0", precision="bf16", checkpoint_interval=0,
                        metric=metric, higher_is_better=higher)
    trainer = Trainer(model, cfg, loss_fn=loss_fn, metric_fn=metric_fn, checkpoint_dir=None)
    steps = 2 * (cut // batch_size + (1 if cut % batch_size >= 2 else 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(train, val)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), steps


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_steps_never_wait_for_the_gpu(name):
    few, few_steps = _syncs_in_fit(CASES[name], steps_per_epoch=4)
    many, many_steps = _syncs_in_fit(CASES[name], steps_per_epoch=40)
    extra_steps = many_steps - few_steps
    assert extra_steps >= 60
    # A read-back in every step would add one sync per extra step; allow a few for batch shapes.
    assert many - few < extra_steps // 4, (name, few, many, few_steps, many_steps)


def _autograd_names(t: torch.Tensor, depth: int = 12) -> set[str]:
    seen, frontier = set(), [t.grad_fn]
    for _ in range(depth):
        nxt = []
        for fn in frontier:
            if fn is None:
                continue
            seen.add(type(fn).__name__)
            nxt += [f for f, _ in fn.next_functions]
        frontier = nxt
    return seen


def test_gru_under_bf16_autocast_stays_on_the_fused_cudnn_kernel():
    model = audio_rnn.AudioRNN(audio_rnn.AudioRNNConfig(num_classes=3, n_mels=8, conv_channels=16,
                                                        hidden_size=16)).cuda().train()
    x = torch.randn(8, 8, 24, device="cuda")
    lengths = torch.randint(6, 25, (8,))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, lengths)
    names = _autograd_names(out, depth=40)
    assert any("CudnnRnn" in n for n in names), sorted(names)
    print("bf16 autocast GRU fused by cuDNN:", audio_rnn.fused_under_autocast("gru", torch.device("cuda:0")))


def test_lease_makes_its_gpu_current(tmp_path, monkeypatch):
    from unified_pipeline import devices

    monkeypatch.setenv("UNIFIED_SLOTS_PER_GPU", "1")
    count = torch.cuda.device_count()
    with devices.lease(tmp_path) as lease:
        assert lease.device.startswith("cuda:")
        assert torch.cuda.current_device() == int(lease.device.split(":")[1]) < count
        pinned = torch.empty(4).pin_memory()
        assert pinned.is_pinned()


def test_shards_streamed_to_the_gpu_train_like_the_split_held_on_it(tmp_path, monkeypatch):
    """uint8 shards read by loader workers, pinned, and decoded on the GPU reach the weights the
    same split copied to the GPU whole reaches (within cuDNN's run-to-run float differences)."""
    from test_shards import fit_in_memory_then_streamed

    from unified_pipeline.training import trainer as trainer_module

    pinned = []
    real_stream = trainer_module.stream_batches

    def watched(*args, **kwargs):
        loader = real_stream(*args, **kwargs)
        pinned.append(loader.pin_memory)
        return loader

    monkeypatch.setattr(trainer_module, "stream_batches", watched)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    weights = fit_in_memory_then_streamed(tmp_path, device="cuda:0", checkpoint_interval=0)
    assert True in pinned, "the streamed run did not go through a pinned DataLoader"
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, rtol=1e-4, atol=1e-5, msg=k)
