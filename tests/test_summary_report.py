"""The run report embeds each model's curves as images: copied PNGs beside the file, data URIs in the UI."""
import base64
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from PIL import Image

from unified_pipeline.assets.summary_asset import copied_plots, inline_plots, markdown_report, summary_rows

IMAGE_RE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def _png(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 9), shade, dtype=np.uint8), mode="L").save(path)
    return path


def _outcomes(tmp_path: Path) -> dict:
    plots = tmp_path / "versions" / "text_service" / "v3" / "plots"
    return {
        "text_service": {
            "version": "v3", "reused": False, "device": "cpu", "wall_time_s": 12.0, "promoted": True,
            "metrics": {"test": {"accuracy": 0.5}},
            "plots": {"loss": str(_png(plots / "loss.png", 10)), "val accuracy": str(_png(plots / "val_accuracy.png", 200)),
                      "gone": str(plots / "missing.png")},
        },
        "vision_service": {"version": "v1", "reused": True, "metrics": {}, "plots": {}},
    }


def test_report_file_links_copies_of_the_curves(tmp_path):
    outcomes = _outcomes(tmp_path)
    report = tmp_path / "results" / "run-1.md"
    text = markdown_report("run-1", summary_rows(outcomes), outcomes, copied_plots(report))
    images = IMAGE_RE.findall(text)
    assert [alt for alt, _ in images] == ["text_service loss", "text_service val accuracy"]
    for alt, src in images:
        copy = report.parent / unquote(src)
        assert not Path(src).is_absolute() and copy.is_file()
        original = outcomes["text_service"]["plots"][alt.removeprefix("text_service ")]
        assert copy.read_bytes() == Path(original).read_bytes()
    assert f"- plot gone: `{outcomes['text_service']['plots']['gone']}`" in text  # absent file: its path, no image
    assert "| vision_service | v1 | reused |" in text
    assert text.index("## text_service") < text.index("![text_service loss]") < text.index("## vision_service")


def test_ui_copy_inlines_curves_within_a_budget(tmp_path):
    outcomes = _outcomes(tmp_path)
    text = markdown_report("run-1", summary_rows(outcomes), outcomes, inline_plots())
    srcs = [src for _, src in IMAGE_RE.findall(text)]
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == Path(outcomes["text_service"]["plots"]["loss"]).read_bytes()
    first = Path(outcomes["text_service"]["plots"]["loss"]).stat().st_size
    tight = markdown_report("run-1", summary_rows(outcomes), outcomes, inline_plots(budget_bytes=first))
    assert len(IMAGE_RE.findall(tight)) == 1 and "- plot val accuracy: `" in tight


def test_without_an_image_source_curves_are_listed(tmp_path):
    outcomes = _outcomes(tmp_path)
    text = markdown_report("run-1", summary_rows(outcomes), outcomes)
    assert not IMAGE_RE.search(text) and "- plot loss: `" in text
