"""`python -m unified_pipeline.cluster up|down|status|env` (Makefile: cluster-up, cluster-down)."""
from __future__ import annotations

import argparse
import shlex
import sys

from unified_pipeline import cluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unified_pipeline.cluster", description=cluster.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status", "env"])
    args = p.parse_args(argv)
    try:
        if args.command == "up":
            cluster.up()
        elif args.command == "down":
            cluster.down()
        elif args.command == "status":
            states = cluster.status()
            for name, running in states.items():
                print(f"{name}: {'running' if running else 'stopped'}")
            if not states:
                print(f"no cluster started from {cluster.cluster_dir()}")
        else:
            for key, value in cluster.read_env().items():
                print(f"export {key}={shlex.quote(value)}")
    except cluster.ClusterError as exc:
        print(f"cluster {args.command}: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"cluster {args.command}: {exc.filename}: not found; start the cluster with `make cluster-up`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
