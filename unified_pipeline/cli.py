"""`unified-pipeline`: what Dagster does not do itself (sample data, presets, models, predict)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

from unified_pipeline import install_check
from unified_pipeline.errors import ConfigError, PipelineError
from unified_pipeline.models.registry import declared_models
from unified_pipeline.step_progress import BAR_ENV

LATEST = "latest"  # `train --resume` without a run id


def _cmd_sample_data(args) -> int:
    from unified_pipeline.sample_data import write_sample_data

    root = Path(args.root) if args.root else None
    print(f"writing sample data (seed {args.seed})")
    written = write_sample_data(root, seed=args.seed, kinds=args.kind or None, force=args.force,
                                bar=False if args.no_progress else None)
    print(f"{len(written)} dataset(s) written")
    return 0


def _cmd_data(args) -> int:
    from unified_pipeline.datasets import scan
    from unified_pipeline.hashing import list_files
    from unified_pipeline.quality_status import latest_verdicts

    refs, problems = scan()  # one pass over the raw root for both lists
    verdicts = latest_verdicts([ref.name for ref in refs])
    rows = []
    for ref in refs:
        files = list_files(ref.root)
        rows.append({"dataset": ref.name, "kind": ref.kind, "files": len(files),
                     "bytes": sum(f.stat().st_size for f in files), "path": str(ref.root),
                     "validation": verdicts[ref.name]})
    bad = {folder.name: why for folder, why in problems.items()}
    if args.json:
        print(json.dumps({"datasets": rows, "not_recognised": bad}, indent=2))
        return 0
    if not rows:
        print("no datasets; run `unified-pipeline sample-data` or see data/README.md")
    for r in rows:
        print(f"{r['dataset']:<24} {r['kind']:<12} {r['files']:>7} files {r['bytes'] / 1e6:>9.2f} MB"
              f"  validation: {_verdict_text(r['validation'])}")
    for name, why in bad.items():
        print(f"{name:<24} not recognised: {why}")
    return 0


def _verdict_text(v: dict) -> str:
    details = [v[k] for k in ("when", "reason") if v.get(k)] + ([f"run {v['run_id'][:8]}"] if v.get("run_id") else [])
    return v["status"] + (f" ({', '.join(details)})" if details else "")


def _cmd_presets(args) -> int:
    from unified_pipeline.presets import load_preset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preset = load_preset(args.file)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.action == "list":
        for name, sc in preset.training_scenarios.items():
            print(f"{name:<32} epochs={sc.epochs:<4} batch={sc.batch_size:<5} models={','.join(sc.target_models)}")
    elif args.action == "show":
        sc = preset.scenario(args.scenario)
        out = {"scenario": sc.model_dump(), "models": {m: preset.hparams(args.scenario, m)
                                                      for m in preset.available_models_for(args.scenario)}}
        print(json.dumps(out, indent=2))
    else:
        from unified_pipeline.models.registry import MODELS
        from unified_pipeline.presets import check_model_settings, default_preset_path

        for name in preset.training_scenarios:
            preset.available_models_for(name)
        check_model_settings(preset, list(MODELS), args.file or default_preset_path())
        print(f"{args.file or 'presets/training_preset.json'}: valid ({len(preset.training_scenarios)} scenarios)")
    return 0


def _cmd_job(args) -> int:
    from unified_pipeline.resume import DEFS_MODULE, failed_run

    resume = getattr(args, "resume", None)
    if resume is not None:
        if args.job or args.config:
            raise ConfigError("--resume reruns the failed run's own job and run config",
                              hint="leave out --preset and -c, or run without --resume")
        spec = failed_run(None if resume == LATEST else resume)
        print(f"resuming run {spec.run_id} ({spec.job}); model steps continue from their newest checkpoints")
        dagster_args = spec.dagster_args()
    else:
        job = _known_job(args.job or "collaborative_training")
        dagster_args = ["job", "execute", "-m", DEFS_MODULE, "-j", job]
        if not args.config:
            from unified_pipeline.run_config_check import check_settings

            check_settings(job)  # a misspelt model setting in the preset fails here, not after the data steps
        else:
            from unified_pipeline import instance_notice
            from unified_pipeline.run_config_check import check_run_config

            instance_notice.not_needed()  # _launch gives Dagster the project's instance

            check_run_config(job, args.config)  # one line on a bad file, before Dagster starts
            dagster_args += ["-c", args.config]
    print("$ dagster " + shlex.join(dagster_args), flush=True)
    if args.dry_run:
        return 0
    return _launch(dagster_args)


def _known_job(name: str) -> str:
    """A scenario of the preset (one job each) or the data job; anything else is refused here,
    not after Dagster has loaded the project."""
    from unified_pipeline.presets import load_preset

    valid = [*load_preset().training_scenarios, "data_lane"]
    if name not in valid:
        raise ConfigError(f"unknown scenario {name!r}; valid: {', '.join(valid)}",
                          hint="`unified-pipeline presets list` shows them")
    return name


def _launch(dagster_args: list[str]) -> int:
    """Run the `dagster` CLI of this interpreter against the project's instance."""
    from unified_pipeline.dagster_home import dagster_home

    env = {**os.environ, "DAGSTER_HOME": str(dagster_home())}
    return subprocess.call([sys.executable, "-m", "dagster", *dagster_args], env=env)


