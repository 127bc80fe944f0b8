"""Replay a registered version: retrain it from its recorded inputs and say whether it matches.

Every version's lineage holds what a replay needs: data versions (tensor folders), resolved
hyperparameters, upstream and parent versions, seed, device, the sha256 of the lock file and
the live control commands. `reproduce` trains into a scratch root, never touching the registry
or the checkpoints of the original, and compares:

- on CPU the weights must be identical, tensor for tensor (the Trainer is deterministic there);
- on CUDA kernels are not bit-reproducible, so every test metric must lie within
  `GPU_TOLERANCE` (absolute) of the recorded one.

It refuses, with one line naming the folder, when a recorded data version or upstream version
is no longer on disk.
"""
from __future__ import annotations

import logging
import platform
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unified_pipeline import devices
from unified_pipeline.errors import ConfigError
from unified_pipeline.hashing import sha256_file
from unified_pipeline.paths import project_root, unified_home

LOCK_FILE = "uv.lock"
GPU_TOLERANCE = 0.02  # absolute, on every test metric
CPU_TOLERANCE = 0.0


def lock_sha256() -> str | None:
    path = project_root() / LOCK_FILE
    try:
        return sha256_file(path)
    except OSError:
        return None


def replay_record(seed: int, hparams: dict[str, Any]) -> dict[str, Any]:
    """Lineage fields that pin the environment of a training run (device is recorded next to them)."""
    import torch

    return {
        "lock_sha256": lock_sha256(),
        # The trainer seeds Python, NumPy, torch and its shuffle generator from this one value;
        # the data split's seed is part of the data version (the tensor folder's name).
        "seeds": {"train": int(seed)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
    }


@dataclass
class ReplayReport:
    version: str
    scratch: str
    device: str
    criterion: str  # "identical weights" or "test metrics within +-tolerance"
    match: bool
    weights_identical: bool
    max_abs_weight_diff: float
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # name -> recorded, replayed, diff
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"{self.version}: replayed on {self.device} in {self.wall_s:.1f}s into {self.scratch}",
                 f"criterion: {self.criterion}",
                 f"weights: {'identical' if self.weights_identical else f'differ (max |diff| {self.max_abs_weight_diff:.3g})'}"]
        for name, m in self.metrics.items():
            diff = "-" if m["diff"] is None else f"{m['diff']:+.3g}"
            lines.append(f"test {name}: recorded {m['recorded']} replayed {m['replayed']} ({diff})")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("MATCH" if self.match else "NO MATCH")
        return "\n".join(lines)


def _tensor_dir(dataset: str, data_version: str) -> Path:
    return unified_home() / "tensors" / dataset / data_version


