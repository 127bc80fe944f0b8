"""CLI commands about running and finished training: status, monitor, control, results, visualize."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from unified_pipeline.errors import ConfigError
from unified_pipeline.models.registry import MODELS
from unified_pipeline.paths import unified_home


def _bar(done: float, width: int = 24) -> str:
    filled = int(round(max(0.0, min(1.0, done)) * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _eta(seconds: float | None) -> str:
    if not isinstance(seconds, (int, float)) or not seconds:
        return "-"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _cell(value, spec: str, width: int) -> str:
    """A number formatted with `spec`, or "-" for a field this model's progress file lacks
    (NOTEARS and the controller record no training loss)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(format(value, spec), f">{width}")
    return format("-", f">{width}")


def progress_lines(states: list[dict]) -> list[str]:
    lines = [f"{'model':<26} {'status':<9} {'progress':<26} {'epoch':>9} {'loss':>9} {'metric':>16} {'samples/s':>10} {'eta':>7}"]
    for st in states:
        metric_key = next((k for k in st if k.startswith("val_") and k != "val_loss"
                           and isinstance(st[k], (int, float))), None)
        metric = f"{metric_key[4:]}={st[metric_key]:.4f}" if metric_key else "-"
        epochs = max(int(st.get("epochs") or 0), 1)
        epoch = st.get("epoch") if isinstance(st.get("epoch"), int) else 0
        lines.append(
            f"{st.get('model', '?'):<26} {st.get('status', '?'):<9} {_bar(epoch / epochs):<26} "
            f"{epoch:>4}/{epochs:<4} {_cell(st.get('train_loss'), '.4f', 9)} {metric:>16} "
            f"{_cell(st.get('samples_per_s'), '.0f', 10)} {_eta(st.get('eta_s')):>7}"
        )
    return lines


def _version_reasons() -> list[dict]:
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.version_reasons import latest_reasons

    return latest_reasons(ModelRegistry())


def _next_run() -> dict[str, dict]:
    """Model -> Dagster's verdict before the next run: up to date or stale, and which input changed."""
    from unified_pipeline.dagster_home import open_instance
    from unified_pipeline.stale_reasons import model_staleness

    try:
        from unified_pipeline.definitions import build_definitions

        with open_instance() as instance:
            if instance is None:
                return {}
            return model_staleness(instance, build_definitions())  # the data and preset as they are now
    except Exception as exc:  # noqa: BLE001 - e.g. a bad preset: status still shows the progress
        return {"?": {"state": "unknown", "reasons": [" ".join(f"{type(exc).__name__}: {exc}".split())[:200]]}}


def cmd_status(args) -> int:
    from unified_pipeline.progress import read_all

    states = read_all()
    versions = _version_reasons()
    upcoming = _next_run()
    if args.json:
        by_model = {v["model"]: v for v in versions}
        for st in states:
            if st.get("model") in by_model:
                v = by_model.pop(st["model"])
                st.update(newest_version=v["version"], why=v["why"])
        states += [{"model": v["model"], "status": "idle", "newest_version": v["version"], "why": v["why"]}
                   for v in by_model.values()]
        for st in states:
            st["next_run"] = upcoming.pop(st.get("model"), None)
        states += [{"model": m, "status": "never trained", "next_run": u} for m, u in upcoming.items()]
        print(json.dumps(states, indent=2))
        return 0
    if upcoming:
        print("before the next run (Dagster's stale status, as in the UI):")
        for model, u in upcoming.items():
            print(f"  {model}: {u['state']}: " + "; ".join(u["reasons"]))
        print()
    if not states and not versions:
        print("no training has run yet (progress files appear under .unified/progress/)")
        return 0
    if states:
        print("\n".join(progress_lines(states)))
    if versions:
        print("\nnewest versions, and why they were trained (a step reuses them while these inputs stay the same):")
    for v in versions:
        aliases = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
        print(f"  {v['version']}{aliases}: {v['why']}")
    return 0


