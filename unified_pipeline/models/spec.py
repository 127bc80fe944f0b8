"""What a model module gives the pipeline: one `SPEC = ModelSpec(...)`.

A model is one module in `models/` ending with its `SPEC` and one `ModelEntry` line in
`models/registry.py` naming that module. The entry holds what the Dagster graph needs without
importing torch (datasets, upstream models, metric, threshold); the spec is read inside the
model step, and by `inference.py` and the run-config checks.

The settings dataclass is the schema: its fields (less the `derived` ones the data decides)
plus the trainer's fields and the pipeline's own switches are the only keys a preset's
`model_specific_presets.<model>`, an instance's `hparams` or a run config's `hparams` may set.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from unified_pipeline.errors import ConfigError

# One predicted item and its (label, score) pairs, best first: what `ModelSpec.predictions` yields.
Prediction = tuple[str, list[tuple[str, float]]]

# Settings read around a fit rather than by it (device choice, strategy, registry, warm start,
# and the original preset's switch spellings, translated by TrainerConfig.from_hparams).
PIPELINE_SETTINGS = (
    "use_gpu", "adaptive_strategy", "promotion_rule", "keep_versions", "promotion_gate",
    "warm_start", "warm_start_max_change", "warm_start_replay", "warm_start_epochs", "warm_start_lr_scale",
    "mixed_precision", "early_stopping",
)


@dataclass(frozen=True)
class ModelSpec:
    settings: type  # dataclass of every setting of the model; its defaults are what training uses
    fit: Callable[..., Any]  # fit(job: FitJob) -> FitResult (training/job.py)
    # predict(model_dir, inputs, top) -> per input a (label, score) pair or a list of them, or a
    # dict {item: pairs} when one input holds several items (the records of a .jsonl file).
    predict: Callable[..., Any] | None = None
    build: Callable[..., Any] | None = None  # build(meta, hparams) -> BaseModel; lets the controller retrain it
    inputs: tuple[str, ...] = ()  # tensors of one example (besides "y") that build's model reads
    derived: tuple[str, ...] = ()  # settings fields the data or fit decides (classes, input shape): not settable
    trainer_defaults: dict[str, Any] = field(default_factory=dict)  # TrainerConfig values outside a preset
    warm_start: bool = False  # a one-dataset classifier that fit_classifier can fine-tune (training/warm_start.py)

    def setting_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.settings) if f.name not in self.derived]

    def defaults(self) -> dict[str, Any]:
        """The trainer defaults and every setting's default (one set per model)."""
        own = dataclasses.asdict(self.settings())
        return {**self.trainer_defaults, **{k: own[k] for k in self.setting_names()}}

    def resolve(self, hparams: dict[str, Any]) -> dict[str, Any]:
        return {**self.defaults(), **hparams}

    def valid_keys(self) -> set[str]:
        return valid_keys(self.setting_names())

    def check_keys(self, keys: Iterable[str], where: str) -> None:
        """Refuse keys no part of this model reads, naming `where` they were set."""
        refuse_unknown(keys, self.valid_keys(), where)

    def predictions(self, model_dir: Path, inputs: list[Any], top: int = 1) -> list[Prediction]:
        """(item, [(label, score), ...]) for each item, whatever shape the model's predict returns."""
        results = self.predict(model_dir, inputs, top=top)
        pairs = results.items() if isinstance(results, dict) else zip(inputs, results)
        return [(str(item), [r] if _is_pair(r) else list(r)) for item, r in pairs]


def refuse_unknown(keys: Iterable[str], valid: Iterable[str], where: str) -> None:
    """ConfigError naming the unknown keys, the closest valid name of each, and every valid name."""
    valid = sorted(set(valid))
    unknown = sorted(set(keys) - set(valid))
    if not unknown:
        return
    guesses = [f"{m[0]!r} for {k!r}" for k in unknown for m in [difflib.get_close_matches(k, valid, n=1)] if m]
    hint = f"; did you mean {', '.join(guesses)}?" if guesses else ""
    raise ConfigError(f"{where} {unknown} are not settings of this model; valid: {valid}{hint}")


def _is_pair(result: Any) -> bool:
    return isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str)


def config_from(cls: type, hparams: dict[str, Any], **from_data: Any) -> Any:
    """A config dataclass from the hyperparameters that are its fields, then the values the data decides."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in hparams.items() if k in names}, **from_data})


def valid_keys(setting_names: Iterable[str]) -> set[str]:
    """A model's settings, the trainer's (less the device and metric, which the lease and the
    registry entry decide) and the pipeline's switches."""
    from unified_pipeline.training.trainer_config import ALIASES, TrainerConfig

    trainer = {f.name for f in dataclasses.fields(TrainerConfig)} - {"device", "metric", "higher_is_better"}
    return {*setting_names, *PIPELINE_SETTINGS, *ALIASES, *trainer}


def declared_setting_names(module: str) -> list[str] | None:
    """The setting names a model module's SPEC declares, read from its source (nothing is
    imported, so the Dagster definitions stay free of torch); None when the source does not
    spell them plainly (`SPEC = ModelSpec(settings=<class of this module>, derived=(...))`, or
    `dataclasses.replace(<module>.SPEC, ...)` of such a module)."""
    import ast
    import importlib.util

    found = importlib.util.find_spec(module)
    if found is None or not found.origin or not found.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(found.origin).read_text(encoding="utf-8"))
    top = {n.targets[0].id: n.value for n in tree.body
           if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}
    call = top.get("SPEC")
    if not isinstance(call, ast.Call):
        return None
    if isinstance(call.func, ast.Attribute) and call.func.attr == "replace" and call.args:
        base = call.args[0]  # dataclasses.replace(<module>.SPEC, predict=...)
        if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            source = _imported_module(tree, base.value.id)
            return declared_setting_names(source) if source else None
        return None
    kw = {k.arg: k.value for k in call.keywords}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    settings = kw.get("settings")
    if not isinstance(settings, ast.Name) or settings.id not in classes:
        return None
    derived = _strings(kw.get("derived", ast.Tuple(elts=[])), top)
    fields = _fields(classes[settings.id], classes)
    return None if derived is None or fields is None else [f for f in fields if f not in derived]


def _imported_module(tree: Any, name: str) -> str | None:
    import ast

    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return f"{node.module}.{alias.name}"
    return None


def _strings(node: Any, top: dict[str, Any]) -> list[str] | None:
    import ast

    if not isinstance(node, (ast.Tuple, ast.List)):
        return None
    out: list[str] = []
    for elt in node.elts:
        if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
            out.append(elt.value)
        elif isinstance(elt, ast.Starred) and isinstance(elt.value, ast.Name) and elt.value.id in top:
            more = _strings(top[elt.value.id], top)
            if more is None:
                return None
            out += more
        else:
            return None
    return out


def _fields(cls: Any, classes: dict[str, Any]) -> list[str] | None:
    import ast

    out: list[str] = []
    for base in cls.bases:
        if not isinstance(base, ast.Name) or base.id not in classes:
            return None
        inherited = _fields(classes[base.id], classes)
        if inherited is None:
            return None
        out += inherited
    return out + [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
