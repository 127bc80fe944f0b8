"""Labelled texts in UTF-8 CSV or JSONL files with `text` and `label` columns.

One manifest row per text. `row` is the 1-based data row of a CSV (header not counted) or
the 1-based line of a JSONL file, so the quality suite can point at the exact record. Empty
texts, missing labels and unparsable JSON lines stay in the manifest (flagged) for the suite
to name; a file that is not UTF-8 or lacks the columns raises DatasetError.

Tensors: character-level token ids. The vocabulary comes from the train split only (0 = pad,
1 = unknown, then characters by falling frequency), so val/test characters unseen in training
map to "unknown" exactly as they would at serving time.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from unified_pipeline import hashing
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.splits import SPLITS, assign_splits
from unified_pipeline.datasets.table_files import (
    checked_files, data_files, folder_version, header_fields, read_csv_frame, read_jsonl_records,
)
from unified_pipeline.errors import DatasetError

TEXT_EXTENSIONS = (".csv", ".jsonl")
PAD, UNKNOWN = "<pad>", "<unk>"
MANIFEST_COLUMNS = [
    "sample_id", "path", "row", "label", "text", "length", "sha256", "size", "split",
    "decodable", "error", "file_sha256",
]


class TextKind:
    name = "text"
    description = "UTF-8 *.csv / *.jsonl files with `text` and `label` columns"

    def detect(self, root: Path) -> bool:
        files = data_files(root, TEXT_EXTENSIONS)
        return bool(files) and all({"text", "label"} <= set(header_fields(f)) for f in files)

    def build_manifest(self, root: Path, file_hashes: dict[str, str],
                       cfg: PreprocessConfig | None = None) -> pd.DataFrame:
        root = Path(root)
        rows: list[dict] = []
        for rel in checked_files(root, file_hashes, TEXT_EXTENSIONS):
            if rel.lower().endswith(".jsonl"):
                records = read_jsonl_records(root / rel)
                objects = [r for _, r in records if isinstance(r, dict)]
                found = set().union(*(r.keys() for r in objects)) if objects else {"text", "label"}
            else:
                frame = read_csv_frame(root / rel)
                records = [(i + 1, rec) for i, rec in enumerate(frame.to_dict("records"))]
                found = set(frame.columns)
            if not {"text", "label"} <= found:
                raise DatasetError(f"{root / rel}: missing column(s) {sorted({'text', 'label'} - found)}; "
                                   f"found {sorted(found)}")
            for row_no, rec in records:
                rows.append(_manifest_row(rel, row_no, rec, file_hashes[rel]))
        if not rows:
            raise DatasetError(f"{root}: no text records found in {sorted(file_hashes)}")
        df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        df["row"] = df["row"].astype("int64")
        df["length"] = df["length"].astype("int64")
        df["decodable"] = df["decodable"].astype(bool)
        df["split"] = assign_splits(df, cfg or PreprocessConfig())
        return df

    def build_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> TensorBundle:
        import torch

        root = Path(root)
        bad = manifest[~manifest["decodable"].astype(bool) | manifest["label"].isna()]
        if len(manifest) == 0 or len(bad):
            where = ", ".join(f"{p}:{r}" for p, r in zip(bad["path"].head(5), bad["row"].head(5)))
            raise DatasetError(f"{root}: {len(bad)} record(s) unreadable or unlabelled ({where})" if len(bad)
                               else f"{root}: manifest has no samples")
        splits = assign_splits(manifest, cfg)
        texts = manifest["text"].fillna("").astype(str).tolist()
        vocab = build_char_vocab([t for t, s in zip(texts, splits) if s == "train"] or texts,
                                 int(cfg.extra.get("min_char_count", 1)))
        max_len, facts = length_facts(manifest["length"].to_numpy()[splits == "train"], manifest["length"].to_numpy(),
                                      cfg.max_text_len)
        ids = encode_chars(texts, vocab, max_len)
        classes = sorted(manifest["label"].astype(str).unique())
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[c] for c in manifest["label"].astype(str)], dtype=np.int64)
        tensors, counts, raw, sample_ids = {}, {}, {}, {}
        for split in SPLITS:
            sel = np.flatnonzero(splits == split)
            tensors[f"{split}/x"] = torch.from_numpy(ids[sel])
            tensors[f"{split}/y"] = torch.from_numpy(y[sel])
            counts[split] = int(len(sel))
            raw[split] = [texts[i] for i in sel]
            sample_ids[split] = [manifest["sample_id"].iloc[i] for i in sel]
        meta = {
            "dataset": root.name, "kind": self.name, "data_version": folder_version(root),
            "splits": counts, "classes": classes, "vocab": vocab, "tokenizer": "char",
            "max_len": max_len, "pad_id": 0, "unknown_id": 1, "facts": facts,
        }
        return TensorBundle(tensors=tensors, meta=meta, sidecars={"texts": raw, "samples": sample_ids})

    def manifest_facts(self, manifest: pd.DataFrame, cfg: PreprocessConfig) -> dict:
        lengths = manifest["length"].to_numpy()
        train = lengths[(manifest["split"] == "train").to_numpy()] if "split" in manifest else lengths
        return length_facts(train, lengths, cfg.max_text_len)[1]

    def generate_samples(self, raw_root: Path, seed: int = 0) -> list[Path]:
        from unified_pipeline.datasets.samples.langid_text import generate_langid
        from unified_pipeline.datasets.samples.number_words import generate_number_words

        return [generate_langid(Path(raw_root) / "langid", seed),
                generate_number_words(Path(raw_root) / "number_words", seed)]


def _manifest_row(rel: str, row_no: int, rec: dict | str, file_sha: str) -> dict:
    if isinstance(rec, str):  # a line that is not a JSON object: rec holds the reason
        text, label, error = "", None, rec
    else:
        text = rec.get("text")
        label = rec.get("label")
        error = None
        if text is not None and not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False)
        text = "" if text is None else text
        label = None if label is None or (isinstance(label, str) and label.strip() == "") else str(label)
    data = text.encode("utf-8")
    return {
        "sample_id": f"{rel}:{row_no}", "path": rel, "row": row_no, "label": label, "text": text,
        "length": len(text), "sha256": hashing.sha256_bytes(data), "size": len(data),
        "split": None, "decodable": error is None, "error": error,
        "file_sha256": file_sha,
    }


# "auto" covers this share of the training texts in full; the cap bounds attention's quadratic cost.
LENGTH_PERCENTILE = 98
MAX_LEN_CAP = 512
MIN_LEN = 32  # short texts cost nothing more: the model trims columns that are padding in every row


def length_facts(train_lengths: np.ndarray, all_lengths: np.ndarray, setting: int | str) -> tuple[int, dict]:
    """The maximum length in characters (a number, or "auto": the 98th percentile of the training
    texts, capped) and what it costs: how many texts of the dataset it cuts."""
    if setting == "auto":
        basis = train_lengths if len(train_lengths) else all_lengths
        chosen = int(np.ceil(np.percentile(basis, LENGTH_PERCENTILE))) if len(basis) else MIN_LEN
        max_len = min(max(chosen, MIN_LEN), MAX_LEN_CAP)
        how = f"auto: {LENGTH_PERCENTILE}th percentile of {len(basis)} training texts, within [{MIN_LEN}, {MAX_LEN_CAP}]"
    else:
        try:
            max_len = int(setting)
        except (TypeError, ValueError):
            raise DatasetError(f"max_text_len must be a positive number or \"auto\", got {setting!r}") from None
        if max_len < 1:
            raise DatasetError(f"max_text_len must be a positive number or \"auto\", got {setting!r}")
        how = "set in the preset"
    cut = int((all_lengths > max_len).sum())
    return max_len, {"max_text_len": max_len, "max_text_len_choice": how, "texts_cut": cut,
                     "texts_cut_fraction": round(cut / max(len(all_lengths), 1), 4),
                     "longest_text": int(all_lengths.max()) if len(all_lengths) else 0}


def build_char_vocab(texts: list[str], min_count: int = 1) -> list[str]:
    counts = Counter(ch for t in texts for ch in t)
    chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    return [PAD, UNKNOWN] + chars


def encode_chars(texts: list[str], vocab: list[str], max_len: int) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocab) if i >= 2}
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, t in enumerate(texts):
        out[i, : min(len(t), max_len)] = [index.get(c, 1) for c in t[:max_len]]
    return out


KIND = TextKind()