def cmd_monitor(args) -> int:
    from unified_pipeline.progress import read_all

    interval = max(0.2, args.interval)
    rounds = 0
    try:
        while True:
            states = read_all()
            if sys.stdout.isatty():
                sys.stdout.write("\033[2J\033[H")
            print(time.strftime("%H:%M:%S"), "unified-pipeline monitor (Ctrl-C to quit)")
            print("\n".join(progress_lines(states)) if states else "nothing has trained yet")
            sys.stdout.flush()
            rounds += 1
            running = [s for s in states if s.get("status") == "running"]
            if args.once or (args.until_idle and not running) or (args.rounds and rounds >= args.rounds):
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def cmd_control(args) -> int:
    from unified_pipeline.train_model import control_path
    from unified_pipeline.training.control import write_command

    if args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}; valid: {sorted(MODELS)}")
    action = getattr(args, "action", None)
    cmd: dict = {}
    if action == "pause" or args.pause:
        cmd["pause"] = True
    if action == "resume" or args.resume:
        cmd["pause"] = False
    if action == "stop" or args.stop:
        cmd["stop"] = True
    if args.lr is not None:
        cmd["lr"] = args.lr
    if not cmd:
        raise ConfigError("nothing to send", hint="give --lr X, --pause, --resume or --stop")
    path = write_command(control_path(args.model), **cmd)
    print(f"{args.model}: queued {cmd} ({path}); applied at the next step boundary and logged in the run")
    return 0


def _chosen_result(results: list[Path], run: str | None) -> Path:
    """The newest result, or the one whose run id is (or starts with) `run`; never a file elsewhere."""
    from unified_pipeline.paths import inside

    if not run:
        return results[-1]
    matches = [p for p in results if p.stem == run] or [p for p in results if p.stem.startswith(run)]
    if len(matches) > 1:
        raise ConfigError(f"run id {run!r} is ambiguous: {[p.stem for p in matches]}", hint="give more characters")
    if not matches:
        raise ConfigError(f"no results for run {run!r}; known: {[p.stem for p in results[-10:]]}")
    return inside(unified_home() / "results", matches[0].name)


def cmd_results(args) -> int:
    from unified_pipeline.resume import check_run_id

    if args.run:
        check_run_id(args.run)
    results = sorted((unified_home() / "results").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not results:
        print("no results yet; run `make run` or `unified-pipeline collaborative`")
        return 0
    chosen = _chosen_result(results, args.run)
    if args.json:
        print(chosen.read_text())
        return 0
    md = chosen.with_suffix(".md")
    print(md.read_text() if md.exists() else chosen.read_text())
    return 0


def cmd_visualize(args) -> int:
    from unified_pipeline.inference import model_dir
    from unified_pipeline.training import plots

    if args.model and args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}; valid: {sorted(MODELS)}")
    out = Path(args.out) if args.out else unified_home() / "plots"
    out.mkdir(parents=True, exist_ok=True)
    names = [args.model] if args.model else list(MODELS)
    written = []
    for name in names:
        try:
            folder = model_dir(name, args.version)
        except Exception as exc:  # a model that has not trained yet is skipped, with the reason
            if args.model:
                raise
            print(f"{name}: skipped ({exc})")
            continue
        history = json.loads((folder / "history.json").read_text()) if (folder / "history.json").exists() else []
        pngs = plots.history_plots(history, out / name, name)
        print(f"{name} ({folder.name}): " + (f"{len(pngs)} plot(s)" if pngs else "no curves in its history"))
        for p in pngs:
            print(f"  {p}")
        written += pngs
    print(f"{len(written)} plot(s) written under {out}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("status", help="state of every model's latest training (running, finished, failed)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("monitor", help="live view of running trainings: progress, loss, metric, samples/s, ETA")
    s.add_argument("--interval", type=float, default=1.0)
    s.add_argument("--once", action="store_true", help="print one frame and exit")
    s.add_argument("--until-idle", action="store_true", help="exit when nothing is running")
    s.add_argument("--rounds", type=int, default=0, help=argparse_suppress())
    s.set_defaults(func=cmd_monitor)

    s = sub.add_parser("control", help="change a running training: --lr X, --pause, --resume, --stop")
    s.add_argument("model")
    s.add_argument("--lr", type=float)
    s.add_argument("--pause", action="store_true")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--stop", action="store_true", help="stop early with a checkpoint")
    s.set_defaults(func=cmd_control)
    for action in ("pause", "resume", "stop"):
        s = sub.add_parser(action, help=f"{action} a running training (same as control --{action})")
        s.add_argument("model")
        s.set_defaults(func=cmd_control, action=action, lr=None, pause=False, resume=False, stop=False)

    s = sub.add_parser("results", help="summary of the latest collaborative run (or --run ID)")
    s.add_argument("--run", help="run id, or its first characters (default: the newest run)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_results)

    s = sub.add_parser("visualize", help="write PNG loss and metric curves of trained models")
    s.add_argument("model", nargs="?")
    s.add_argument("--version")
    s.add_argument("--out", help="folder for the PNG files (default $UNIFIED_HOME/plots, i.e. .unified/plots)")
    s.set_defaults(func=cmd_visualize)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
