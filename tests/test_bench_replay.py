"""The overhead benchmark records the training a step does and redoes the same work without it."""
import numpy as np
import torch

from bench.replay import plain_fit, plain_solve, recording
from unified_pipeline.models import causal_reasoning
from unified_pipeline.models.notears import LagrangianSettings
from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
from unified_pipeline.training.trainer import Trainer
from unified_pipeline.training.trainer_config import TrainerConfig


def _trainer(model, **cfg):
    return Trainer(model, TrainerConfig(epochs=3, batch_size=16, warmup_epochs=0, **cfg), loss_fn=cross_entropy_loss,
                   metric_fn=classification_metric_fn, checkpoint_dir=None)


def test_replay_trains_the_recorded_module_from_its_initial_weights_on_the_same_samples():
    torch.manual_seed(0)
    x = torch.randn(65, 4)  # 4 full batches and a lone sample the trainer leaves out
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with recording() as rec:
        _trainer(model).fit((x, y), (x, y))
    (call,) = rec.trainers
    assert call.summary is not None and len(call.summary.history) == 3
    for k, v in call.initial.state_dict().items():  # a copy taken before training, not the trained module
        assert torch.equal(v, before[k]) and not torch.equal(v, model.state_dict()[k])
    asset_samples, asset_seconds = call.samples_and_time()
    samples, seconds, wall = plain_fit(call)
    assert samples == round(asset_samples) == 3 * 64
    assert 0 < seconds <= wall and asset_seconds > 0
    # the replay trains a copy: the recorded starting point stays as it was
    assert all(torch.equal(v, before[k]) for k, v in call.initial.state_dict().items())


def test_an_unfinished_run_is_recorded_but_not_replayed():
    class Stop(BaseException):
        pass

    def stop(_record):
        raise Stop

    x, y = torch.randn(32, 4), torch.zeros(32, dtype=torch.long)
    trainer = _trainer(torch.nn.Linear(4, 2))
    trainer.on_epoch = stop
    with recording() as rec:
        try:
            trainer.fit((x, y), (x, y))
        except Stop:
            pass
    assert len(rec.trainers) == 1 and rec.finished() == []


def test_solver_calls_are_recorded_and_restored():
    original = causal_reasoning.notears_linear
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 1))
    z = torch.as_tensor(np.hstack([a, 2 * a + 0.1 * rng.normal(size=(200, 1))]), dtype=torch.float64)
    steps = []
    with recording() as rec:
        w, _ = causal_reasoning.notears_linear(z, 0.1, LagrangianSettings(max_outer=5), lambda *a: steps.append(a))
    assert causal_reasoning.notears_linear is original
    (call,) = rec.solvers
    assert call.solver == "notears_linear" and call.rows == 200 and call.seconds > 0 and steps
    assert max(abs(w[0, 1]), abs(w[1, 0])) > 0.3  # the recorded call did the real solve
    assert plain_solve(call) > 0


def test_median_interval_holds_the_median_is_seeded_and_narrows_with_agreeing_pairs():
    import statistics

    from bench.overhead import median_interval

    scattered = [0.93, 0.95, 1.01, 0.88, 1.05, 0.91, 0.99]
    low, high = median_interval(scattered)
    assert low <= statistics.median(scattered) <= high and (low, high) == median_interval(scattered)
    agreeing = [0.98, 0.99, 1.0, 1.0, 1.01, 1.02, 0.99]
    a_low, a_high = median_interval(agreeing)
    assert a_high - a_low < high - low
    assert median_interval([0.9, 1.1]) == (0.9, 1.1)  # too few pairs to resample: the range
