"""Warm start: fine-tune the production version on new samples plus a replayed share of old ones.

`plan_warm_start` (called by train_model before anything trains) decides from the sample sets of
the tensors production was trained on and the current ones; `apply_warm_start` (called by
`fit_classifier`) loads the parent's weights and picks the rows to train on. Either side falls
back to training from scratch with a reason, and the reason ends up in the version's lineage.

Hyperparameters (all optional): warm_start (default true), warm_start_max_change (0.2, fraction of
samples added, removed or changed), warm_start_replay (0.3, share of old train samples replayed),
warm_start_epochs (max(3, epochs // 4)), warm_start_lr_scale (0.3, times the learning rate).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified_pipeline.errors import ConfigError
from unified_pipeline.hashing import combine
from unified_pipeline.manifest_files import manifest_path, read_values
from unified_pipeline.registry.incremental import warm_start_decision, warm_start_record
from unified_pipeline.training.trainer_config import as_flag

# Meta facts that fix what an input row or an output unit means: if any differs, old weights
# would read the new tensors wrongly. mean/std may drift; fine-tuning absorbs that.
ENCODING_KEYS = ("classes", "vocab", "tokenizer", "max_len", "channels", "image_size", "n_mels", "sample_rate",
                 "hop_length", "n_fft", "win_length", "frames", "max_samples")
WARM_PREFIX = "warm_start"  # these settings join a run's fingerprint only when it warm-starts
DEFAULT_MAX_CHANGE = 0.2
DEFAULT_REPLAY = 0.3
DEFAULT_LR_SCALE = 0.3


@dataclass(frozen=True)
class WarmStart:
    """What fit_classifier needs to fine-tune: the parent's folder and which train samples are new."""

    parent: str  # "model/vN"
    parent_dir: Path
    dataset: str
    new_train_ids: frozenset[str]


@dataclass
class WarmStartPlan:
    used: bool
    fraction: float
    max_change: float
    reason: str
    candidate: str | None = None  # the production version considered as the starting point
    spec: WarmStart | None = None
    applied: dict[str, Any] = field(default_factory=dict)  # what fit reported (rows, epochs, lr)

    def record(self) -> dict[str, Any]:
        """The lineage entry (registry.incremental.warm_start_record plus how it was carried out)."""
        used = self.used and self.applied.get("used", True)
        out = warm_start_record(used, self.fraction, self.max_change, self.candidate)
        out["reason"] = self.applied.get("reason") or self.reason
        out["candidate"] = self.candidate
        out.update({k: v for k, v in self.applied.items() if k not in ("used", "reason")})
        return out


def warm_fingerprint(base: str, parent: str, hparams: dict) -> str:
    """Fingerprint of a run that fine-tunes `parent` on the inputs that `base` covers."""
    warm = {k: v for k, v in sorted(hparams.items()) if k.startswith(WARM_PREFIX)}
    return combine([base, f"warm_start_from:{parent}", json.dumps(warm, sort_keys=True, default=str)])


def fine_tuned_on(production: Any, base_fp: str, hparams: dict) -> bool:
    """Production was fine-tuned on exactly the inputs `base_fp` covers (so nothing changed since)."""
    return (production is not None and as_flag(hparams.get("warm_start", True))
            and production.lineage.get("base_fingerprint") == base_fp)


