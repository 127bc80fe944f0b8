"""ModelRegistry: immutable model versions on disk, with aliases, rollback, retention and checksums.

Layout under the root (default `$UNIFIED_HOME/registry`):

    <model>/index.json      version numbers, next number, aliases, alias history, tags
    <model>/events.jsonl    append-only log: register, promote, rollback, prune, tag
    <model>/.lock           flock target serialising writers of this model
    <model>/v<N>/           one immutable version: the model folder + version.json

A version folder is built under a hidden `.partial` name and renamed into place, and it only
counts as a version once the index lists it, so a writer killed at any point leaves nothing
visible; the next writer removes its leftovers while holding the lock.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError, IntegrityError, PipelineError
from unified_pipeline.hashing import list_files, sha256_bytes, sha256_file
from unified_pipeline.paths import NameError_, check_name, unified_home
from unified_pipeline.registry import aliases as rules
from unified_pipeline.registry.card import render_card
from unified_pipeline.registry.compare import Comparison, compare_versions
from unified_pipeline.registry.evidence import shortfalls
from unified_pipeline.registry.index import (
    VERSION_FILE, append_event, read_events, read_index, write_index,
)
from unified_pipeline.registry.integrity import check_files
from unified_pipeline.registry.locking import model_lock
from unified_pipeline.registry.retention import PruneReport, check_keep, plan_prune, remove_versions
from unified_pipeline.registry.versions import (
    RegistryError, Version, check_lineage, parse_ref, split_name, version_name,
)

# Test hook: seconds to sleep after copying each file, so a test can kill a registration mid-copy.
COPY_DELAY_ENV = "UNIFIED_REGISTRY_COPY_DELAY_S"
_VERSION_DIR = re.compile(r"^v(\d+)$")
_CHUNK = 1 << 20


@dataclass
class RegisterResult:
    version: Version
    promoted: bool
    reason: str  # why it was (not) promoted, e.g. "test accuracy 0.951 < production v3 0.962"
    previous_production: str | None = None
    pruned: PruneReport | None = None  # the automatic prune after registering (keep_versions)
    prune_error: str | None = None  # that prune failed; the version itself is registered

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.to_dict(), "promoted": self.promoted, "reason": self.reason,
                "previous_production": self.previous_production,
                "pruned": None if self.pruned is None else self.pruned.to_dict(), "prune_error": self.prune_error}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def resolve_who(who: str | None) -> str:
    """`who` when given, else the OS user the process runs as."""
    if who:
        return who
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return f"uid{os.getuid()}"


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for chunk in iter(lambda: fin.read(_CHUNK), b""):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _check_tag(tag: str | None) -> None:
    if tag is not None and not (isinstance(tag, str) and re.match(r"^[A-Za-z0-9_.-]{1,32}$", tag)):
        raise ConfigError(f"tag {tag!r}: use up to 32 letters, digits, '_', '-' or '.'")


class ModelRegistry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else unified_home() / "registry"
        self.last_stale: list[dict[str, Any]] = []  # downstream versions the last rollback made stale

    # ----------------------------------------------------------------- helpers
    def _mdir(self, model: str) -> Path:
        try:
            return self.root / check_name(model, "model name")
        except NameError_ as exc:
            raise RegistryError(str(exc)) from None

    def _index(self, model: str, must_exist: bool = True) -> dict[str, Any]:
        index = read_index(self._mdir(model), model)
        if must_exist and not index["versions"] and index["next_number"] == 1:
            raise RegistryError(f"no versions of model {model!r} registered under {self.root}")
        return index

    def _number(self, model: str, index: dict[str, Any], ref: str | int | None) -> int:
        parsed = parse_ref(ref)
        if parsed is None:
            parsed = "production" if "production" in index["aliases"] else "latest"
        if isinstance(parsed, str):
            if parsed not in index["aliases"]:
                raise RegistryError(f"model {model!r} has no {parsed} version")
            return int(index["aliases"][parsed])
        if str(parsed) not in index["versions"]:
            gone = " (pruned)" if parsed < index["next_number"] else ""
            have = ", ".join(f"v{n}" for n in sorted(map(int, index["versions"]))) or "none"
            raise RegistryError(f"{version_name(model, parsed)} does not exist{gone}; versions: {have}")
        return parsed

    def _load(self, model: str, index: dict[str, Any], number: int) -> Version:
        path = self._mdir(model) / f"v{number}"
        vfile = path / VERSION_FILE
        try:
            raw = vfile.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{vfile} is missing or unreadable: {exc}") from exc
        expected = index["versions"][str(number)]["version_json_sha256"]
        actual = sha256_bytes(raw)
        if actual != expected:
            raise IntegrityError(f"{vfile}: sha256 {actual} does not match recorded {expected}")
        meta = json.loads(raw)
        held = sorted(a for a, n in index["aliases"].items() if int(n) == number)
        return Version(
            model=model, number=number, name=version_name(model, number), path=path,
            created_at=meta["created_at"], tag=index["tags"].get(str(number), meta.get("tag")),
            metrics=meta.get("metrics") or {}, lineage=meta.get("lineage") or {},
            fingerprint=meta.get("fingerprint"), aliases=held, files=meta.get("files") or {},
            size=int(meta.get("size", 0)),
        )

    def _cleanup(self, mdir: Path, index: dict[str, Any]) -> list[str]:
        """Remove leftovers of killed writers. Only lock holders write here, so the caller holds the lock."""
        removed = []
        for entry in mdir.iterdir():
            m = _VERSION_DIR.match(entry.name)
            orphan = m is not None and m.group(1) not in index["versions"]
            if entry.is_dir() and (orphan or entry.name.endswith(".partial")):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def _set_production(self, index: dict, number: int, event: str, reason: str, who: str) -> None:
        index["aliases"]["production"] = number
        index["alias_history"].append(
            {"alias": "production", "version": number, "event": event, "at": _now(), "who": who, "reason": reason}
        )

    # ---------------------------------------------------------------- writing
    def register(
        self,
        model: str,
        source: str | Path,
        *,
        lineage: dict[str, Any],
        metrics: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        tag: str | None = None,
        promote_rule: str = rules.DEFAULT_RULE,
        metric: str | None = None,
        higher_is_better: bool = True,
        reason: str = "",
        who: str | None = None,
        keep_versions: int | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> RegisterResult:
        """Copy `source` (a finished model folder) into the next immutable version `model/vN`.

        With `keep_versions`, old versions are pruned afterwards as `prune(keep=keep_versions)` would.
        With `evidence` (registry/evidence.py), the version becomes production only when the
        evidence and the rule both allow it; the verdicts are kept in its lineage.
        """
        mdir = self._mdir(model)
        source = Path(source)
        if not source.is_dir():
            raise ConfigError(f"model folder {source} does not exist")
        files = list_files(source)
        if not files:
            raise ConfigError(f"model folder {source} is empty")
        rels = [f.relative_to(source).as_posix() for f in files]
        if VERSION_FILE in rels:
            raise ConfigError(f"{source / VERSION_FILE}: name reserved for the registry's own record")
        if metrics is None:
            mfile = source / "metrics.json"
            try:
                metrics = json.loads(mfile.read_text(encoding="utf-8")) if mfile.exists() else {}
            except ValueError as exc:
                raise ConfigError(f"{mfile} is not valid JSON: {exc}") from exc
        if not isinstance(metrics, dict):
            raise ConfigError(f"metrics must be a dict, got {type(metrics).__name__}")
        check_lineage(lineage)
        rules.check_rule(promote_rule, metric)
        check_keep(keep_versions, "keep_versions", allow_none=True)
        _check_tag(tag)
        who = resolve_who(who)
        delay = float(os.environ.get(COPY_DELAY_ENV, "0") or 0)

        with model_lock(mdir):
            index = read_index(mdir, model)
            self._cleanup(mdir, index)
            number = int(index["next_number"])
            prod = index["aliases"].get("production")
            prod_metrics = None
            if prod is not None and promote_rule in ("better_or_equal", "strictly_better"):
                prod_metrics = self._load(model, index, int(prod)).metrics
            promoted, why = rules.decide(promote_rule, number, metrics, prod, prod_metrics, metric, higher_is_better)
            if evidence is not None:
                evidence = {**evidence, "rule": {"name": promote_rule, "holds": promoted, "why": why}}
                lineage = {**lineage, "evidence": evidence}
                missing = shortfalls(evidence, include_rule=False)
                if promoted and missing:
                    promoted, why = False, "evidence falls short: " + "; ".join(missing)
            record: dict[str, dict[str, Any]] = {}
            with atomic.atomic_dir(mdir / f"v{number}") as tmp:
                for src, rel in zip(files, rels):
                    dst = tmp / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    digest, size = _copy_hashed(src, dst)
                    record[rel] = {"sha256": digest, "size": size}
                    if delay:
                        time.sleep(delay)
                meta = {
                    "model": model, "version": number, "name": version_name(model, number), "created_at": _now(),
                    "tag": tag, "metrics": metrics, "lineage": lineage, "fingerprint": fingerprint,
                    "files": record, "size": sum(r["size"] for r in record.values()),
                }
                atomic.write_json(tmp / VERSION_FILE, meta)
                for path in tmp.rglob("*"):
                    if path.is_file():
                        path.chmod(0o444)  # immutable by convention and by mode
                vsha = sha256_file(tmp / VERSION_FILE)

            index["versions"][str(number)] = {"created_at": meta["created_at"], "fingerprint": fingerprint,
                                              "version_json_sha256": vsha}
            if tag:
                index["tags"][str(number)] = tag
            index["next_number"] = number + 1
            index["aliases"]["latest"] = number
            if promoted:
                self._set_production(index, number, "promote", reason or why, who)
            write_index(mdir, index)
            name = version_name(model, number)
            append_event(mdir, {"event": "register", "version": name, "at": meta["created_at"], "who": who,
                                "tag": tag, "fingerprint": fingerprint, "promoted": promoted, "why": why,
                                "run_id": lineage.get("run_id")})
            if promoted:
                append_event(mdir, {"event": "promote", "version": name, "at": _now(), "who": who,
                                    "from": None if prod is None else version_name(model, int(prod)),
                                    "to": name, "reason": reason or why})
            version = self._load(model, index, number)
        previous = None if prod is None else version_name(model, int(prod))
        result = RegisterResult(version=version, promoted=promoted, reason=why, previous_production=previous)
        if keep_versions is not None:
            # The new version is already durable: a failed clean-up must not turn it into a failed run.
            try:
                result.pruned = self.prune(model, keep=keep_versions, who=who)
            except (PipelineError, OSError) as exc:
                result.prune_error = f"automatic prune (keep_versions={keep_versions}) failed: {exc}"
        return result

    def promote(self, model: str, ref: str | int, reason: str = "", who: str | None = None,
                force: bool = False) -> Version:
        """Point `production` at a version by hand. A version whose recorded evidence falls short
        (registry/evidence.py) is refused unless `force`, which needs a `reason` and is logged."""
        mdir, who = self._mdir(model), resolve_who(who)
        with model_lock(mdir):
            index = self._index(model)
            number = self._number(model, index, ref)
            current = index["aliases"].get("production")
            if current is not None and int(current) == number:
                raise RegistryError(f"{version_name(model, number)} is already production")
            version = self._load(model, index, number)
            # The rule was judged against the production of its day; a person now decides that part.
            missing = shortfalls(version.lineage.get("evidence"), include_rule=False)
            if missing and not force:
                raise RegistryError(f"{version.name} may not be production: {'; '.join(missing)}",
                                    hint='override with --force --reason "..." (recorded in the event log)')
            if force and not reason.strip():
                raise ConfigError("promote --force needs --reason: the override is recorded in the append-only log")
            self._set_production(index, number, "promote", reason, who)
            write_index(mdir, index)
            event = {"event": "promote", "version": version.name, "at": _now(), "who": who, "reason": reason,
                     "to": version.name, "from": None if current is None else version_name(model, int(current))}
            if force:
                event.update(forced=True, overridden=missing)
            append_event(mdir, event)
            return self._load(model, index, number)

    def rollback(self, model: str, to: str | int | None = None, reason: str = "", who: str | None = None) -> Version:
        """Move `production` back: to `to`, or by default to the production before the current one."""
        mdir, who = self._mdir(model), resolve_who(who)
        with model_lock(mdir):
            index = self._index(model)
            current = index["aliases"].get("production")
            if current is None:
                raise RegistryError(f"model {model!r} has no production version to roll back")
            current = int(current)
            if to is None:
                stack = rules.production_stack(index["alias_history"])
                if len(stack) < 2:
                    raise RegistryError(f"{version_name(model, current)} is the first production version; "
                                        "nothing earlier to roll back to (use --to vN)")
                number = stack[-2]
            else:
                number = self._number(model, index, to)
            if number == current:
                raise RegistryError(f"{version_name(model, number)} is already production")
            self.verify(model, number)  # never roll back onto damaged weights
            self._set_production(index, number, "rollback", reason, who)
            write_index(mdir, index)
            append_event(mdir, {"event": "rollback", "version": version_name(model, number), "at": _now(),
                                "who": who, "from": version_name(model, current),
                                "to": version_name(model, number), "reason": reason})
            restored = self._load(model, index, number)
        from unified_pipeline.registry.downstream import mark_stale

        # Models trained on the version just rolled back from (encoders, teachers) are now stale.
        self.last_stale = mark_stale(self, model, who, reason)
        return restored

    def tag(self, model: str, ref: str | int, tag: str | None, reason: str = "", who: str | None = None) -> Version:
        """Set or clear a version's tag (stable, experimental, backup, ...); files stay untouched."""
        _check_tag(tag)
        mdir, who = self._mdir(model), resolve_who(who)
        with model_lock(mdir):
            index = self._index(model)
            number = self._number(model, index, ref)
            old = self._load(model, index, number).tag
            index["tags"][str(number)] = tag
            write_index(mdir, index)
            append_event(mdir, {"event": "tag", "version": version_name(model, number), "at": _now(),
                                "who": who, "from": old, "to": tag, "reason": reason})
            return self._load(model, index, number)

    def prune(self, model: str, keep: int = 5, dry_run: bool = False, who: str | None = None) -> PruneReport:
        """Delete old versions, keeping the newest `keep` and every version that ever held an alias."""
        check_keep(keep)
        mdir, who = self._mdir(model), resolve_who(who)
        with model_lock(mdir):
            index = self._index(model)
            report = plan_prune(model, index, keep)
            report.dry_run = dry_run
            report.freed_bytes = sum(self._load(model, index, int(split_name(n)[1][1:])).size for n in report.removed)
            if dry_run or not report.removed:
                return report
            remove_versions(mdir, index, report.removed)
            append_event(mdir, {"event": "prune", "at": _now(), "who": who, "removed": report.removed,
                                "kept": report.kept, "keep": keep, "freed_bytes": report.freed_bytes})
            return report

    # ---------------------------------------------------------------- reading
    def list(self, model: str | None = None) -> list[Version]:
        """Versions, oldest first (all models when `model` is None)."""
        if model is None:
            return [v for m in self.models() for v in self.list(m)]
        index = self._index(model, must_exist=False)
        return [self._load(model, index, n) for n in sorted(map(int, index["versions"]))]

    def models(self) -> list[str]:
        """Names of models with at least an index under the root."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "index.json").is_file())

    def get(self, model: str, ref: str | int | None = None) -> Version:
        """`ref`: 'v3', 3, 'production', 'latest', or None (production, else latest)."""
        index = self._index(model)
        return self._load(model, index, self._number(model, index, ref))

    def resolve(self, name: str | Version) -> Version:
        """'model/v3', 'model/production' or 'model' (production, else latest) -> Version."""
        if isinstance(name, Version):
            return name
        model, ref = split_name(name)
        return self.get(model, ref)

    def find_by_fingerprint(self, model: str, fingerprint: str) -> Version | None:
        """Newest version trained from the same inputs (for reuse when nothing changed)."""
        index = self._index(model, must_exist=False)
        for n in sorted(map(int, index["versions"]), reverse=True):
            if index["versions"][str(n)].get("fingerprint") == fingerprint:
                return self._load(model, index, n)
        return None

    def verify(self, model: str | Version, ref: str | int | None = None) -> Version:
        """Check every file's sha256 and that no file was added or removed; IntegrityError otherwise."""
        v = model if isinstance(model, Version) else self.get(model, ref)
        v = self.get(v.model, v.number)  # re-read the record: it is checked against the index
        check_files(v)
        return v

    def model_dir(self, model: str, ref: str | int | None = None) -> Path:
        """Folder of a version, after its checksums pass (what loaders should call)."""
        return self.verify(model, ref).path

    def compare(self, a: str | Version, b: str | Version) -> Comparison:
        """Metric deltas (b - a) and lineage differences; `a`/`b` are 'model/vN' names or Versions."""
        va = self.resolve(a)
        vb = self.resolve(b) if isinstance(b, Version) or "/" in b else self.get(va.model, b)
        return compare_versions(va, vb)

    def card(self, model: str, ref: str | int | None = None) -> str:
        return render_card(self.get(model, ref))

    def events(self, model: str) -> list[dict[str, Any]]:
        return read_events(self._mdir(model))
