"""What the manifest step reads from each image or clip, run in worker processes.

Kept apart from the kinds' modules so a worker imports PIL, soundfile and numpy only: importing
a kind's module brings in torch and pandas, which cost each worker seconds before its first file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from unified_pipeline.datasets.decode_workers import image_pixels, open_image
from unified_pipeline.datasets.row_packs import write_pack
from unified_pipeline.hashing import sha256_file

GRAY_MODES = ("1", "L")
ROW_FIELD = "_row"  # a decoded tensor row a facts reader may return beside the facts
SHA_FIELD = "_sha256"  # the file's content hash, when the worker hashed it
JSON_FIELD = "_json"  # the facts as JSON text, for the cache: dumped in the workers, not the step's process
_WAV_SHORT = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")


def read_image_facts(path: str | Path, size: tuple[int, int] | None = None, with_pixels: bool = False,
                     data: bytes | None = None) -> dict:
    """Fully decode one image (so truncated files fail here, not during training). `with_pixels`:
    a colour image's tensor row comes along (ROW_FIELD): whatever the other images are, its lane
    is stored as RGB at `size`, so the tensors step need not decode it again. `data`: the file's
    bytes, already read (decoding from memory costs 56 µs for a 32x32 PNG, from the path 85 µs)."""
    if data is not None:
        facts = _image_facts(path, size, with_pixels, data)
        if facts.get("decodable", True):
            return facts  # else decoded again from the path, so the error names the file, not a buffer
    return _image_facts(path, size, with_pixels)


def _image_facts(path: str | Path, size: tuple[int, int] | None, with_pixels: bool, data: bytes | None = None) -> dict:
    try:
        with open_image(path, data) as im:
            im.load()
            facts = {"width": im.width, "height": im.height, "channels": len(im.getbands()),
                     "mode": im.mode, "format": im.format}
            if with_pixels and im.mode not in GRAY_MODES:  # a grey one's mode depends on the others
                facts[ROW_FIELD] = image_pixels(im, "RGB", size)
            return facts
    except Exception as exc:  # PIL raises many types for broken files; all mean "not decodable"
        return {"decodable": False, "error": f"{type(exc).__name__}: {exc}"}


def image_facts(root: str, rels: list[str], size: tuple[int, int] | None = None,
                with_pixels: bool = False, contents: list[bytes | None] | None = None) -> list[dict]:
    contents = contents or [None] * len(rels)
    return [read_image_facts(os.path.join(root, rel), size, with_pixels, data) for rel, data in zip(rels, contents)]


def read_clip_facts(path: Path) -> dict:
    """Decode the whole clip: header facts, peak level, and why it is unusable if it is."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile reports every unreadable file as an exception
        return {"decodable": False, "error": f"{type(exc).__name__}: {exc}"}
    facts = {
        "sample_rate": int(info.samplerate), "channels": int(info.channels), "frames": int(data.shape[0]),
        "duration_s": data.shape[0] / info.samplerate if info.samplerate else 0.0, "format": info.format,
        "peak": float(np.abs(data).max()) if data.size else 0.0,
    }
    # libsndfile silently reads what is there when a WAV's data chunk is cut short
    short = _WAV_SHORT.search(info.extra_info or "")
    if short and int(short.group(2)) < int(short.group(1)):
        facts.update(decodable=False, error=f"truncated: header declares {short.group(1)} data bytes, file holds {short.group(2)}")
    elif data.shape[0] == 0:
        facts.update(decodable=False, error="no audio frames")
    return facts


def clip_facts(root: str, rels: list[str], contents: list[bytes | None] | None = None) -> list[dict]:
    """(`contents` is not used: libsndfile reads the path, and names it in its errors.)"""
    return [read_clip_facts(Path(root) / rel) for rel in rels]


IN_MEMORY_FILE_BYTES = 1 << 20  # a bigger file is hashed as a stream and decoded from its path


def _small_file(path: str) -> bytes | None:
    """The file's bytes, or None when it holds more than IN_MEMORY_FILE_BYTES. Read for its size
    (a read of the limit allocated 1 MB per file: 33 µs a 32x32 PNG, against 7 µs), then on to
    the end, in case it grew meanwhile."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, min(size, IN_MEMORY_FILE_BYTES) + 1)
        while len(data) <= IN_MEMORY_FILE_BYTES and (more := os.read(fd, IN_MEMORY_FILE_BYTES + 1 - len(data))):
            data += more
    finally:
        os.close(fd)
    return data if len(data) <= IN_MEMORY_FILE_BYTES else None


def read_files(root: str, rels: list[str], read_facts, packs: str | None, hash_them: bool, *extra) -> list[dict]:
    """read_facts(root, rels, *extra), run in a worker: with each file's sha256 (SHA_FIELD) when
    `hash_them`, so a new file is read on every core and hashed there, not first hashed in the
    step's process alone; and with the tensor rows it returns written to one pack in `packs` by
    the worker itself (each ROW_FIELD becomes the row's PackedRow), so they never cross a pipe;
    and with the facts' JSON text (JSON_FIELD) the cache stores."""
    digests, contents = None, None
    if hash_them:  # each file read once: hashed, and decoded from the same bytes
        paths = [os.path.join(root, rel) for rel in rels]  # strings: pathlib cost 10 µs a file here
        contents = [_small_file(path) for path in paths]
        digests = [hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
                   for path, data in zip(paths, contents)]
    facts = read_facts(root, rels, *extra, contents=contents)
    if digests is not None:
        for f, digest in zip(facts, digests, strict=True):
            f[SHA_FIELD] = digest
    for f in facts:
        f[JSON_FIELD] = json.dumps({k: v for k, v in f.items() if not k.startswith("_")})
    with_row = [f for f in facts if ROW_FIELD in f]
    if packs is None:
        for f in with_row:
            del f[ROW_FIELD]
        return facts
    for f, placed in zip(with_row, write_pack(packs, [f[ROW_FIELD] for f in with_row]), strict=True):
        f[ROW_FIELD] = placed
    return facts
