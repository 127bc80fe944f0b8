"""Check a `-c` run config file before Dagster starts: one line naming the file, line and key.

Dagster would report a YAML syntax error, an unknown key or a refused `hparams` entry as a
long traceback (the last one only once the step runs); the CLI calls `check_run_config` first,
or `check_settings` alone (the preset's model settings) when there is no `-c` file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unified_pipeline.errors import ConfigError


def load_yaml(path: Path) -> tuple[dict[str, Any], Any]:
    """The run config and its YAML node tree (for line numbers)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: run config file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{path}: {where}: invalid YAML: {exc.problem or exc.context}",
                          hint="check the indentation and the ':' after each key") from None
    if data is None:
        return {}, node
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: line 1: a run config is a mapping (ops: ...), got {type(data).__name__}")
    return data, node


def line_of(node: Any, keys: list[str]) -> int | None:
    """1-based line of the deepest key of `keys` found in the YAML node tree."""
    import yaml

    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == key:
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def _where(path: Path | None, node: Any, keys: list[str]) -> str:
    line = line_of(node, keys) if node is not None else None
    return f"{path}: line {line}" if line else str(path)


def check_run_config(job_name: str, path: str | Path) -> dict[str, Any]:
    """The parsed run config, after Dagster's schema check and the model assets' `hparams` check."""
    from dagster import validate_run_config
    from dagster._core.errors import DagsterInvalidConfigError

    from unified_pipeline.definitions import build_definitions

    path = Path(path)
    data, node = load_yaml(path)
    job = build_definitions().resolve_job_def(job_name)  # the data and preset as they are now
    check_settings(job_name, data, path, node)  # first: its message names the closest valid key
    try:
        validate_run_config(job, data)
    except DagsterInvalidConfigError as exc:
        err = exc.errors[0]
        keys = [e.field_name for e in err.stack.entries if hasattr(e, "field_name")]
        extra = getattr(err.error_data, "field_names", None) or (
            [err.error_data.field_name] if getattr(err.error_data, "field_name", None) else [])
        raise ConfigError(f"{_where(path, node, keys + extra[:1])}: {_message(err, keys, extra)}") from None
    return data


def _message(err: Any, keys: list[str], unknown: list[str]) -> str:
    """Dagster's message, shortened for the common case of a misspelt key."""
    text = " ".join(err.message.split())
    if unknown:
        expected = text.split("Expected:", 1)[-1].replace("{ env: String }", "")
        if "{" in expected:  # the keys of this level only, not those of nested sections
            expected = expected[expected.index("{") + 1:expected.rindex("}")]
        while re.search(r"\{[^{}]*\}", expected):
            expected = re.sub(r"\{[^{}]*\}", "", expected)
        valid = sorted(set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\??:", expected)))
        return (f"unknown key {', '.join(map(repr, unknown))} under {'.'.join(keys) or 'the top level'}"
                + (f"; valid: {', '.join(valid)}" if valid else ""))
    return text


def check_settings(job_name: str, data: dict[str, Any] | None = None, path: Path | None = None,
                   node: Any = None) -> None:
    """What each model step checks when it starts (model_assets): the preset's settings of every
    model the job trains and the run config's `hparams`, so a misspelt key fails before any step
    runs, naming the closest valid key (Dagster's own check names only the valid ones)."""
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.presets import check_model_settings, default_preset_path, load_preset

    ops = (data or {}).get("ops") or {}
    ops = ops if isinstance(ops, dict) else {}
    for name in _job_models(job_name, [n for n in ops if n in MODELS]):
        op = ops.get(name)
        config = (op.get("config") if isinstance(op, dict) else None) or {}
        config = config if isinstance(config, dict) else {}
        hparams = config.get("hparams")
        if isinstance(hparams, dict):
            try:
                MODELS[name].spec().check_keys(hparams, f"{name}: run config hparams")
            except ConfigError as exc:
                raise ConfigError(f"{_where(path, node, ['ops', name, 'config', 'hparams'])}: {exc}") from None
        given = config.get("preset_path")
        preset_path = Path(given) if isinstance(given, str) and given else default_preset_path()
        check_model_settings(load_preset(preset_path), [name], preset_path)


def _job_models(job_name: str, named: list[str]) -> list[str]:
    """The models a scenario's job trains, with their upstream models, plus those the run config names."""
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.presets import load_preset

    preset = load_preset()
    wanted = preset.available_models_for(job_name) if job_name in preset.training_scenarios else []
    out: list[str] = []

    def visit(name: str) -> None:
        if name in MODELS and name not in out:
            for up in MODELS[name].upstream_models:
                visit(up)
            out.append(name)

    for name in [*wanted, *named]:
        visit(name)
    return out
