"""One lane of assets per raw dataset: observed files -> manifest (+ GX check) -> tensors.

A folder under the raw root that is not a dataset gets one asset instead, which fails with
the reason (naming the folder or the offending file), so the problem shows up in Dagster.
"""

import json
import os
import re
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    DataVersion,
    Failure,
    MetadataValue,
    ObserveResult,
    Output,
    asset,
    observable_source_asset,
)

from unified_pipeline import atomic
from unified_pipeline.code_version import code_version
from unified_pipeline.datasets import (
    KIND_MODULES, SETTINGS_FILE, DatasetRef, check_folder, dataset_settings, detect_kind, get_kind,
)
from unified_pipeline.datasets.base import META_FILE, PreprocessConfig
from unified_pipeline.errors import DatasetError
from unified_pipeline.datasets.splits import split_settings
from unified_pipeline.datasets.decode_workers import POOL_FROM, workers_started_early
from unified_pipeline.hashing import HashCache, combine, dataset_version, files_version, known_hashes, walk_files
from unified_pipeline.manifest_files import FolderScan, manifest_path, previous_scan, read_manifest, write_manifest
from unified_pipeline.paths import unified_home
from unified_pipeline.assets.quality_gate import stop_lane

QUALITY_CHECK = "great_expectations"
UNRECOGNISED_GROUP = "unrecognised"


def raw_key(dataset: str) -> AssetKey:
    return AssetKey([dataset, "raw_files"])


def manifest_key(dataset: str) -> AssetKey:
    return AssetKey([dataset, "manifest"])


def tensors_key(dataset: str) -> AssetKey:
    return AssetKey([dataset, "tensors"])


def hash_cache() -> HashCache:
    return HashCache(unified_home() / "cache" / "file_hashes.sqlite")


def preprocess_config(settings: dict[str, Any], log: Any = None, facts_cache: Any = None) -> PreprocessConfig:
    known = {f.name for f in fields(PreprocessConfig) if f.compare}  # (what is not a setting compares False)
    cfg = PreprocessConfig(**{k: v for k, v in settings.items() if k in known}, log=log, facts_cache=facts_cache)
    cfg.extra.update({k: v for k, v in settings.items() if k not in known})
    return cfg


def lane_settings(ref: DatasetRef, settings: dict[str, Any]) -> dict[str, Any]:
    """The preset's settings for the kind, overridden by the dataset's own dataset.json."""
    return {**settings, **dataset_settings(ref.root)}


def build_manifest(ref: DatasetRef, settings: dict[str, Any] | None = None, log: Any = None) -> tuple[str, Any, Path]:
    """Hash, read and record one dataset; returns (data version, manifest DataFrame, manifest file).

    The manifest's `split` column follows the same seed and fractions as the tensors.
    """
    from unified_pipeline.datasets.preprocess_cache import default_cache

    kind = get_kind(ref.kind)
    cfg = preprocess_config(settings or {}, log, facts_cache=default_cache())
    if getattr(kind, "hashes_while_reading", False):
        version, manifest = _manifest_hashing_new_files(ref, kind, cfg)
    else:
        version, file_hashes = dataset_version(ref.root, hash_cache(), log=log)
        samples = {rel: h for rel, h in file_hashes.items() if rel != SETTINGS_FILE}  # settings, not data
        manifest = kind.build_manifest(ref.root, samples, cfg)
    path = manifest_path(ref.name, version)
    scan = cfg.scan  # (set for the kinds that hash while reading)
    write_manifest(path, manifest, record={"root": os.path.abspath(ref.root), **split_settings(cfg),
                                           **({"facts_reader": scan.facts_reader, "scanned_ns": scan.scanned_ns}
                                              if scan else {})},
                   extra={"mtime_ns": [scan.stats[rel][1] for rel in manifest["path"].tolist()]} if scan else None,
                   scan_of=(ref.name, ref.root) if scan else None,
                   **({"lines_from": (scan.previous["lines_path"], scan.same_lines), "earlier": scan.previous}
                      if scan and scan.same_lines else {}))
    return version, manifest, path


