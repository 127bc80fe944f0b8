"""PNG files as Dagster metadata that renders as images in the UI."""
from __future__ import annotations

import base64
from pathlib import Path

from dagster import MetadataValue

_MAX_INLINE_BYTES = 400_000  # keep run-storage events small; bigger plots are linked instead


def image_metadata(title: str, png: Path) -> MetadataValue:
    png = Path(png)
    data = png.read_bytes()
    if len(data) > _MAX_INLINE_BYTES:
        return MetadataValue.path(str(png))
    encoded = base64.b64encode(data).decode("ascii")
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")