def _fraction(hparams: dict, key: str, default: float) -> float:
    try:
        value = float(hparams.get(key, default))
    except (TypeError, ValueError):
        raise ConfigError(f"hyperparameter {key!r} must be a number in [0, 1], got {hparams.get(key)!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"hyperparameter {key!r} must be in [0, 1], got {value}")
    return value


def sample_keys(tensor_dir: Path) -> dict[str, dict[str, str]]:
    """{split: {sample id: key}}; the key adds content hash and label from the manifest when it exists,
    so an edited or relabelled file counts as changed even though its id stayed."""
    tensor_dir = Path(tensor_dir)
    samples = json.loads((tensor_dir / "samples.json").read_text(encoding="utf-8"))
    meta = json.loads((tensor_dir / "meta.json").read_text(encoding="utf-8"))
    content: dict[str, str] = {}
    version = str(meta.get("data_version", ""))
    manifest = manifest_path(str(meta.get("dataset", tensor_dir.parent.name)), version)
    if version and manifest.is_file():
        values, _record = read_values(manifest, ("sample_id", "sha256", "label"))
        for sid, sha, label in zip(values["sample_id"], values["sha256"], values["label"]):
            content[str(sid)] = f"{sha}:{label}"
    return {split: {str(s): f"{s}:{content.get(str(s), '')}" for s in ids} for split, ids in samples.items()}


def _all_keys(keys: dict[str, dict[str, str]], hashed: bool) -> set[str]:
    return {(k if hashed else sid) for part in keys.values() for sid, k in part.items()}


def plan_warm_start(entry: Any, tensor_dirs: dict[str, Path], hparams: dict, production: Any, registry: Any) -> WarmStartPlan:
    """Decide warm start vs scratch for `entry` (a ModelEntry) given the production Version (or None)."""
    max_change = _fraction(hparams, "warm_start_max_change", DEFAULT_MAX_CHANGE)

    def scratch(reason: str, fraction: float = 1.0) -> WarmStartPlan:
        return WarmStartPlan(False, fraction, max_change, reason, candidate=production.name if production else None)

    if not as_flag(hparams.get("warm_start", True)):
        return scratch("disabled by hyperparameter warm_start")
    if entry.upstream_models or not entry.spec().warm_start or len(tensor_dirs) != 1:
        return scratch(f"not applicable to {entry.name} (only single-dataset classifiers whose SPEC "
                       f"allows warm_start, without upstream models)")
    if production is None:
        return scratch("no production version to start from")
    (dataset, new_dir), = tensor_dirs.items()
    new_dir = Path(new_dir)
    old_name = (production.lineage.get("data_versions") or {}).get(dataset)
    if not old_name:
        return scratch(f"{production.name} was not trained on dataset {dataset!r}")
    if old_name == new_dir.name:
        return scratch(f"data unchanged since {production.name}; code or hyperparameters changed", 0.0)
    old_dir = new_dir.parent / old_name
    if not (old_dir / "samples.json").is_file() or not (new_dir / "samples.json").is_file():
        return scratch(f"no samples.json to compare ({old_dir} or {new_dir}); cannot tell what changed")
    old_meta = json.loads((old_dir / "meta.json").read_text(encoding="utf-8"))
    new_meta = json.loads((new_dir / "meta.json").read_text(encoding="utf-8"))
    changed = [k for k in ENCODING_KEYS if old_meta.get(k) != new_meta.get(k)]
    if changed:
        return scratch(f"tensor encoding changed since {production.name}: {', '.join(changed)}")
    old_keys, new_keys = sample_keys(old_dir), sample_keys(new_dir)
    hashed = all(k.split(":")[-1] for part in (*old_keys.values(), *new_keys.values()) for k in part.values())
    prev, new = _all_keys(old_keys, hashed), _all_keys(new_keys, hashed)
    used, fraction = warm_start_decision(prev, new, max_change)
    if not used:
        return scratch(f"data changed by {fraction:.1%}, not below the limit {max_change:.0%}", fraction)
    new_train = frozenset(sid for sid, key in new_keys.get("train", {}).items() if (key if hashed else sid) not in prev)
    parent_dir = registry.model_dir(production.model, production.number)  # checksums verified here
    spec = WarmStart(parent=production.name, parent_dir=Path(parent_dir), dataset=dataset, new_train_ids=new_train)
    reason = f"data changed by {fraction:.1%} < {max_change:.0%}: fine-tune {production.name}"
    return WarmStartPlan(True, fraction, max_change, reason, candidate=production.name, spec=spec)


def _load_parent(model: Any, parent_dir: Path) -> str | None:
    """Load the parent's weights into `model`; a reason string when they do not fit."""
    from safetensors.torch import load_file

    try:
        cfg = json.loads((parent_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"cannot read {parent_dir / 'config.json'}: {exc}"
    if cfg.get("architecture") != getattr(model, "architecture", None):
        return f"architecture {cfg.get('architecture')!r} of the parent differs from {model.architecture!r}"
    mine = model.config_dict()
    diff = sorted(k for k in set(mine) | set(cfg.get("config", {})) if mine.get(k) != cfg.get("config", {}).get(k))
    if diff:
        return f"architecture config differs from the parent's: {', '.join(diff)}"
    try:
        model.load_state_dict(load_file(str(parent_dir / "weights.safetensors")), strict=True)
    except (OSError, RuntimeError) as exc:
        return f"parent weights do not load: {str(exc)[:200]}"
    return None


def apply_warm_start(job: Any, model: Any, train: tuple) -> tuple[Any, tuple, dict[str, Any]]:
    """(job with fine-tuning hparams, train rows to use, report); unchanged inputs on fallback."""
    import torch

    from unified_pipeline.training.trainer import TrainerConfig

    ws: WarmStart = job.warm_start
    bundle = job.datasets.get(ws.dataset)
    ids = ((bundle.sidecars.get("samples") or {}).get("train") if bundle is not None else None) or []
    if len(ids) != len(train[0]):
        problem = f"samples.json lists {len(ids)} train ids for {len(train[0])} train rows"
    else:
        problem = _load_parent(model, ws.parent_dir)
    if problem:
        job.log.warning(f"{job.model}: warm start from {ws.parent} not possible ({problem}); training from scratch")
        return job, train, {"used": False, "reason": f"fell back to training from scratch: {problem}"}

    new_idx = [i for i, s in enumerate(ids) if str(s) in ws.new_train_ids]
    old_idx = torch.tensor([i for i, s in enumerate(ids) if str(s) not in ws.new_train_ids], dtype=torch.long)
    n_replay = min(len(old_idx), round(_fraction(job.hparams, "warm_start_replay", DEFAULT_REPLAY) * len(old_idx)))
    gen = torch.Generator().manual_seed(int(job.seed))
    replay = old_idx[torch.randperm(len(old_idx), generator=gen)[:n_replay]]
    if len(new_idx) + n_replay == 0:  # nothing new among the train rows: replay every old one
        replay, n_replay = old_idx, len(old_idx)
    rows = torch.sort(torch.cat([torch.tensor(new_idx, dtype=torch.long), replay])).values
    cfg = TrainerConfig.from_hparams(job.hparams)
    epochs = int(job.hparams.get("warm_start_epochs") or max(3, cfg.epochs // 4))
    lr = cfg.learning_rate * float(job.hparams.get("warm_start_lr_scale", DEFAULT_LR_SCALE))
    hparams = {k: v for k, v in job.hparams.items() if k != "lr"}
    hparams.update(epochs=epochs, learning_rate=lr)
    report = {"used": True, "new": len(new_idx), "replayed": int(n_replay), "epochs": epochs, "learning_rate": lr}
    job.log.info(f"{job.model}: warm start from {ws.parent}: {len(new_idx)} new + {n_replay} replayed train "
                 f"samples, {epochs} epochs at lr {lr:.3g}")
    return dataclasses.replace(job, hparams=hparams), tuple(t[rows] for t in train), report
