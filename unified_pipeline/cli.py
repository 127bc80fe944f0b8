"""`unified-pipeline`: what Dagster does not do itself (sample data, presets, models, predict)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from unified_pipeline.errors import PipelineError


def _cmd_sample_data(args) -> int:
    from unified_pipeline.sample_data import write_sample_data

    root = Path(args.root) if args.root else None
    print(f"writing sample data (seed {args.seed})")
    written = write_sample_data(root, seed=args.seed, kinds=args.kind or None, force=args.force)
    print(f"{len(written)} dataset(s) written")
    return 0


def _cmd_data(args) -> int:
    from unified_pipeline.datasets import discover, undetected
    from unified_pipeline.hashing import list_files

    rows = []
    for ref in discover():
        files = list_files(ref.root)
        rows.append({"dataset": ref.name, "kind": ref.kind, "files": len(files),
                     "bytes": sum(f.stat().st_size for f in files), "path": str(ref.root)})
    bad = undetected()
    if args.json:
        print(json.dumps({"datasets": rows, "not_recognised": bad}, indent=2))
        return 0
    if not rows:
        print("no datasets; run `unified-pipeline sample-data` or see data/README.md")
    for r in rows:
        print(f"{r['dataset']:<24} {r['kind']:<12} {r['files']:>7} files {r['bytes'] / 1e6:>9.2f} MB")
    for name, why in bad.items():
        print(f"{name:<24} not recognised: {why}")
    return 0


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
        for name in preset.training_scenarios:
            preset.available_models_for(name)
        print(f"{args.file or 'presets/training_preset.json'}: valid ({len(preset.training_scenarios)} scenarios)")
    return 0


def _cmd_job(args) -> int:
    job = args.job or "collaborative_training"
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "unified_pipeline.definitions", "-j", job]
    if args.config:
        cmd += ["-c", args.config]
    print("$ " + " ".join(cmd[2:]), flush=True)
    return subprocess.call(cmd, env={**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", _dagster_home())})


def _dagster_home() -> str:
    from unified_pipeline.paths import project_root

    home = project_root() / ".dagster_home"
    home.mkdir(exist_ok=True)
    template = project_root() / "dagster.yaml"
    if template.exists() and not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(template.read_text())
    return str(home)


def _cmd_predict(args) -> int:
    from unified_pipeline.inference import predict

    for item, results in predict(args.model, args.inputs, version=args.version, top=args.top):
        shown = ", ".join(f"{label} ({p:.3f})" for label, p in results)
        print(f"{item}\t{shown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unified-pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample-data", help="write the built-in sample datasets into data/raw")
    s.add_argument("--root", help="raw data folder (default: data/raw or $UNIFIED_DATA)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--kind", action="append", help="only this kind (repeatable)")
    s.add_argument("--force", action="store_true", help="replace existing sample folders")
    s.set_defaults(func=_cmd_sample_data)

    s = sub.add_parser("data", help="list datasets with kind, size, and folders that are not recognised")
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
        s.set_defaults(func=_cmd_job)

    s = sub.add_parser("predict", help="label images, audio files or text lines with a trained model")
    s.add_argument("model")
    s.add_argument("inputs", nargs="+", help="files, or text (for text models; '-' reads lines from stdin)")
    s.add_argument("--version", help="vN, latest or production (default)")
    s.add_argument("--top", type=int, default=1)
    s.set_defaults(func=_cmd_predict)

    from unified_pipeline.cli_ops import add_parsers

    add_parsers(sub)
    try:
        from unified_pipeline.registry.cli import add_models_parser

        add_models_parser(sub)
    except ImportError:  # registry not installed in a stripped build
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        hint = f" (hint: {exc.hint})" if getattr(exc, "hint", None) else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
