"""environment_simulator: a probabilistic ensemble world model, one per transitions dataset.

Each member is an MLP with a Gaussian head predicting the normalised state change and reward
(mean and log-variance, trained by Gaussian NLL as in PETS, Chua et al. 2018). The ensemble's
mixture gives the uncertainty: aleatoric (mean of member variances) plus epistemic (variance
of member means). Multi-step rollouts feed predictions back in, one trajectory per member.

Test split = held-out episodes. Headline `mse_ratio_vs_copy` is the WORST (max) over datasets
of one-step MSE divided by the copy-the-last-state baseline's MSE (lower is better; < 0.1
means at least 10x better than copying). Errors are in units of the per-dimension state std.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.spec import ModelSpec
from unified_pipeline.training import trainer as trainer_mod
from unified_pipeline.training.job import FitJob, FitResult

FIELDS = ("state", "action", "next_state", "reward", "episode")
STATS = ("state_mean", "state_std", "action_mean", "action_std", "delta_mean", "delta_std", "reward_mean", "reward_std")
Z90 = 1.6448536269514722  # two-sided 90% interval of a Gaussian


@dataclass
class EnvSimConfig:
    worlds: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> {state_dim, action_dim}
    members: int = 5
    hidden: int = 128
    layers: int = 3


@dataclass
class EnvSimSettings(EnvSimConfig):
    horizons: list[int] = field(default_factory=lambda: [10, 30])  # open-loop rollout lengths scored on test


class EnsembleLinear(nn.Module):
    def __init__(self, members: int, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, n_out))
        nn.init.trunc_normal_(self.weight, std=1.0 / (2 * math.sqrt(n_in)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [E, B, in] -> [E, B, out]
        return torch.baddbmm(self.bias, x, self.weight)


class WorldModel(nn.Module):
    """Ensemble for one environment; holds its own normalisation statistics as buffers."""

    def __init__(self, state_dim: int, action_dim: int, members: int, hidden: int, layers: int):
        super().__init__()
        self.state_dim, self.members = state_dim, members
        out = state_dim + 1
        dims = [state_dim + action_dim] + [hidden] * layers
        self.body = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims, dims[1:]))
        self.head = EnsembleLinear(members, hidden, 2 * out)
        # Learned soft bounds keep the predicted variance finite where data is sparse.
        self.max_logvar = nn.Parameter(torch.full((out,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out,), -10.0))
        for name in STATS:
            size = action_dim if name.startswith("action") else (1 if name.startswith("reward") else state_dim)
            self.register_buffer(name, torch.zeros(size) if name.endswith("mean") else torch.ones(size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised [state, action] of shape [B, in] or [E, B, in] -> mean, logvar [E, B, S+1]."""
        h = x.expand(self.members, *x.shape) if x.ndim == 2 else x
        for layer in self.body:
            h = nn.functional.silu(layer(h))
        mean, logvar = self.head(h).chunk(2, dim=-1)
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar

    def inputs(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.cat([(state - self.state_mean) / self.state_std, (action - self.action_mean) / self.action_std], -1)

    def targets(self, state, next_state, reward) -> torch.Tensor:
        delta = (next_state - state - self.delta_mean) / self.delta_std
        return torch.cat([delta, ((reward - self.reward_mean) / self.reward_std).unsqueeze(-1)], -1)

    def step(self, state: torch.Tensor, action: torch.Tensor):
        """state [E, B, S] per member -> next state, reward [E, B] and per-member std of both (raw units)."""
        mean, logvar = self(self.inputs(state, action))
        std = (0.5 * logvar).exp()
        s = self.state_dim
        nxt = state + mean[..., :s] * self.delta_std + self.delta_mean
        rew = mean[..., s] * self.reward_std + self.reward_mean
        return nxt, rew, std[..., :s] * self.delta_std, std[..., s] * self.reward_std


def gaussian_nll(model: WorldModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    mean, logvar = model(x)
    nll = (((mean - y) ** 2) * torch.exp(-logvar) + logvar).mean()
    return nll + 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())


@torch.no_grad()
def normalised_mse(model: WorldModel, data: tuple[torch.Tensor, ...]) -> dict[str, float]:
    x, y = data
    mean, logvar = model(x)
    nll = float((((mean - y) ** 2) * torch.exp(-logvar) + logvar).mean())
    return {"loss": nll, "mse": float(((mean.mean(0) - y) ** 2).mean())}


@register_architecture("environment_simulator")
class EnvironmentSimulator(BaseModel):
    config_cls = EnvSimConfig

    def __init__(self, config: EnvSimConfig):
        super().__init__(config)
        self.worlds = nn.ModuleDict({
            name: WorldModel(w["state_dim"], w["action_dim"], config.members, config.hidden, config.layers)
            for name, w in config.worlds.items()
        })

    def world(self, dataset: str | None) -> WorldModel:
        if dataset is None and len(self.worlds) == 1:
            return next(iter(self.worlds.values()))
        if dataset is None:
            raise ConfigError(f"environment_simulator holds several datasets; name one of {sorted(self.worlds)}")
        if dataset not in self.worlds:
            raise ConfigError(f"environment_simulator: dataset {dataset!r} unknown; known: {sorted(self.worlds)}")
        return self.worlds[dataset]


class Rollout(tuple):
    """What `simulate` returns: unpacks as (states, rewards, uncertainty); `reward_std` rides along.

    The reward's std is an attribute rather than a fourth element so that three-way unpacking
    (the documented API) keeps working."""

    def __new__(cls, states: torch.Tensor, rewards: torch.Tensor, uncertainty: torch.Tensor, reward_std: torch.Tensor):
        self = super().__new__(cls, (states, rewards, uncertainty))
        self.reward_std = reward_std
        return self

    states = property(lambda self: self[0])
    rewards = property(lambda self: self[1])
    uncertainty = property(lambda self: self[2])


def total_std(mean_per_member: torch.Tensor, std_per_member: torch.Tensor) -> torch.Tensor:
    """Std of the ensemble mixture: spread of member means plus mean predicted noise variance."""
    return (mean_per_member.var(0, unbiased=False) + (std_per_member ** 2).mean(0)).sqrt()


@torch.no_grad()
def simulate(model: EnvironmentSimulator, state: torch.Tensor, actions: torch.Tensor,
             dataset: str | None = None) -> Rollout:
    """Open-loop rollout. state [S] or [B, S]; actions [H, A] or [B, H, A].

    Returns a `Rollout` = (states [.., H, S], rewards [.., H], uncertainty [.., H, S]) with
    `.reward_std` [.., H]: the ensemble mean prediction after each action and the total std
    (member spread + predicted noise) of the state and of the reward.
    """
    world = model.world(dataset)
    single = actions.ndim == 2
    if single:
        actions = actions.unsqueeze(0)
    if state.ndim == 1:
        state = state.unsqueeze(0).expand(actions.shape[0], -1)
    if actions.ndim != 3 or state.shape[0] != actions.shape[0] or state.shape[-1] != world.state_dim:
        raise ConfigError(f"simulate: state {tuple(state.shape)} and actions {tuple(actions.shape)} do not match "
                          f"state_dim={world.state_dim} and [B, H, A] / [H, A]")
    dev = world.state_mean.device
    cur = state.to(dev, torch.float32).expand(world.members, *state.shape).clone()
    states, rewards, stds, r_stds = [], [], [], []
    for t in range(actions.shape[1]):
        a = actions[:, t].to(dev, torch.float32).expand(world.members, *actions[:, t].shape)
        cur, rew, s_std, r_std = world.step(cur, a)
        states.append(cur.mean(0))
        rewards.append(rew.mean(0))
        stds.append(total_std(cur, s_std))
        r_stds.append(total_std(rew, r_std))
    out = torch.stack(states, -2), torch.stack(rewards, -1), torch.stack(stds, -2), torch.stack(r_stds, -1)
    return Rollout(*(o[0] for o in out)) if single else Rollout(*out)


def _check_bundle(name: str, bundle) -> None:
    for split in ("train", "val", "test"):
        tensors = bundle.split(split)
        for f in FIELDS:
            if f not in tensors:
                raise DatasetError(f"{name}: tensor '{split}/{f}' missing; have {sorted(bundle.tensors)}")
        n = tensors["state"].shape[0]
        for f in FIELDS:
            if tensors[f].shape[0] != n:
                raise DatasetError(f"{name}: tensor '{split}/{f}' has {tensors[f].shape[0]} rows, '{split}/state' has {n}")
        if tensors["next_state"].shape != tensors["state"].shape or tensors["action"].ndim != 2:
            raise DatasetError(f"{name}: '{split}/next_state' must match '{split}/state' and '{split}/action' be [N, A]")
    for key in STATS:
        if key not in bundle.meta:
            raise DatasetError(f"{name}: meta field {key!r} missing (needed to normalise transitions)")


def episode_windows(tensors: dict, horizon: int) -> tuple[torch.Tensor, int]:
    """Start rows of every run of `horizon` consecutive transitions inside one test episode."""
    ep = tensors["episode"]
    cont = (ep[1:] == ep[:-1]) & torch.isclose(tensors["state"][1:], tensors["next_state"][:-1], atol=1e-5).all(-1)
    cont = cont.tolist()  # one read-back, not one per row
    run = [0] * len(ep)  # consecutive rows reachable from each row
    for i in range(len(ep) - 1, -1, -1):
        run[i] = 1 + (run[i + 1] if i + 1 < len(ep) and cont[i] else 0)
    starts = torch.tensor([i for i, r in enumerate(run) if r >= horizon], dtype=torch.long, device=ep.device)
    return starts, len(starts)


@torch.no_grad()
def evaluate_world(model: EnvironmentSimulator, name: str, tensors: dict, horizons: list[int]) -> dict[str, float]:
    world = model.world(name)
    dev = world.state_mean.device
    s, a, ns, r = (tensors[k].to(dev, torch.float32) for k in ("state", "action", "next_state", "reward"))
    nxt, rew, s_std, r_std = world.step(s.expand(world.members, *s.shape), a.expand(world.members, *a.shape))
    pred, pred_std = nxt.mean(0), total_std(nxt, s_std)
    scale = world.state_std
    m = {"one_step_mse": float((((pred - ns) / scale) ** 2).mean()),
         "copy_mse": float((((s - ns) / scale) ** 2).mean()),
         "reward_mse": float(((rew.mean(0) - r) ** 2).mean()),
         "reward_mean_baseline_mse": float(((r - world.reward_mean) ** 2).mean()),
         "calibration_90": float(((ns - pred).abs() <= Z90 * pred_std).float().mean()),
         "reward_calibration_90": float(((r - rew.mean(0)).abs() <= Z90 * total_std(rew, r_std)).float().mean()),
         "test_transitions": float(len(s))}
    m["mse_ratio_vs_copy"] = m["one_step_mse"] / max(m["copy_mse"], 1e-12)
    for h in horizons:
        starts, count = episode_windows(tensors, h)
        m[f"rollout_windows_h{h}"] = float(count)
        if count == 0:
            continue
        idx = starts.unsqueeze(1) + torch.arange(h)  # [W, H]
        states, _, _ = simulate(model, s[starts], a[idx], dataset=name)
        true_end = ns[idx[:, -1]]
        m[f"rollout_mse_h{h}"] = float((((states[:, -1] - true_end) / scale) ** 2).mean())
        m[f"rollout_copy_mse_h{h}"] = float((((s[starts] - true_end) / scale) ** 2).mean())
    return m


def _plot_rollouts(path, model: EnvironmentSimulator, name: str, tensors: dict, horizon: int, columns: list[str]) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts, count = episode_windows(tensors, horizon)
    if count == 0:
        starts, count = episode_windows(tensors, 5)
        horizon = 5
        if count == 0:
            return False
    i0 = int(starts[0])
    idx = torch.arange(i0, i0 + horizon)
    states, _, std = simulate(model, tensors["state"][i0], tensors["action"][idx], dataset=name)
    true = tensors["next_state"][idx]
    dims = true.shape[1]
    fig, axes = plt.subplots(1, dims, figsize=(3.2 * dims, 3), squeeze=False)
    t = range(1, horizon + 1)
    for k, ax in enumerate(axes[0]):
        ax.plot(t, true[:, k].cpu(), "k-", label="true")
        ax.plot(t, states[:, k].cpu(), "C0--", label="predicted")
        ax.fill_between(t, (states[:, k] - Z90 * std[:, k]).cpu(), (states[:, k] + Z90 * std[:, k]).cpu(),
                        color="C0", alpha=0.2, label="90% interval")
        ax.set_title(columns[k] if k < len(columns) else f"state_{k}", fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{name}: open-loop rollout on a held-out episode")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return True


def fit(job: FitJob) -> FitResult:
    hp = SPEC.resolve(job.hparams)
    if not job.datasets:
        raise ConfigError("environment_simulator needs at least one transitions dataset")
    for name, bundle in job.datasets.items():
        _check_bundle(name, bundle)
    torch.manual_seed(job.seed)
    start = time.monotonic()
    worlds = {name: {"state_dim": int(b.tensors["train/state"].shape[1]), "action_dim": int(b.tensors["train/action"].shape[1])}
              for name, b in sorted(job.datasets.items())}
    model = EnvironmentSimulator(EnvSimConfig(worlds=worlds, members=int(hp["members"]), hidden=int(hp["hidden"]),
                                              layers=int(hp["layers"]))).to(job.device)
    metrics: dict[str, float] = {}
    history: list[dict] = []
    plots = {}
    epochs_run, throughput = 0, []
    for name, bundle in sorted(job.datasets.items()):
        world = model.worlds[name]
        for key in STATS:
            getattr(world, key).copy_(torch.as_tensor(bundle.meta[key], dtype=torch.float32).reshape(-1))
        world.state_std.clamp_(min=1e-6), world.action_std.clamp_(min=1e-6)
        world.delta_std.clamp_(min=1e-6), world.reward_std.clamp_(min=1e-6)
        data = {}
        for split in ("train", "val"):
            t = {k: v.to(job.device, torch.float32) for k, v in bundle.split(split).items() if k != "episode"}
            data[split] = (world.inputs(t["state"], t["action"]), world.targets(t["state"], t["next_state"], t["reward"]))
        cfg = trainer_mod.TrainerConfig.from_hparams(
            hp, device=job.device, seed=job.seed, metric="mse", higher_is_better=False)

        def on_epoch(rec, _name=name):
            if job.on_epoch:
                job.on_epoch({**rec, "dataset": _name})

        trainer = trainer_mod.Trainer(world, cfg, loss_fn=gaussian_nll, metric_fn=normalised_mse,
                                      checkpoint_dir=job.checkpoint_dir / name, log=job.log, on_epoch=on_epoch,
                                      control_file=job.control_file)
        summary = trainer.fit(data["train"], data["val"])
        history.extend({**rec, "dataset": name} for rec in summary.history)
        epochs_run += summary.epochs_run
        throughput.append(summary.samples_per_s)
        world.eval()
        test = {k: v.to(job.device) for k, v in bundle.split("test").items()}
        m = evaluate_world(model, name, test, [int(h) for h in hp["horizons"]])
        metrics.update({f"{name}/{k}": v for k, v in m.items()})
        job.log.info("environment_simulator %s: %s", name, {k: round(v, 4) for k, v in m.items()})
        path = job.out_dir / "plots" / f"{name}_rollout.png"
        if _plot_rollouts(path, model, name, test, max(int(h) for h in hp["horizons"]),
                          list(bundle.meta.get("state_columns", []))):
            plots[f"{name} rollout"] = path
    names = sorted(worlds)
    metrics["mse_ratio_vs_copy"] = max(metrics[f"{n}/mse_ratio_vs_copy"] for n in names)
    metrics["one_step_mse"] = sum(metrics[f"{n}/one_step_mse"] for n in names) / len(names)
    metrics["calibration_90"] = min(metrics[f"{n}/calibration_90"] for n in names)
    metrics["reward_calibration_90"] = min(metrics[f"{n}/reward_calibration_90"] for n in names)
    for h in (int(h) for h in hp["horizons"]):  # worst dataset among those with episodes long enough for the horizon
        for key in (f"rollout_mse_h{h}", f"rollout_copy_mse_h{h}"):
            found = [metrics[f"{n}/{key}"] for n in names if f"{n}/{key}" in metrics]
            if found:
                metrics[key] = max(found)
    baseline = {f"{n}/copy_mse": metrics[f"{n}/copy_mse"] for n in names}
    baseline["one_step_mse"] = sum(baseline.values()) / len(names)
    baseline.update({k.replace("_copy_mse", "_mse"): v for k, v in metrics.items() if k.startswith("rollout_copy_mse")})
    columns = {n: {"state": list(job.datasets[n].meta.get("state_columns") or []),
                   "action": list(job.datasets[n].meta.get("action_columns") or [])} for n in names}
    model.save(job.out_dir, extra={"datasets": names, "columns": columns})
    result_metrics = {"test": metrics, "baseline": baseline}
    wall = time.monotonic() - start
    return FitResult(metrics=result_metrics, history=history, param_count=model.num_parameters(),
                     epochs_run=epochs_run, samples_per_s=sum(throughput) / max(len(throughput), 1),
                     wall_time_s=wall, device=str(job.device), plots=plots,
                     notes={"headline": "mse_ratio_vs_copy = worst one-step MSE / copy-last-state MSE over datasets",
                            "baseline": "copy the last state"})


# simulator_queries.SPEC adds predict (the registry names that module).
SPEC = ModelSpec(
    settings=EnvSimSettings, fit=fit, derived=("worlds",),
    trainer_defaults={"epochs": 40, "batch_size": 256, "learning_rate": 2e-3, "weight_decay": 1e-5,
                      "early_stopping_patience": 8},
)