def _manifest_hashing_new_files(ref: DatasetRef, kind: Any, cfg: PreprocessConfig) -> tuple[str, Any]:
    """The kind's manifest, for a kind that hashes the files it reads (class folders): a file the
    hash cache does not know is hashed by the worker that decodes it, on every core, instead of
    by this process alone first. Same version and hashes as dataset_version.

    A file whose size and mtime are those the folder's previous manifest recorded keeps that
    manifest's hash, facts and split (cfg.scan); only the others are looked up or read."""
    cache = hash_cache()
    cfg.scan = scan = FolderScan(previous_scan(ref.name, ref.root), time.time_ns())
    folder = os.path.abspath(ref.root)
    base = os.path.join(folder, "")  # as the hash cache's paths are written
    paths = walk_files(folder)
    # A folder never read before has every file to read: its workers start up while the files are stat'ed.
    with workers_started_early(scan.previous is None and len(paths) >= POOL_FROM):
        if scan.previous is None:
            by_rel, scan.stats = known_hashes(ref.root, cache, paths)
        else:
            by_rel, look = scan.compare(paths, len(base))
            by_rel.update(cache.lookup(look, under=folder, strip=len(base))[0])
        if by_rel.get(SETTINGS_FILE, "") is None:
            by_rel[SETTINGS_FILE] = cache.hash_files([str(ref.root / SETTINGS_FILE)])[str(ref.root / SETTINGS_FILE)]
        samples = {rel: h for rel, h in by_rel.items() if rel != SETTINGS_FILE}
        manifest = kind.build_manifest(ref.root, samples, cfg)
    hashed = dict(zip(manifest["path"].tolist(), manifest["sha256"].tolist()))  # (lists: a str Series iterates slowly)
    cache.remember([(base + rel, *scan.stats[rel], hashed[rel]) for rel, h in samples.items() if h is None])
    by_rel.update(hashed)
    return files_version(by_rel), manifest


def build_tensors(ref: DatasetRef, manifest_file: Path, version: str, settings: dict[str, Any],
                  log: Any = None) -> tuple[Path, bool]:
    """Write the dataset's tensors once per (data version, preprocessing settings); returns (folder, reused)."""
    settings_digest = combine([json.dumps(settings, sort_keys=True), code_version(KIND_MODULES[ref.kind])])[:12]
    out = unified_home() / "tensors" / ref.name / f"{version[:16]}-{settings_digest}"
    if (out / META_FILE).exists():
        return out, True
    kind = get_kind(ref.kind)
    cfg = preprocess_config(settings, log)
    try:
        with atomic.atomic_dir(out) as tmp:
            if hasattr(kind, "write_tensors"):  # shard by shard, from the per-file cache, in bounded memory
                from unified_pipeline.datasets.class_shards import earlier_folders

                manifest = read_manifest(manifest_file, getattr(kind, "tensor_columns", None))
                meta = kind.write_tensors(ref.root, manifest, cfg, tmp,
                                          reuse_from=earlier_folders(out), version=version)
                _set_lane_facts(meta, ref, version)
                atomic.write_json(tmp / META_FILE, meta)
            else:
                bundle = kind.build_tensors(ref.root, read_manifest(manifest_file), cfg)
                _set_lane_facts(bundle.meta, ref, version)
                bundle.save(tmp)
    except OSError:
        if not (out / META_FILE).exists():  # another run finished the same folder first: fine
            raise
    return out, False


def _set_lane_facts(meta: dict, ref: DatasetRef, version: str) -> None:
    meta.setdefault("dataset", ref.name)
    meta.setdefault("kind", ref.kind)
    meta["data_version"] = version