def _cmd_predict(args) -> int:
    from unified_pipeline.inference import predict
    from unified_pipeline.registry.versions import model_and_ref

    model, version = model_and_ref(args.model)
    if args.version:  # vN, an alias, or model/vN of the same model
        named, _, ref = args.version.rpartition("/")
        if named and named != model:
            raise ConfigError(f"--version {args.version} names another model than {model}")
        model, version = model_and_ref(args.model, ref)
    for item, results in predict(model, args.inputs, version=version, top=args.top):
        shown = ", ".join(f"{label} ({p:.3f})" for label, p in results)
        print(f"{item}\t{shown}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unified-pipeline", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample-data", help="write the built-in sample datasets into data/raw")
    s.add_argument("--root", help="raw data folder (default: data/raw or $UNIFIED_DATA)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--kind", action="append", help="only this kind (repeatable)")
    s.add_argument("--force", action="store_true", help="replace existing sample folders")
    s.add_argument("--no-progress", action="store_true", help=f"no progress bar (or set {BAR_ENV}=0)")
    s.set_defaults(func=_cmd_sample_data)

    s = sub.add_parser("data", help="list datasets: kind, size, last Great Expectations verdict; "
                                    "and folders that are not recognised")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_data)

    s = sub.add_parser("presets", help="list, show or validate training presets")
    s.add_argument("action", choices=["list", "show", "validate"])
    s.add_argument("scenario", nargs="?", default="collaborative_training")
    s.add_argument("--file", help="preset file (default presets/training_preset.json)")
    s.set_defaults(func=_cmd_presets)

    for name, helptext in (("collaborative", "run the collaborative_training job"), ("train", "run a scenario's job")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--preset", dest="job", default="collaborative_training" if name == "collaborative" else None,
                       help="scenario / job name (default collaborative_training)")
        s.add_argument("-c", "--config", help="Dagster run config YAML file with overrides")
        if name == "train":
            s.add_argument("--resume", nargs="?", const=LATEST, metavar="RUN_ID",
                           help="rerun the newest failed run (or RUN_ID) with its job and run config; "
                                "model steps continue from their newest checkpoints")
        s.add_argument("--dry-run", action="store_true", help="print the dagster command instead of running it")
        s.set_defaults(func=_cmd_job)

    s = sub.add_parser("predict", help="run a trained model: label images, audio files or text; "
                                           "answer concept-model queries (JSON, causal do() queries)")
    s.add_argument("model", help="model name, or model/vN (model/production, model/latest)")
    s.add_argument("inputs", nargs="+", help="files, text, JSON or causal queries ('-' reads lines from stdin)")
    s.add_argument("--version", help="vN, latest or production (default)")
    s.add_argument("--top", type=_positive_int, default=1, help="the N most likely labels per input (default 1)")
    s.set_defaults(func=_cmd_predict)

    from unified_pipeline.cli_ops import add_parsers

    add_parsers(sub)
    try:
        from unified_pipeline.registry.cli import add_models_parser

        add_models_parser(sub)
    except ImportError:  # registry not installed in a stripped build
        pass
    for command in sub.choices.values():  # also accepted after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        install_check.require_consistent_install()
        declared_models()  # model instances of the preset are CLI names too
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(error_line(exc, args.command), file=sys.stderr)
        return 2 if isinstance(exc, (PipelineError, OSError)) else 1


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def error_line(exc: BaseException, command: str) -> str:
    """The one line a failed command prints instead of a traceback."""
    if isinstance(exc, PipelineError):
        hint = exc.hint
        text = _one_line(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        text = f"{paths}: {exc.strerror}" if paths else exc.strerror
        hint = OS_HINTS.get(type(exc), "check the path, its permissions and the free disk space")
    elif isinstance(exc, OSError):  # raised with a message of our own (e.g. a missing model folder)
        text, hint = _one_line(exc), None
    else:
        text = f"{type(exc).__name__}: {_one_line(exc)}"
        hint = f"rerun as `unified-pipeline --debug {command} ...` to see the traceback"
    return f"error: {text}" + (f" (hint: {hint})" if hint else "")


OS_HINTS = {
    FileNotFoundError: "check that the path exists",
    NotADirectoryError: "a part of the path is a file, not a folder",
    IsADirectoryError: "give a file, not a folder",
    PermissionError: "check the permissions of the path, or choose another location",
    FileExistsError: "remove it or choose another location",
}


if __name__ == "__main__":
    sys.exit(main())