def reproduce(ref: str, scratch: Path | None = None, *, registry: Any = None, log: Any = None,
              gpu_tolerance: float = GPU_TOLERANCE) -> ReplayReport:
    """Retrain `ref` ("model/vN") into `scratch` (default `<home>/replay/<model>-vN-<id>`) and compare."""
    import torch

    from unified_pipeline.datasets.base import META_FILE, TensorBundle
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.training.control import RecordedCommands
    from unified_pipeline.training.job import FitJob
    from unified_pipeline.training.warm_start import plan_warm_start

    registry = registry or ModelRegistry()
    log = log or logging.getLogger("unified_pipeline.replay")
    version = registry.resolve(ref)
    lineage = version.lineage
    entry = MODELS.get(version.model)
    if entry is None:
        raise ConfigError(f"{version.name}: model {version.model!r} is not in this build; cannot replay it")
    tensor_dirs = {}
    for ds, dv in sorted((lineage.get("data_versions") or {}).items()):
        path = _tensor_dir(ds, dv)
        if not (path / META_FILE).is_file():
            raise ConfigError(f"{version.name}: recorded data version {ds}={dv} is no longer on disk ({path}); "
                              "cannot reproduce", hint="restore that data and rebuild its tensors, or replay a newer version")
        tensor_dirs[ds] = path
    upstream_dirs = {}
    for up, name in sorted((lineage.get("upstream") or {}).items()):
        try:
            upstream_dirs[up] = registry.model_dir(*_split(name))
        except Exception as exc:  # noqa: BLE001 - pruned or damaged: both mean "cannot replay"
            raise ConfigError(f"{version.name}: recorded upstream version {name} is not available ({exc}); "
                              "cannot reproduce") from None
    hparams = dict(lineage.get("hparams") or {})
    notes = _environment_notes(lineage, version)
    recorded_device = str(lineage.get("device") or "cpu")
    device = recorded_device if not recorded_device.startswith("cuda") or torch.cuda.is_available() else "cpu"
    if device != recorded_device:
        notes.append(f"recorded on {recorded_device}, replayed on {device}")
    warm = None
    parent = lineage.get("parent")
    if parent:
        warm = plan_warm_start(entry, tensor_dirs, hparams, registry.resolve(parent), registry).spec
        if warm is None:
            notes.append(f"parent {parent} no longer gives a warm start; replayed from scratch")

    scratch = Path(scratch) if scratch else unified_home() / "replay" / f"{version.model}-v{version.number}-{uuid.uuid4().hex[:6]}"
    out_dir = scratch / "model"
    out_dir.mkdir(parents=True, exist_ok=True)
    job = FitJob(
        model=version.model, datasets={ds: TensorBundle.load(p) for ds, p in tensor_dirs.items()},
        upstream=upstream_dirs, hparams=hparams, device=device, checkpoint_dir=scratch / "checkpoints",
        out_dir=out_dir, seed=int(lineage.get("seed", hparams.get("seed", 0))), log=log, warm_start=warm,
        control_file=RecordedCommands(lineage.get("control_applied") or []),
    )
    started = time.monotonic()
    with devices.lease(unified_home() / "locks" / "devices"):
        if lineage.get("threads"):
            torch.set_num_threads(int(lineage["threads"]))  # the thread count it was trained with
        result = entry.spec().fit(job)
    wall = time.monotonic() - started
    identical, max_diff = compare_weights(version.path / "weights.safetensors", out_dir / "weights.safetensors")
    metrics = _metric_diffs(version.metrics.get("test") or {}, result.metrics.get("test") or {})
    on_gpu = device.startswith("cuda")
    if on_gpu:
        criterion = f"test metrics within +-{gpu_tolerance:g} (CUDA kernels are not bit-reproducible)"
        match = bool(metrics) and all(m["diff"] is not None and abs(m["diff"]) <= gpu_tolerance for m in metrics.values())
    else:
        criterion = "identical weights (CPU)"
        match = identical
    return ReplayReport(version=version.name, scratch=str(scratch), device=device, criterion=criterion, match=match,
                        weights_identical=identical, max_abs_weight_diff=max_diff, metrics=metrics, notes=notes,
                        wall_s=round(wall, 2))


def _split(name: str) -> tuple[str, str]:
    model, _, ref = name.partition("/")
    return model, ref


def _environment_notes(lineage: dict[str, Any], version: Any) -> list[str]:
    from unified_pipeline.code_version import code_version
    from unified_pipeline.models.registry import MODELS

    notes = []
    recorded = lineage.get("lock_sha256")
    if recorded is None:
        notes.append("no lock file hash recorded for this version")
    elif recorded != lock_sha256():
        notes.append(f"{LOCK_FILE} changed since this version was trained (recorded {recorded[:12]})")
    entry = MODELS[version.model]
    if lineage.get("code_version") != code_version(entry.module, "unified_pipeline.models.base", packages=("training",)):
        notes.append("model or training code changed since this version was trained")
    if lineage.get("control_commands") and not lineage.get("control_applied"):
        notes.append(f"live control commands recorded without their step are not replayed: {lineage['control_commands']}")
    elif lineage.get("control_applied"):
        notes.append(f"replaying {len(lineage['control_applied'])} live control command(s) at their recorded steps")
    return notes


def compare_weights(a: Path, b: Path) -> tuple[bool, float]:
    """(identical, max |a - b|) over every tensor; different names or shapes count as not identical."""
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys() or any(ta[k].shape != tb[k].shape for k in ta):
        return False, float("inf")
    identical, worst = True, 0.0
    for k in ta:
        if not torch.equal(ta[k], tb[k]):
            identical = False
            if ta[k].is_floating_point():
                worst = max(worst, float((ta[k].double() - tb[k].double()).abs().max()))
            else:
                worst = float("inf")
    return identical, worst


def _metric_diffs(recorded: dict[str, Any], replayed: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out = {}
    for name in sorted(recorded):
        a, b = recorded.get(name), replayed.get(name)
        if not isinstance(a, (int, float)) or isinstance(a, bool):
            continue
        diff = float(b) - float(a) if isinstance(b, (int, float)) else None
        out[name] = {"recorded": float(a), "replayed": None if b is None else float(b), "diff": diff}
    return out
