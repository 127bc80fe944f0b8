"""Tiny datasets of every kind, written straight into a raw root for fast end-to-end tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def vision(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    ds = root / "tiny_images"
    for label in range(3):
        (ds / str(label)).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 40, size=(8, 8), dtype=np.uint8)
            img[:, label * 2: label * 2 + 3] = 220  # class = position of a bright bar
            Image.fromarray(img, mode="L").save(ds / str(label) / f"{i}.png")
    return ds


def audio(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    ds = root / "tiny_audio"
    sr = 8000
    t = np.arange(int(0.4 * sr)) / sr
    for label, freq in (("low", 300.0), ("high", 1800.0)):
        (ds / label).mkdir(parents=True)
        for i in range(per_class):
            wave = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(ds / label / f"{i}.wav", wave.astype(np.float32), sr, subtype="PCM_16")
    return ds


def text(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ds = root / "tiny_text"
    ds.mkdir(parents=True)
    rows = ["text,label"]
    for i in range(40):
        rows.append(f"{'a' * int(rng.integers(2, 6))}b{i},alpha")
        rows.append(f"{'z' * int(rng.integers(2, 6))}y{i},omega")
    (ds / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return ds


def transitions(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ds = root / "tiny_transitions"
    ds.mkdir(parents=True)
    lines = ["episode,state_0,state_1,action_0,next_state_0,next_state_1,reward"]
    for ep in range(12):
        s = rng.normal(size=2)
        for _ in range(15):
            a = rng.uniform(-1, 1)
            n = np.array([s[0] + 0.1 * s[1], s[1] + 0.1 * a])
            lines.append(f"{ep},{s[0]:.5f},{s[1]:.5f},{a:.5f},{n[0]:.5f},{n[1]:.5f},{-(n ** 2).sum():.5f}")
            s = n
    (ds / "rollouts.csv").write_text("\n".join(lines) + "\n")
    return ds


def causal(root: Path, n: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ds = root / "tiny_causal"
    ds.mkdir(parents=True)
    x0 = rng.normal(size=n)
    x1 = 1.5 * x0 + rng.normal(size=n)
    x2 = -1.2 * x1 + rng.normal(size=n)
    data = np.stack([x0, x1, x2], axis=1)
    np.savetxt(ds / "data.csv", data, delimiter=",", header="x0,x1,x2", comments="", fmt="%.6f")
    adj = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    np.savetxt(ds / "adjacency.csv", adj, delimiter=",", header="x0,x1,x2", comments="", fmt="%d")
    return ds


def memory(root: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ds = root / "tiny_memory"
    ds.mkdir(parents=True)
    things = ["apple", "river", "robot", "garden", "music", "engine"]
    with open(ds / "records.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            a, b = rng.choice(things, size=2, replace=False)
            good = a in ("apple", "garden", "music")
            rec = {
                "source_memory_id": f"mem_{i:05d}",
                "timestamp": f"2026-01-01T00:{i % 60:02d}:00Z",
                "base_gist": {"summary": f"the {a} met the {b} near item {i}", "keywords": [a, b], "original_length": 40},
                "relational_context": {"entities": [a, b], "relations": [{"subject": a, "verb": "meets", "object": b}]},
                "modalities": {"text_confidence": float(rng.uniform(0.5, 1)),
                               "audio_features": rng.normal(size=4).round(4).tolist(),
                               "image_features": rng.normal(size=4).round(4).tolist()},
                "action_feedback": {"action": "recall", "reward": 1.0 if good else -1.0, "success": bool(good)},
            }
            fh.write(json.dumps(rec) + "\n")
    return ds


ALL = {"vision": vision, "audio": audio, "text": text, "transitions": transitions, "causal": causal, "memory": memory}


# ---------------------------------------------------------------- one number in three modalities
# The multimodal model matches classes by meaning: vision "1", audio "one", text "1" ("uno").

NUMBER_NAMES = ("zero", "one", "two")


def spoken_numbers(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Audio classes zero/one/two: a tone each, far apart in pitch."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    ds = root / "tiny_spoken"
    sr = 8000
    t = np.arange(int(0.3 * sr)) / sr
    for k, label in enumerate(NUMBER_NAMES):
        (ds / label).mkdir(parents=True)
        for i in range(per_class):
            freq = 300.0 * 3 ** k * (1 + 0.01 * i)
            wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(ds / label / f"{i}.wav", wave.astype(np.float32), sr, subtype="PCM_16")
    return ds


def number_words(root: Path) -> Path:
    """Number words 0-2 in every sample language, labelled with the digit."""
    import csv

    from unified_pipeline.datasets.samples.number_words import number_word_rows

    ds = root / "tiny_words"
    ds.mkdir(parents=True)
    with open(ds / "data.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(r for r in number_word_rows() if r[1] in ("0", "1", "2"))
    return ds
