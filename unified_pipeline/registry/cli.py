"""`unified-pipeline models ...`: list, show, compare, promote, rollback, tag, prune, verify, events.

Every sub-command takes `--json` for machine-readable output; errors are PipelineErrors that
the main CLI prints as one line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unified_pipeline.errors import ConfigError, IntegrityError
from unified_pipeline.registry.store import ModelRegistry
from unified_pipeline.registry.versions import Version, model_and_ref, version_pair


def add_models_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("models", help="registered model versions: list, show, compare, promote, rollback, ...")
    p.add_argument("--root", type=Path, help="registry root (default $UNIFIED_HOME/registry)")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    def cmd(name: str, helptext: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--json", action="store_true", help="machine-readable output")
        return s

    s = cmd("list", "versions with aliases, tags and test metrics")
    s.add_argument("model", nargs="?")
    s = cmd("show", "model card of a version (default production, else latest)")
    s.add_argument("model")
    s.add_argument("ref", nargs="?", help="vN, production or latest")
    s = cmd("compare", "metric deltas and lineage differences of two versions")
    s.add_argument("versions", nargs="+", metavar="VERSION",
                   help="model/vN model/vM, model/vN vM, or model vN vM (aliases work as vN)")
    s = cmd("promote", "make a version production (refused when its evidence falls short, unless --force)")
    s.add_argument("model")
    s.add_argument("ref", help="vN")
    s.add_argument("--reason", default="")
    s.add_argument("--force", action="store_true",
                   help="promote despite failed evidence; needs --reason, recorded in the event log")
    s = cmd("rollback", "move production back (default: to the previous production)")
    s.add_argument("model")
    s.add_argument("--to", dest="to", help="vN to make production")
    s.add_argument("--reason", default="")
    s = cmd("tag", "set a version's tag (stable, experimental, backup, ...), or remove it with --remove")
    s.add_argument("model")
    s.add_argument("ref", help="vN, production or latest")
    s.add_argument("tag", nargs="?", help="up to 32 letters, digits, '_', '-' or '.'")
    s.add_argument("--remove", action="store_true", help="clear the version's tag")
    s.add_argument("--reason", default="")
    s = cmd("prune", "delete old versions; keeps the newest N and every version that was production")
    s.add_argument("model")
    s.add_argument("--keep", type=int, default=5)
    s.add_argument("--dry-run", action="store_true")
    s = cmd("verify", "check the sha256 of every file of the versions")
    s.add_argument("model", nargs="?", help="default: every model")
    s.add_argument("ref", nargs="?", help="default: every version")
    s = cmd("events", "the append-only log of register, promote, rollback, prune and tag events")
    s.add_argument("model")
    s = cmd("reproduce", "retrain a version from its recorded inputs into a scratch root and say whether it matches")
    s.add_argument("version", help="model/vN")
    s.add_argument("--scratch", type=Path, help="folder for the replay (default $UNIFIED_HOME/replay/...)")
    p.set_defaults(func=run_models_command)
    return p


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _test_metrics(v: Version, limit: int = 3) -> str:
    test = v.metrics.get("test") if isinstance(v.metrics.get("test"), dict) else {}
    items = [(k, x) for k, x in test.items() if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return " ".join(f"{k}={x:.4g}" for k, x in items[:limit]) or "-"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if args.json else text)


def _cmd_list(reg: ModelRegistry, args: argparse.Namespace) -> int:
    versions = reg.list(args.model)
    rows = [[v.name, ",".join(v.aliases) or "-", v.tag, v.created_at[:19].replace("T", " "), _test_metrics(v),
             (v.fingerprint or "-")[:12], _size(v.size)] for v in versions]
    text = table(["version", "aliases", "tag", "created (UTC)", "test metrics", "fingerprint", "size"], rows)
    _emit(args, [v.to_dict() for v in versions], text if versions else "no registered versions")
    return 0


def _cmd_verify(reg: ModelRegistry, args: argparse.Namespace) -> int:
    if args.ref:
        targets = [(args.model, args.ref)]
    else:
        models = [args.model] if args.model else reg.models()
        targets = [(m, v.number) for m in models for v in reg.list(m)]
    results = []
    for model, ref in targets:
        try:
            v = reg.verify(model, ref)
            results.append({"version": v.name, "ok": True, "files": len(v.files), "error": None})
        except IntegrityError as exc:
            if args.ref and not args.json:
                raise
            results.append({"version": f"{model}/{ref if str(ref).startswith('v') else f'v{ref}'}",
                            "ok": False, "files": None, "error": str(exc)})
    rows = [[r["version"], "ok" if r["ok"] else "FAILED", r["files"], r["error"] or ""] for r in results]
    _emit(args, results, table(["version", "status", "files", "problem"], rows) if rows else "nothing to verify")
    return 0 if all(r["ok"] for r in results) else 1


def _cmd_tag(reg: ModelRegistry, args: argparse.Namespace) -> int:
    if args.remove == (args.tag is not None):
        raise ConfigError("models tag: give either a TAG or --remove, not both or neither")
    v = reg.tag(args.model, args.ref, None if args.remove else args.tag, reason=args.reason)
    _emit(args, v.to_dict(), f"{v.name}: tag removed" if v.tag is None else f"{v.name}: tagged {v.tag}")
    return 0


def _normalise(args: argparse.Namespace) -> None:
    """`model/vN` and `model vN` mean the same in every sub-command."""
    if getattr(args, "model", None) is None:
        return
    slot = "to" if args.models_command == "rollback" else "ref"
    args.model, ref = model_and_ref(args.model, getattr(args, slot, None))
    if hasattr(args, slot) or ref is not None:
        setattr(args, slot, ref)


def run_models_command(args: argparse.Namespace) -> int:
    reg = ModelRegistry(getattr(args, "root", None))
    command = args.models_command
    _normalise(args)
    if command == "list":
        return _cmd_list(reg, args)
    if command == "verify":
        return _cmd_verify(reg, args)
    if command == "tag":
        return _cmd_tag(reg, args)
    if command == "reproduce":
        from unified_pipeline.training.replay import reproduce

        report = reproduce(args.version, args.scratch, registry=reg)
        _emit(args, report.to_dict(), report.text())
        return 0 if report.match else 1
    if command == "show":
        from unified_pipeline.registry.downstream import describe, stale_models

        v = reg.get(args.model, args.ref)
        stale = [s for s in stale_models(reg) if s["version"] == v.name]
        _emit(args, {**v.to_dict(), "stale": stale}, "\n".join([reg.card(args.model, v.number), *describe(stale)]))
    elif command == "compare":
        c = reg.compare(*version_pair(args.versions))
        _emit(args, c.to_dict(), c.text())
    elif command == "promote":
        v = reg.promote(args.model, args.ref, reason=args.reason, force=args.force)
        _emit(args, v.to_dict(), f"{v.name} is now production" + (" (forced; override logged)" if args.force else ""))
    elif command == "rollback":
        before = reg.get(args.model, "production").name
        v = reg.rollback(args.model, to=args.to, reason=args.reason)
        from unified_pipeline.registry.downstream import describe

        _emit(args, {"from": before, "to": v.name, "version": v.to_dict(), "stale": reg.last_stale},
              "\n".join([f"production: {before} -> {v.name}", *describe(reg.last_stale)]))
    elif command == "prune":
        r = reg.prune(args.model, keep=args.keep, dry_run=args.dry_run)
        verb = "would remove" if r.dry_run else "removed"
        rows = [[name, verb] for name in r.removed] + [[name, f"kept: {why}"] for name, why in r.kept.items()]
        text = table(["version", "action"], rows) + f"\n{verb} {len(r.removed)} version(s), {_size(r.freed_bytes)}"
        _emit(args, r.to_dict(), text)
    elif command == "events":
        events = reg.events(args.model)
        rows = [[e.get("at", "")[:19].replace("T", " "), e.get("event"), e.get("who"),
                 e.get("version") or ",".join(e.get("removed", [])),
                 e.get("reason") or e.get("why") or ""] for e in events]
        _emit(args, events, table(["at (UTC)", "event", "who", "version", "reason"], rows))
    return 0
