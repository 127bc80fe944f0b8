"""Images decode to PIL's pixels whatever their mode, format or (mis)named suffix."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unified_pipeline.datasets.decode_workers import load_image
from unified_pipeline.datasets.facts_readers import read_image_facts

RGB = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
CASES = [(m, f) for f in ("png", "webp", "bmp") for m in ("RGB", "RGBA", "L", "P", "1")] + [
    (m, "jpg") for m in ("RGB", "L", "1")]  # JPEG holds no alpha or palette


def _pil(path, mode):
    with Image.open(path) as im:
        arr = np.asarray(im.convert(mode))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@pytest.mark.parametrize("mode,fmt", CASES)
def test_every_mode_and_format_decodes_to_pils_pixels(tmp_path, mode, fmt):
    path = tmp_path / f"img.{fmt}"
    Image.fromarray(RGB).convert(mode).save(path)
    for want in ("RGB", "L"):
        assert np.array_equal(load_image(path, want, None), _pil(path, want))


def test_a_file_whose_suffix_names_another_format_still_decodes(tmp_path):
    path = tmp_path / "really_a_jpeg.png"
    Image.fromarray(RGB).save(path, format="JPEG")
    assert read_image_facts(path)["format"] == "JPEG"
    assert np.array_equal(load_image(path, "RGB", None), _pil(path, "RGB"))


def test_a_truncated_png_is_refused_with_pils_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(RGB).save(path)
    path.write_bytes(path.read_bytes()[:200])
    facts = read_image_facts(path)
    assert facts["decodable"] is False and "truncated" in facts["error"]


def test_worker_processes_decode_what_one_process_does(tmp_path, monkeypatch):
    from unified_pipeline.datasets import decode_workers
    from unified_pipeline.datasets.decode_workers import decode_all, decode_images
    from unified_pipeline.datasets.facts_readers import image_facts

    monkeypatch.setattr(decode_workers, "TASK_FILES", 32)
    rng = np.random.default_rng(1)
    rels = []
    for i in range(70):  # three tasks
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
        rels.append(f"{i:03d}.png")
    (tmp_path / "bad.png").write_bytes(b"broken")
    rels.insert(3, "bad.png")
    pooled = list(decode_all(image_facts, tmp_path, rels, (None, True), workers=2, pool_from=1))
    alone = list(decode_all(image_facts, tmp_path, rels, (None, True), workers=1))
    assert len(pooled) == len(rels) and pooled[3]["decodable"] is False
    for a, b in zip(pooled, alone):
        assert a.keys() == b.keys() and np.array_equal(a.get("_row"), b.get("_row"))
        assert {k: v for k, v in a.items() if k != "_row"} == {k: v for k, v in b.items() if k != "_row"}
    del rels[3]
    pixels = list(decode_all(decode_images, tmp_path, rels, ("RGB", None), workers=2, pool_from=1))
    assert all(np.array_equal(x, load_image(tmp_path / rel, "RGB", None)) for (x, _), rel in zip(pixels, rels))


def test_decode_workers_do_not_run_the_parents_main_script(tmp_path, monkeypatch):
    """Under a console script (`dagster job execute`) spawn would run the script again in each worker."""
    import sys
    import types

    from unified_pipeline.datasets import decode_workers

    marker = tmp_path / "main_ran"
    script = tmp_path / "console_script.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)  # what a console script's __main__ looks like: a file, no module spec
    monkeypatch.setitem(sys.modules, "__main__", main)
    for i in range(3):
        Image.fromarray(RGB).save(tmp_path / f"{i}.png")
    rels = [f"{i}.png" for i in range(3)] * 50  # several tasks, so both workers start
    out = list(decode_workers.decode_all(decode_workers.decode_images, tmp_path, rels, ("RGB", None), workers=2,
                                           pool_from=1))
    assert len(out) == len(rels) and np.array_equal(out[-1][0], RGB.transpose(2, 0, 1))
    assert not marker.exists()
    assert sys.modules["__main__"] is main  # given back once the workers started
