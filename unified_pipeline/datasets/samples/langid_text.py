"""Language identification from the CLDR display names that Babel ships.

For each Latin-script locale, the names of languages, territories, currencies and scripts
as written in that language become texts labelled with the locale code. A string spelled
the same in two languages ("Toronto", "Kongo") is ambiguous, so it is dropped everywhere:
the data set holds no conflicting labels.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from unified_pipeline.atomic import atomic_dir

LOCALES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "pl", "cs", "tr", "fi", "hu", "ro", "id", "vi")
MAX_PER_LOCALE = 600


def display_names(locale: str) -> set[str]:
    from babel import Locale

    loc = Locale.parse(locale)
    names: set[str] = set()
    for table in (loc.languages, loc.territories, loc.currencies, loc.scripts):
        names.update(v.strip() for v in table.values() if v and v.strip())
    return names


def langid_rows(seed: int = 0, locales: tuple[str, ...] = LOCALES,
                max_per_locale: int = MAX_PER_LOCALE) -> list[tuple[str, str]]:
    """(text, label) pairs, at most `max_per_locale` per locale, shuffled deterministically."""
    per_locale = {loc: display_names(loc) for loc in locales}
    seen_in: dict[str, int] = {}
    for names in per_locale.values():
        for n in names:
            seen_in[n] = seen_in.get(n, 0) + 1
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    for loc in locales:
        unique = sorted(n for n in per_locale[loc] if seen_in[n] == 1)
        rng.shuffle(unique)
        rows.extend((text, loc) for text in unique[:max_per_locale])
    rng.shuffle(rows)
    return rows


def generate_langid(dest: Path, seed: int = 0, max_per_locale: int = MAX_PER_LOCALE,
                    locales: tuple[str, ...] = LOCALES) -> Path:
    """Write data.csv (text,label) under `dest` (kept as is when it already exists)."""
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    rows = langid_rows(seed, locales, max_per_locale)
    with atomic_dir(dest) as tmp:
        with open(tmp / "data.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return dest
