"""Train one registered model, or reuse the version that already has the same inputs.

Plain Python, called by the Dagster model assets and by the CLI. A step's fingerprint covers
everything that decides its result: the model's code, the training code, the resolved
hyperparameters, the data versions of its tensors and the versions of upstream models. When a
registered version carries the same fingerprint, nothing trains.

When the data changed only a little, a classifier may fine-tune the production version instead
of starting over (training/warm_start.py); the parent version then joins the fingerprint, and the
choice, with its reason, goes into the lineage.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified_pipeline import devices
from unified_pipeline.celery_mode import worker_identity
from unified_pipeline.code_version import code_version
from unified_pipeline.hashing import combine
from unified_pipeline.models.registry import MODELS, ModelEntry
from unified_pipeline.paths import unified_home
from unified_pipeline.progress import ProgressWriter
from unified_pipeline.staging import new_staging
from unified_pipeline.training import preemption
from unified_pipeline.training.cost import CostMeter, total
from unified_pipeline.training.replay import replay_record
from unified_pipeline.training.trainer_config import as_flag
from unified_pipeline.training.warm_start import WARM_PREFIX, fine_tuned_on, plan_warm_start, warm_fingerprint

# Settings that change how a run is carried out, or what happens to its version, but not what it computes.
NON_SEMANTIC_HPARAMS = {"adaptive_strategy", "checkpoint_interval", "keep_last", "compile", "use_gpu", "precision",
                        "promotion_rule", "keep_versions", "promotion_gate"}


@dataclass
class StepOutcome:
    model: str
    version: str  # "<model>/v<N>"
    path: str
    fingerprint: str
    reused: bool
    promoted: bool
    promotion_note: str
    metrics: dict[str, Any]
    device: str = "cpu"
    wall_time_s: float = 0.0
    samples_per_s: float = 0.0
    epochs_run: int = 0
    param_count: int = 0
    resumed_from: str | None = None
    plots: dict[str, str] = field(default_factory=dict)
    data_versions: dict[str, str] = field(default_factory=dict)
    warm_start: dict[str, Any] = field(default_factory=dict)  # lineage record: used, reason, parent, ...
    strategy: dict[str, Any] = field(default_factory=dict)  # advice applied to the hyperparameters, if any
    cost: dict[str, Any] = field(default_factory=dict)  # training/cost.py: CPU s, GPU s, peaks, samples, attempts
    preemptions: list[dict[str, Any]] = field(default_factory=list)  # signals survived on the way to this version

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def step_fingerprint(entry: ModelEntry, tensor_dirs: dict[str, Path], upstream: dict[str, str], hparams: dict) -> str:
    semantic = {k: v for k, v in sorted(hparams.items())
                if k not in NON_SEMANTIC_HPARAMS and not k.startswith(WARM_PREFIX)}
    return combine(
        [
            entry.name,
            code_version(entry.module, "unified_pipeline.models.base", packages=("training",)),
            json.dumps(semantic, sort_keys=True, default=str),
            *(f"data:{ds}={Path(p).name}" for ds, p in sorted(tensor_dirs.items())),
            *(f"model:{m}={v}" for m, v in sorted(upstream.items())),
        ]
    )


def control_path(name: str) -> Path:
    """Where `unified-pipeline control` leaves commands for a running training of `name`."""
    return unified_home() / "control" / f"{name}.json"


def _registry():
    from unified_pipeline.registry import ModelRegistry

    return ModelRegistry()


@contextlib.contextmanager
def _model_lock(name: str, log: Any):
    """One training of a model at a time across processes: a second run of the same job waits,
    then finds the first run's version by fingerprint instead of training it again."""
    path = unified_home() / "locks" / "train" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"{name}: another run is training this model; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def train_or_reuse(name: str, tensor_dirs: dict[str, Path], hparams: dict[str, Any], **kwargs: Any) -> "StepOutcome":
    """Reuse the registered version with the same inputs, or train and register a new one."""
    log = kwargs.get("log") or logging.getLogger(f"unified_pipeline.{name}")
    with _model_lock(name, log):
        return _train_or_reuse(name, tensor_dirs, hparams, **kwargs)