def lane_assets(ref: DatasetRef, settings: dict[str, Any]) -> list[Any]:
    """The three assets of one dataset lane."""
    group = ref.kind
    lane_code = code_version(KIND_MODULES[ref.kind], f"unified_pipeline.quality.{ref.kind}")

    @observable_source_asset(
        key=raw_key(ref.name),
        group_name=group,
        description=f"Raw {ref.kind} files in {ref.root}; data version = content hash of every file.",
        metadata={"path": MetadataValue.path(str(ref.root)), "kind": ref.kind},
    )
    def raw_files(context) -> ObserveResult:
        version, files = dataset_version(ref.root, hash_cache(), log=context.log)
        return ObserveResult(
            data_version=DataVersion(version),
            metadata={"files": len(files), "data_version": version[:16]},
        )

    @asset(
        key=manifest_key(ref.name),
        deps=[raw_key(ref.name)],
        group_name=group,
        kinds={"pandas", "great_expectations"},
        code_version=lane_code,
        description=f"One row per {ref.kind} sample of '{ref.name}' with content hash, split and decoded facts.",
        # Not produced when the suite fails: that is what stops the lane (see quality_gate.py).
        output_required=False,
        check_specs=[
            AssetCheckSpec(
                QUALITY_CHECK,
                asset=manifest_key(ref.name),
                description=f"Great Expectations suite for {ref.kind} data; a failure stops this lane: "
                            f"{tensors_key(ref.name).to_user_string()} and its models are skipped.",
            )
        ],
    )
    def manifest(context):
        from unified_pipeline.quality.runner import validate

        current = lane_settings(ref, settings)
        try:
            version, df, path = build_manifest(ref, current, log=context.log)
        except DatasetError as exc:
            # Unreadable data is a data-quality verdict, shown where the suite's verdicts are
            # (the check, `unified-pipeline data`), and it stops the lane like a failed suite.
            yield from stop_lane(context, ref.name, _version_or_none(ref), *_unreadable(ref, exc))
            return
        report = validate(ref.kind, df, current)
        from unified_pipeline.registry.evidence import record_verdict

        # Promotion reads the verdict per data version (registry/evidence.py).
        record_verdict(ref.name, version, report.success, run_id=context.run_id, summary=report.summary())
        value = {"dataset": ref.name, "kind": ref.kind, "data_version": version, "manifest": str(path), "rows": len(df)}
        preview = df.drop(columns=[c for c in ("text",) if c in df.columns]).head(10)
        facts_of = getattr(get_kind(ref.kind), "manifest_facts", None)  # e.g. how many texts the length cuts
        facts = facts_of(df, preprocess_config(current)) if facts_of else {}
        metadata = {
            "rows": len(df),
            "data_version": version[:16],
            "manifest": MetadataValue.path(str(path)),
            "splits": MetadataValue.json(df["split"].value_counts().to_dict() if "split" in df else {}),
            "preview": MetadataValue.md(preview.to_markdown(index=False) if _has_tabulate() else preview.to_string()),
            **facts,
        }
        check = AssetCheckResult(
            check_name=QUALITY_CHECK,
            asset_key=manifest_key(ref.name),
            passed=report.success,
            severity=AssetCheckSeverity.ERROR,
            description=report.summary(),
            metadata={"expectations": MetadataValue.json(report.to_metadata()), "data_version": version[:16]},
        )
        if report.success:
            yield Output(value, data_version=DataVersion(version), metadata=metadata)
            yield check
        else:
            yield from stop_lane(context, ref.name, version, metadata, check)

    @asset(
        key=tensors_key(ref.name),
        ins={"manifest": AssetIn(manifest_key(ref.name))},
        group_name=group,
        kinds={"pytorch", "safetensors"},
        code_version=lane_code,
        description=f"Preprocessed tensors of '{ref.name}' (train/val/test): safetensors shards, shards.json, meta.json.",
    )
    def tensors(context, manifest: dict) -> Output:
        folder, reused = build_tensors(ref, Path(manifest["manifest"]), manifest["data_version"],
                                       lane_settings(ref, settings), log=context.log)
        meta = json.loads((folder / META_FILE).read_text())
        value = {"dataset": ref.name, "kind": ref.kind, "data_version": manifest["data_version"], "path": str(folder)}
        return Output(
            value,
            data_version=DataVersion(folder.name),
            metadata={
                "path": MetadataValue.path(str(folder)),
                "reused": reused,
                "splits": MetadataValue.json(meta.get("splits", {})),
                "classes": MetadataValue.json(meta.get("classes", [])),
                "size_bytes": sum(p.stat().st_size for p in folder.iterdir()),
                **meta.get("facts", {}),
            },
        )

    return [raw_files, manifest, tensors]


def _unreadable(ref: DatasetRef, exc: DatasetError) -> tuple[dict[str, Any], AssetCheckResult]:
    message = " ".join(str(exc).split())
    hint = f" (hint: {exc.hint})" if exc.hint else ""
    return {"rows": 0, "error": MetadataValue.text(message + hint)}, AssetCheckResult(
        check_name=QUALITY_CHECK,
        asset_key=manifest_key(ref.name),
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=f"{ref.kind} suite not run: the data could not be read: {message}{hint}",
        metadata={"error": MetadataValue.text(message), "dataset": MetadataValue.path(str(ref.root))},
    )


def _version_or_none(ref: DatasetRef) -> str | None:
    try:
        return dataset_version(ref.root, hash_cache())[0]
    except (DatasetError, OSError):
        return None


def unrecognised_assets(problems: dict[Path, str]) -> list[AssetsDefinition]:
    """One always-failing asset per folder that is not a dataset, keyed unrecognised/<folder>."""
    out, used = [], set()
    for folder, reason in sorted(problems.items()):
        part = re.sub(r"[^A-Za-z0-9_]", "_", folder.name) or "_"  # asset keys allow only these
        while part in used:
            part += "_"
        used.add(part)
        out.append(_unrecognised_asset(AssetKey([UNRECOGNISED_GROUP, part]), folder, reason))
    return out


def _unrecognised_asset(key: AssetKey, folder: Path, reason: str) -> AssetsDefinition:
    @asset(
        key=key,
        group_name=UNRECOGNISED_GROUP,
        description=f"Not a dataset: {reason}",
        metadata={"path": MetadataValue.path(str(folder)), "problem": reason},
    )
    def not_a_dataset(context) -> None:
        # Checked again at run time: the folder may have changed since the definitions loaded.
        try:
            if not folder.is_dir():
                raise DatasetError(f"{folder}: folder no longer exists; reload the code location")
            check_folder(folder.parent, folder)
            kind = detect_kind(folder)
        except (DatasetError, ValueError) as exc:
            raise Failure(description=str(exc), metadata={"path": MetadataValue.path(str(folder))},
                          allow_retries=False) from None  # the reason says it all; no traceback
        raise Failure(description=f"{folder} is now a {kind} dataset; reload the code location to get its lane",
                      allow_retries=False)

    return not_a_dataset


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
