"""Code versions follow imports: editing a shared helper changes exactly the steps that reach it."""
from __future__ import annotations

from pathlib import Path

from unified_pipeline import code_version as cv


def _package(root: Path) -> Path:
    pkg = root / "pkg"
    files = {
        "__init__.py": "",
        "shared.py": "def helper():\n    return 1\n",
        "a.py": "from pkg.shared import helper\n",
        "b.py": "def later():\n    from pkg import shared\n    return shared.helper()\n",  # a lazy import counts
        "c.py": "import json\n",
        "rel.py": "from .shared import helper\n",
        "sub/__init__.py": "from pkg.sub import x, y\n",  # gathers its modules: x must not depend on y
        "sub/x.py": "VALUE = 1\n",
        "sub/y.py": "from pkg import shared\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_closure_follows_imports_lazy_and_relative_ones_too(tmp_path):
    pkg = _package(tmp_path)

    def closure(module):
        return {p.relative_to(pkg).as_posix() for p in cv.import_closure((module,), pkg, "pkg")}

    assert closure("pkg.a") == {"__init__.py", "a.py", "shared.py"}
    assert closure("pkg.b") == {"__init__.py", "b.py", "shared.py"}
    assert closure("pkg.rel") == {"__init__.py", "rel.py", "shared.py"}
    assert closure("pkg.c") == {"__init__.py", "c.py"}
    assert closure("pkg.sub.x") == {"__init__.py", "sub/__init__.py", "sub/x.py"}
    assert "shared.py" in closure("pkg.sub")  # importing the package by name runs all it gathers


def test_editing_a_shared_helper_changes_exactly_the_dependent_digests(tmp_path):
    pkg = _package(tmp_path)
    modules = ("pkg.a", "pkg.b", "pkg.c", "pkg.rel", "pkg.sub.x")
    before = {m: cv.closure_digest((m,), pkg, "pkg") for m in modules}
    (pkg / "shared.py").write_text("def helper():\n    return 2\n")
    after = {m: cv.closure_digest((m,), pkg, "pkg") for m in modules}
    assert {m for m in modules if before[m] != after[m]} == {"pkg.a", "pkg.b", "pkg.rel"}


def test_library_versions_are_part_of_the_digest(tmp_path, monkeypatch):
    pkg = _package(tmp_path)
    assert "torch==2.11.0" in [v.split("+")[0] for v in cv.library_versions()]
    before = cv.closure_digest(("pkg.c",), pkg, "pkg")
    monkeypatch.setattr(cv, "library_versions", lambda: ["torch==9.9.9"])
    assert cv.closure_digest(("pkg.c",), pkg, "pkg") != before


def test_real_closures_reach_helpers_of_other_modules():
    def closure(module):
        return {p.relative_to(cv.PACKAGE_DIR).as_posix() for p in cv.import_closure((module,))}

    text_model = closure("unified_pipeline.models.text_transformer")
    assert {"models/inputs.py", "datasets/text.py", "training/trainer.py"} <= text_model
    assert "models/vision_cnn.py" not in text_model  # the shared helpers left the vision model
    assert "datasets/splits.py" in closure("unified_pipeline.datasets.text")
    assert "datasets/text.py" not in closure("unified_pipeline.datasets.vision")