@dataclass
class StepPlan:
    """What one model step works from, filled in by the steps of `_train_or_reuse` in turn."""

    entry: ModelEntry
    tensor_dirs: dict[str, Path]
    hparams: dict[str, Any]
    log: Any
    registry: Any
    policy: Any  # registry.policy_from_hparams: promotion rule and retention
    upstream_versions: dict[str, str]  # upstream model -> "model/vN"
    upstream_dirs: dict[str, Path]
    base_fp: str  # the inputs' fingerprint
    fp: str  # base_fp, or the warm start's when fine-tuning
    production: Any  # the model's production Version, or None
    data_versions: dict[str, str]
    strategy: dict[str, Any] = field(default_factory=dict)
    warm: Any = None  # training.warm_start.WarmStartPlan

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass
class Trained:
    """What `_execute` leaves for `_register`."""

    result: Any  # FitResult
    job: Any  # FitJob
    threads: int
    cost: dict[str, Any]
    preemptions: list[dict[str, Any]]
    wall_s: float


def _train_or_reuse(
    name: str,
    tensor_dirs: dict[str, Path],
    hparams: dict[str, Any],
    *,
    run_id: str = "",
    log: Any = None,
    force: bool = False,
    scenario: str = "",
    preset_info: dict[str, Any] | None = None,
    advisors: tuple[str, ...] = (),
    fixed: set[str] = frozenset(),
    upstream: dict[str, str] | None = None,
    threshold: float | None = None,
) -> StepOutcome:
    """`preset_info`: the preset that produced `hparams` (registry.preset_lineage), kept in the lineage.
    `advisors`: models whose production strategy may tune `hparams` (training/strategy.py);
    `fixed`: keys the run config set, which advice never changes.
    `upstream`: the version ("model/vN") each upstream model asset produced in this run; an
    upstream model not given uses its production version (CLI and Python callers).
    `threshold`: of the model's asset check (default the registry entry's); with the preset's
    `promotion_gate` on, promotion also needs that check and GX verdicts (registry/evidence.py)."""
    plan = _resolve_inputs(MODELS[name], tensor_dirs, hparams, upstream, log or logging.getLogger(f"unified_pipeline.{name}"))
    found = None if force else _reusable(plan)
    if found is None:
        _plan_training(plan, advisors, fixed)
        if plan.warm.used and not force:
            found = plan.registry.find_by_fingerprint(name, plan.fp)
    if found is not None:
        return _reused(plan, found)
    staging = new_staging(name, run_id, plan.log)
    try:
        trained = _execute(plan, staging, run_id)
        return _register(plan, trained, staging, run_id=run_id, scenario=scenario, preset_info=preset_info,
                         threshold=threshold)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _resolve_inputs(entry: ModelEntry, tensor_dirs: dict[str, Path], hparams: dict[str, Any],
                    upstream: dict[str, str] | None, log: Any) -> StepPlan:
    """Settings, upstream versions and the inputs' fingerprint; a bad setting fails before any training."""
    from unified_pipeline.registry import policy_from_hparams

    policy = policy_from_hparams(hparams, entry.name)
    registry = _registry()
    versions: dict[str, str] = {}
    dirs: dict[str, Path] = {}
    # The asset passes the upstream models its graph resolved (an instance's stand-in included).
    for up in (list(upstream) if upstream else entry.upstream_models):
        v = registry.resolve((upstream or {}).get(up) or f"{up}/production")
        versions[up], dirs[up] = v.name, registry.model_dir(up, v.number)
    fp = step_fingerprint(entry, tensor_dirs, versions, hparams)
    return StepPlan(entry, tensor_dirs, hparams, log, registry, policy, versions, dirs, fp, fp,
                    _production(registry, entry.name), {ds: Path(p).name for ds, p in tensor_dirs.items()})


def _reusable(plan: StepPlan) -> Any:
    """The registered version with these inputs, or production when it was fine-tuned on exactly them."""
    found = plan.registry.find_by_fingerprint(plan.name, plan.fp)
    if found is None and fine_tuned_on(plan.production, plan.base_fp, plan.hparams):
        found = plan.production  # nothing changed since
    return found


