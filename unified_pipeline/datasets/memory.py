"""Memory records: JSONL files of DeepParameter records (shape in docs/architecture.md).

One manifest row per record (`row` = 1-based line number). A line that is not JSON, or a
record missing a required field or holding the wrong type, stays in the manifest with
`decodable=False` and an error naming the line and field. The canonical record JSON is kept
in the `record` column, so tensors are built from exactly what the suite checked.

Tensors: gist word ids (vocabulary from train gists; 0 = pad, 1 = unknown), keyword
multi-hot, relation triples as (entity, verb, entity) ids (0 = pad, 1 = unknown), modality
vector [text_confidence] + audio_features + image_features, feedback (reward, success), plus
`action` ids (index into meta `action_vocab`) because the reward is feedback on that action.
Lengths are padded to the dataset's maxima, recorded in meta.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from unified_pipeline import hashing
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.splits import SPLITS, hash_splits
from unified_pipeline.datasets.table_files import (
    checked_files, data_files, folder_version, header_fields, read_jsonl_records,
)
from unified_pipeline.datasets.text import PAD, UNKNOWN
from unified_pipeline.errors import DatasetError

WORD = re.compile(r"[a-z0-9']+")
COLUMNS = [
    "sample_id", "path", "row", "label", "memory_id", "summary", "n_words", "n_keywords", "n_entities",
    "n_relations", "text_confidence", "audio_dim", "image_dim", "action", "reward", "success", "sha256", "size",
    "split", "decodable", "error", "record", "file_sha256",
]
# field path -> check of its value
REQUIRED = {
    "source_memory_id": lambda v: isinstance(v, str) and v != "",
    "base_gist.summary": lambda v: isinstance(v, str),
    "base_gist.keywords": lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
    "relational_context.entities": lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
    "relational_context.relations": lambda v: isinstance(v, list) and all(
        isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("subject", "verb", "object")) for r in v),
    "modalities.text_confidence": lambda v: _is_number(v),
    "modalities.audio_features": lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    "modalities.image_features": lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    "action_feedback.reward": lambda v: _is_number(v),
    "action_feedback.success": lambda v: isinstance(v, bool),
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def field(rec: dict, dotted: str, default=None):
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class MemoryKind:
    name = "memory"
    description = "*.jsonl files of DeepParameter memory records"

    def detect(self, root: Path) -> bool:
        files = data_files(root, (".jsonl",))
        return bool(files) and all({"base_gist", "source_memory_id"} & set(header_fields(f)) for f in files)

    def build_manifest(self, root: Path, file_hashes: dict[str, str],
                       cfg: PreprocessConfig | None = None) -> pd.DataFrame:
        root = Path(root)
        rows = []
        for rel in checked_files(root, file_hashes, (".jsonl",)):
            for line, rec in read_jsonl_records(root / rel):
                rows.append(self._row(rel, line, rec, file_hashes[rel]))
        if not rows:
            raise DatasetError(f"{root}: no memory records found in {sorted(file_hashes)}")
        df = pd.DataFrame(rows, columns=COLUMNS)
        for col in ("row", "n_words", "n_keywords", "n_entities", "n_relations", "audio_dim", "image_dim"):
            df[col] = df[col].astype("int64")
        for col in ("text_confidence", "reward"):
            df[col] = df[col].astype("float64")
        df["decodable"] = df["decodable"].astype(bool)
        df["split"] = hash_splits(df["sha256"], cfg or PreprocessConfig())
        return df

    @staticmethod
    def _row(rel: str, line: int, rec: dict | str, file_sha: str) -> dict:
        problems = [rec] if isinstance(rec, str) else [
            f"line {line}: field {name} " + ("missing" if field(rec, name) is None else "has the wrong type")
            for name, ok in REQUIRED.items() if not ok(field(rec, name))]
        rec = rec if isinstance(rec, dict) else {}
        good = not problems
        canonical = json.dumps(rec, sort_keys=True, ensure_ascii=False)
        data = canonical.encode("utf-8")
        sha = hashing.sha256_bytes(data)
        summary = field(rec, "base_gist.summary") if good else None
        return {
            "sample_id": f"{rel}:{line}", "path": rel, "row": line, "label": None,
            "memory_id": field(rec, "source_memory_id") if isinstance(field(rec, "source_memory_id"), str) else None,
            "summary": summary, "n_words": len(words(summary)) if good else 0,
            "n_keywords": len(field(rec, "base_gist.keywords")) if good else 0,
            "n_entities": len(field(rec, "relational_context.entities")) if good else 0,
            "n_relations": len(field(rec, "relational_context.relations")) if good else 0,
            "text_confidence": float(field(rec, "modalities.text_confidence")) if good else np.nan,
            "audio_dim": len(field(rec, "modalities.audio_features")) if good else 0,
            "image_dim": len(field(rec, "modalities.image_features")) if good else 0,
            "action": str(field(rec, "action_feedback.action", "")) if good else None,
            "reward": float(field(rec, "action_feedback.reward")) if good else np.nan,
            "success": bool(field(rec, "action_feedback.success")) if good else None,
            "sha256": sha, "size": len(data), "split": None, "decodable": good,
            "error": "; ".join(problems) if problems else None, "record": canonical, "file_sha256": file_sha,
        }

    def build_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> TensorBundle:
        import torch

        root = Path(root)
        bad = manifest[~manifest["decodable"].astype(bool)]
        if len(manifest) == 0 or len(bad):
            where = "; ".join(str(e) for e in bad["error"].head(5))
            raise DatasetError(f"{root}: {len(bad)} bad record(s): {where}" if len(bad) else f"{root}: no records")
        for col in ("audio_dim", "image_dim"):
            if manifest[col].nunique() > 1:
                odd = manifest[manifest[col] != manifest[col].mode()[0]].iloc[0]
                raise DatasetError(f"{root / odd['path']}: line {odd['row']}: {col} {odd[col]} differs from the "
                                   f"dataset's {int(manifest[col].mode()[0])}")
        records = [json.loads(r) for r in manifest["record"]]
        splits = hash_splits(manifest["sha256"], cfg)
        train = [r for r, s in zip(records, splits) if s == "train"] or records
        vocab = _vocab(w for r in train for w in words(field(r, "base_gist.summary")))
        keyword_vocab = sorted({k for r in train for k in field(r, "base_gist.keywords")})
        entity_vocab = _vocab(e for r in train for e in _entities(r))
        verb_vocab = _vocab(rel["verb"] for r in train for rel in field(r, "relational_context.relations"))
        action_vocab = sorted({str(field(r, "action_feedback.action", "")) for r in records})
        n = len(records)
        max_len = max(1, int(manifest["n_words"].max()))
        max_rel = max(1, int(manifest["n_relations"].max()))
        audio, image = int(manifest["audio_dim"].iloc[0]), int(manifest["image_dim"].iloc[0])
        arrays = {
            "gist": np.zeros((n, max_len), np.int64), "keywords": np.zeros((n, len(keyword_vocab)), np.float32),
            "relations": np.zeros((n, max_rel, 3), np.int64), "modalities": np.zeros((n, 1 + audio + image), np.float32),
            "feedback": np.zeros((n, 2), np.float32), "action": np.zeros(n, np.int64),
        }
        w_ix, k_ix, e_ix, v_ix = (_index(v) for v in (vocab, keyword_vocab, entity_vocab, verb_vocab))
        a_ix = _index(action_vocab)
        for i, r in enumerate(records):
            ids = [w_ix.get(w, 1) for w in words(field(r, "base_gist.summary"))]
            arrays["gist"][i, : len(ids)] = ids
            for k in field(r, "base_gist.keywords"):
                if k in k_ix:
                    arrays["keywords"][i, k_ix[k]] = 1.0
            for j, rel in enumerate(field(r, "relational_context.relations")):
                arrays["relations"][i, j] = (e_ix.get(rel["subject"], 1), v_ix.get(rel["verb"], 1),
                                             e_ix.get(rel["object"], 1))
            m = r["modalities"]
            arrays["modalities"][i] = [m["text_confidence"], *m["audio_features"], *m["image_features"]]
            fb = r["action_feedback"]
            arrays["feedback"][i] = (fb["reward"], 1.0 if fb["success"] else 0.0)
            arrays["action"][i] = a_ix[str(fb.get("action", ""))]
        tensors, counts, ids_by_split = {}, {}, {}
        for split in SPLITS:
            sel = np.flatnonzero(splits == split)
            for name, arr in arrays.items():
                tensors[f"{split}/{name}"] = torch.from_numpy(np.ascontiguousarray(arr[sel]))
            counts[split] = int(len(sel))
            ids_by_split[split] = [records[i]["source_memory_id"] for i in sel]
        meta = {
            "dataset": root.name, "kind": self.name, "data_version": folder_version(root), "splits": counts,
            "vocab": vocab, "keyword_vocab": keyword_vocab, "entity_vocab": entity_vocab, "verb_vocab": verb_vocab,
            "action_vocab": action_vocab, "max_gist_len": max_len, "max_relations": max_rel,
            "modality_dims": {"text_confidence": 1, "audio_features": audio, "image_features": image},
        }
        return TensorBundle(tensors=tensors, meta=meta, sidecars={"records": ids_by_split})

    def generate_samples(self, raw_root: Path, seed: int = 0) -> list[Path]:
        from unified_pipeline.datasets.samples.memory_records import generate_memory_records

        return [generate_memory_records(Path(raw_root) / "memory_records", seed)]


def _entities(rec: dict) -> list[str]:
    rels = field(rec, "relational_context.relations")
    return list(field(rec, "relational_context.entities")) + [x for r in rels for x in (r["subject"], r["object"])]


def _vocab(tokens) -> list[str]:
    counts = Counter(tokens)
    return [PAD, UNKNOWN] + sorted(counts, key=lambda t: (-counts[t], t))


def _index(vocab: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab) if t not in (PAD, UNKNOWN)}


KIND = MemoryKind()
