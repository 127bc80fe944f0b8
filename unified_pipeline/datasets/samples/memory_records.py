"""DeepParameter memory records about a small household world.

Each record describes one event ("Alice repaired the red lamp in the garage"): its gist,
keywords, entities and relation triples, modality features that carry the content (audio
features encode who spoke, image features encode the object and its colour, both with
noise) and the feedback for an action taken afterwards. The reward is learnable from the
content: each (verb, object) event has one right action (reward about +1; others about
-0.5, plus noise), and `success` is reward > 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unified_pipeline.atomic import atomic_dir

PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank")
PLACES = ("kitchen", "garden", "library", "garage", "office", "lab")
OBJECTS = ("box", "lamp", "book", "key", "cup", "laptop", "plant", "ball")
COLOURS = ("red", "blue", "green", "yellow", "black")
VERBS = ("moved", "opened", "dropped", "repaired", "found", "broke", "read", "watered")
ACTIONS = ("store", "repair", "discard", "report")
TEMPLATES = (
    "{p} {v} the {c} {o} in the {l}",
    "in the {l}, {p} {v} a {c} {o}",
    "the {c} {o} was {v} by {p} in the {l}",
)
AUDIO_DIM, IMAGE_DIM = 8, 12


def _best_action(verb: str, obj: str) -> str:
    # A fixed, content-only rule the adaptive controller can learn.
    return ACTIONS[(VERBS.index(verb) * 3 + OBJECTS.index(obj)) % len(ACTIONS)]


def memory_records(seed: int = 0, n: int = 1000) -> list[dict]:
    rng = np.random.default_rng(seed)
    voice = rng.normal(0, 1, size=(len(PEOPLE), AUDIO_DIM))
    shape = rng.normal(0, 1, size=(len(OBJECTS), IMAGE_DIM))
    tint = rng.normal(0, 0.5, size=(len(COLOURS), IMAGE_DIM))
    records = []
    for i in range(n):
        p, l, o, c, v = (int(rng.integers(len(t))) for t in (PEOPLE, PLACES, OBJECTS, COLOURS, VERBS))
        words = {"p": PEOPLE[p].capitalize(), "v": VERBS[v], "c": COLOURS[c], "o": OBJECTS[o], "l": PLACES[l]}
        summary = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(**words)
        summary = summary[0].upper() + summary[1:]
        action = ACTIONS[int(rng.integers(len(ACTIONS)))]
        right = action == _best_action(VERBS[v], OBJECTS[o])
        reward = round(float((1.0 if right else -0.5) + rng.normal(0, 0.1)), 4)
        relations = [{"subject": PEOPLE[p], "verb": VERBS[v], "object": OBJECTS[o]},
                     {"subject": OBJECTS[o], "verb": "located_in", "object": PLACES[l]}]
        if rng.random() < 0.5:
            relations.append({"subject": PEOPLE[p], "verb": "visited", "object": PLACES[l]})
        audio = voice[p] + rng.normal(0, 0.3, AUDIO_DIM)
        image = shape[o] + tint[c] + rng.normal(0, 0.3, IMAGE_DIM)
        records.append({
            "source_memory_id": f"mem_{i + 1:06d}",
            "timestamp": f"2026-01-{1 + i // 96 % 28:02d}T{i // 4 % 24:02d}:{i % 4 * 15:02d}:00Z",
            "base_gist": {"summary": summary, "keywords": [VERBS[v], OBJECTS[o], PLACES[l], COLOURS[c]],
                          "original_length": len(summary) + int(rng.integers(20, 200))},
            "relational_context": {"entities": [PEOPLE[p], OBJECTS[o], PLACES[l]], "relations": relations},
            "modalities": {"text_confidence": round(float(rng.uniform(0.6, 1.0)), 4),
                           "audio_features": [round(float(x), 4) for x in audio],
                           "image_features": [round(float(x), 4) for x in image]},
            "action_feedback": {"action": action, "reward": reward, "success": reward > 0},
        })
    return records


def generate_memory_records(dest: Path, seed: int = 0, n: int = 1000) -> Path:
    """Write records.jsonl under `dest` (kept as is when it already exists)."""
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    with atomic_dir(dest) as tmp:
        with open(tmp / "records.jsonl", "w", encoding="utf-8") as fh:
            for rec in memory_records(seed, n):
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
    return dest