def _plan_training(plan: StepPlan, advisors: tuple[str, ...], fixed: set[str]) -> None:
    """Advice, then warm start or scratch. Advice tunes a run that happens anyway; a new strategy
    alone never retrains a model, so the fingerprint covers the preset's values and reuse ignores it."""
    plan.hparams, plan.strategy = _advised(plan.name, plan.hparams, advisors, fixed, plan.registry, plan.log)
    plan.warm = plan_warm_start(plan.entry, plan.tensor_dirs, plan.hparams, plan.production, plan.registry)
    plan.log.info(f"{plan.name}: {'warm start' if plan.warm.used else 'from scratch'}: {plan.warm.reason}")
    if plan.warm.used:
        plan.fp = warm_fingerprint(plan.base_fp, plan.warm.candidate, plan.hparams)


def _reused(plan: StepPlan, found: Any) -> StepOutcome:
    plan.log.info(f"{plan.name}: up to date, reusing {found.name} (same data, code and hyperparameters)")
    return StepOutcome(
        model=plan.name, version=found.name, path=str(found.path), fingerprint=found.fingerprint or plan.fp,
        reused=True, promoted="production" in (found.aliases or []), promotion_note="reused: nothing changed",
        metrics=found.metrics, device=found.lineage.get("device", ""), data_versions=plan.data_versions,
        warm_start=found.lineage.get("warm_start") or {}, strategy=found.lineage.get("strategy") or {},
        cost=found.lineage.get("cost") or {}, preemptions=found.lineage.get("preemptions") or [],
    )


def _execute(plan: StepPlan, staging: Path, run_id: str) -> Trained:
    """Fit on a leased device, with progress, cost and live control; preemption checkpoints and raises."""
    from unified_pipeline.datasets.base import TensorBundle
    from unified_pipeline.training.control import drop_stale
    from unified_pipeline.training.job import FitJob

    name, hparams, log, home = plan.name, plan.hparams, plan.log, unified_home()
    spec = plan.entry.spec()
    stale = drop_stale(control_path(name), started=time.time())  # wall clock: commands carry write times
    if stale:
        log.warning(f"{name}: dropped a control command written before this training started: {stale}")
    # Slots are per machine: GPU machines sharing UNIFIED_HOME each lease their own devices.
    with devices.lease(home / "locks" / "devices" / socket.gethostname()) as lease:
        device = lease.device if hparams.get("use_gpu", True) else "cpu"
        log.info(f"{name}: training on {device} ({lease.threads} CPU thread(s)), fingerprint {plan.fp[:12]}")
        progress = ProgressWriter(name, run_id, int(hparams.get("epochs", 0)), device)
        meter = CostMeter()
        job = FitJob(
            model=name, datasets={ds: TensorBundle.load(p) for ds, p in plan.tensor_dirs.items()},
            upstream=plan.upstream_dirs, hparams=dict(hparams), device=device,
            checkpoint_dir=home / "checkpoints" / name / plan.fp[:16], out_dir=staging,
            seed=int(hparams.get("seed", 0)), log=log, control_file=control_path(name),
            on_epoch=lambda record: (meter.on_epoch(record), progress.on_epoch(record)),
            warm_start=plan.warm.spec,
        )
        try:
            result = spec.fit(job)
        except BaseException as exc:
            if not preemption.is_preemption(exc):
                progress.finish("failed", error=f"{type(exc).__name__}: {exc}"[:500])
                raise
            record = preemption.record(name, plan.fp, exc, run_id=run_id, attempt_cost=meter.stop(device))
            progress.finish(preemption.PREEMPTED, checkpoint=record["checkpoint"], signal=record["signal"])
            log.warning(f"{name}: preempted ({record['signal']}); checkpoint {record['checkpoint']}; "
                        "a retry resumes from it")
            raise preemption.StepPreempted(name, record) from exc
        attempt = meter.stop(result.device)  # its monotonic clock: a clock adjustment changes no duration
        progress.finish("finished", test=result.metrics.get("test", {}))
    result.write(staging)
    earlier = preemption.read_records(name, plan.fp)
    cost = total([r.get("cost") or {} for r in earlier] + [attempt])
    return Trained(result, job, lease.threads, cost, earlier, attempt["wall_s"])


