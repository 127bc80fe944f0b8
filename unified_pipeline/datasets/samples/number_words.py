"""Number words 0-9 in the sample languages, spelled by num2words, labelled with the digit.

The text side of the multimodal "same number?" task: "drei", "Trois" and "THREE" all carry
label "3", the key the handwritten digits and spoken digits use too. Each word comes in a few
written forms (capitalised, with punctuation, in brackets), so val and test hold forms the
training split has not seen of words it has.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from unified_pipeline.atomic import atomic_dir
from unified_pipeline.datasets.samples.langid_text import LOCALES


def number_word_rows(seed: int = 0, locales: tuple[str, ...] = LOCALES) -> list[tuple[str, str]]:
    """(text, digit) pairs without duplicates, shuffled deterministically."""
    from num2words import num2words

    rows = {(form, str(d)) for loc in locales for d in range(10) for word in [num2words(d, lang=loc)]
            for form in (word, word.capitalize(), f"{word}.", f"{word.capitalize()}!", f"({word})")}
    ordered = sorted(rows)
    random.Random(seed).shuffle(ordered)
    return ordered


def generate_number_words(dest: Path, seed: int = 0) -> Path:
    """Write data.csv (text,label) under `dest` (kept as is when it already exists)."""
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    with atomic_dir(dest) as tmp:
        with open(tmp / "data.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(number_word_rows(seed))
    return dest
