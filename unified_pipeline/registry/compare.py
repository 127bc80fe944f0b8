"""Side-by-side comparison of two versions: metric deltas, lineage differences, changed files."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from unified_pipeline.registry.versions import Version

COST_KEYS = ("cpu_s", "gpu_s", "peak_gpu_mem_mb", "peak_rss_mb", "samples", "wall_s", "attempts")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'test': {'accuracy': 0.9}} -> {'test.accuracy': 0.9}; lists stay whole values."""
    if not isinstance(obj, dict):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key in sorted(obj, key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        value = obj[key]
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


@dataclass
class Comparison:
    a: str
    b: str
    metrics: list[dict[str, Any]] = field(default_factory=list)  # {key, a, b, delta (b - a) or None}
    lineage: list[dict[str, Any]] = field(default_factory=list)  # only keys whose values differ
    files: dict[str, list[str]] = field(default_factory=dict)  # changed / only_a / only_b
    cost: list[dict[str, Any]] = field(default_factory=list)  # {key, a, b, delta}: training/cost.py fields

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "metrics": self.metrics, "lineage": self.lineage, "files": self.files,
                "cost": self.cost}

    def text(self) -> str:
        lines = [f"compare {self.a} -> {self.b}", "", "metrics (delta = b - a):"]
        rows = [(m["key"], _show(m["a"]), _show(m["b"]), "" if m["delta"] is None else f"{m['delta']:+.6g}")
                for m in self.metrics]
        lines += _table(("metric", "a", "b", "delta"), rows) if rows else ["  (no metrics)"]
        lines += ["", "cost (CPU s, GPU s, peak memory MB, samples seen, monotonic wall s, attempts):"]
        rows = [(c["key"], _show(c["a"]), _show(c["b"]), "" if c["delta"] is None else f"{c['delta']:+.6g}")
                for c in self.cost]
        lines += _table(("cost", "a", "b", "delta"), rows) if rows else ["  (not recorded)"]
        lines += ["", "lineage differences:"]
        rows = [(d["key"], _show(d["a"]), _show(d["b"])) for d in self.lineage]
        lines += _table(("field", "a", "b"), rows) if rows else ["  (identical)"]
        lines += ["", "files: " + ", ".join(f"{k} {len(v)}" for k, v in self.files.items())]
        for kind, names in self.files.items():
            lines += [f"  {kind}: {n}" for n in names]
        return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 48 else text[:45] + "..."


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r).rstrip() for r in rows
    ]


def compare_versions(a: Version, b: Version) -> Comparison:
    out = Comparison(a=a.name, b=b.name)
    ma, mb = flatten(a.metrics), flatten(b.metrics)
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        na, nb = _number(va), _number(vb)
        out.metrics.append({"key": key, "a": va, "b": vb, "delta": None if na is None or nb is None else nb - na})
    ca, cb = a.lineage.get("cost") or {}, b.lineage.get("cost") or {}
    for key in COST_KEYS:
        if key in ca or key in cb:
            na, nb = _number(ca.get(key)), _number(cb.get(key))
            out.cost.append({"key": key, "a": ca.get(key), "b": cb.get(key),
                             "delta": None if na is None or nb is None else nb - na})
    la = flatten(a.lineage) | {"fingerprint": a.fingerprint}
    lb = flatten(b.lineage) | {"fingerprint": b.fingerprint}
    for key in sorted(set(la) | set(lb)):
        if la.get(key) != lb.get(key):
            out.lineage.append({"key": key, "a": la.get(key), "b": lb.get(key)})
    fa = {k: v["sha256"] for k, v in a.files.items()}
    fb = {k: v["sha256"] for k, v in b.files.items()}
    out.files = {
        "changed": sorted(k for k in set(fa) & set(fb) if fa[k] != fb[k]),
        "only_a": sorted(set(fa) - set(fb)),
        "only_b": sorted(set(fb) - set(fa)),
    }
    return out