def _register(plan: StepPlan, trained: Trained, staging: Path, *, run_id: str, scenario: str,
              preset_info: dict[str, Any] | None, threshold: float | None) -> StepOutcome:
    """Register the staged folder with its lineage (and evidence when the promotion gate is on)."""
    entry, result, job, name = plan.entry, trained.result, trained.job, plan.name
    if plan.warm.used:
        # A fit that never reads job.warm_start trained from scratch after all.
        plan.warm.applied = result.notes.get("warm_start") or {
            "used": False, "reason": f"{entry.module}.fit does not warm-start; trained from scratch"}
    warm_record = plan.warm.record()
    lineage = {
        "data_versions": plan.data_versions,
        "code_version": code_version(entry.module, "unified_pipeline.models.base", packages=("training",)),
        "scenario": scenario,
        "preset": preset_info,
        "hparams": plan.hparams,
        "upstream": plan.upstream_versions,
        "parent": warm_record["parent"],
        "warm_start": warm_record,
        "strategy": plan.strategy,
        "control_commands": [{"epoch": r.get("epoch"), **c} for r in result.history if isinstance(r, dict)
                             for c in (r.get("commands") or [])],
        # Where each command applied (epoch, step), so a replay applies it at the same point.
        "control_applied": [{k: n.get(k) for k in ("epoch", "step", "command")}
                            for n in (result.notes or {}).get("trainer_notes") or [] if n.get("command")],
        "base_fingerprint": plan.base_fp,
        "run_id": run_id,
        "seed": job.seed,
        "device": result.device,
        "worker": worker_identity(),  # which machine and queue trained it (celery_mode.py)
        "wall_time_s": round(trained.wall_s, 3),
        "resumed_from": result.resumed_from,
        "cost": trained.cost,
        "preemptions": trained.preemptions,
        "threads": trained.threads,  # CPU reductions may round differently with another thread count
        **replay_record(job.seed, plan.hparams),
    }
    evidence = None
    if as_flag(plan.hparams.get("promotion_gate", False)):
        from unified_pipeline.assets.model_assets import quality_verdict
        from unified_pipeline.registry.evidence import collect

        check = quality_verdict(entry, result.metrics, entry.threshold if threshold is None else threshold)
        evidence = collect(plan.tensor_dirs, check)
    policy = plan.policy
    reg = plan.registry.register(
        name, staging, metrics=result.metrics, lineage=lineage, fingerprint=plan.fp,
        metric=entry.metric, higher_is_better=entry.higher_is_better,
        promote_rule=policy.promotion_rule, keep_versions=policy.keep_versions, evidence=evidence,
    )
    if reg.pruned is not None and reg.pruned.removed:
        plan.log.info(f"{name}: keep_versions={policy.keep_versions} pruned {', '.join(reg.pruned.removed)}")
    if reg.prune_error:
        plan.log.warning(f"{name}: {reg.prune_error}")
    # The version now holds the result; its checkpoints would only make a forced rerun resume
    # from a finished state.
    shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
    preemption.clear(name, plan.fp)
    version = reg.version
    return StepOutcome(
        model=name, version=version.name, path=str(version.path), fingerprint=plan.fp, reused=False,
        promoted=reg.promoted, promotion_note=reg.reason if reg.promoted else f"registered, not promoted: {reg.reason}",
        metrics=result.metrics, device=result.device,
        wall_time_s=trained.wall_s, samples_per_s=result.samples_per_s, epochs_run=result.epochs_run,
        param_count=result.param_count, resumed_from=result.resumed_from,
        plots={t: str(Path(version.path) / Path(p).relative_to(staging)) for t, p in result.plots.items()},
        data_versions=plan.data_versions, warm_start=warm_record, strategy=plan.strategy, cost=trained.cost,
        preemptions=trained.preemptions,
    )


def _advised(name, hparams, advisors, fixed, registry, log):
    """Apply the production strategy of each available advisor (training/strategy.py)."""
    from unified_pipeline.training.strategy import apply_advice

    found = {}
    for adv in advisors:
        version = _production(registry, adv)
        if version is not None:
            found[adv] = (version.name, registry.model_dir(adv, version.number))
    hparams, record = apply_advice(name, hparams, found, set(fixed))
    if record.get("used"):
        log.info(f"{name}: {record['strategy']} strategy from {record['source']}: {record['applied']}")
    elif advisors and record:
        log.info(f"{name}: preset hyperparameters ({record['reason']})")
    elif advisors:
        log.info(f"{name}: preset hyperparameters (no trained {', '.join(advisors)} yet)")
    return hparams, record


def _production(registry, name: str):
    from unified_pipeline.registry import RegistryError

    try:
        return registry.get(name, "production")
    except RegistryError:
        return None
