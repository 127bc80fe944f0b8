"""Write the built-in sample datasets (one or more per kind) into the raw root."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from unified_pipeline.datasets import KIND_MODULES, get_kind
from unified_pipeline.paths import raw_root
from unified_pipeline.step_progress import StepProgress


def write_sample_data(root: Path | None = None, seed: int = 0, kinds: list[str] | None = None,
                      force: bool = False, log: Any = print, bar: bool | None = None) -> list[Path]:
    """Generate each kind in a scratch folder beside the raw root, then move finished datasets in.

    Existing dataset folders are kept unless `force`, so user data is never overwritten.
    `log` is print, a logger or Dagster's context.log; `bar` forces the terminal bar on or off.
    """
    root = Path(root) if root else raw_root()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    chosen = list(kinds or KIND_MODULES)
    with StepProgress(len(chosen), "sample data", log=log, unit="kind", bar=bar) as progress:
        for kind in chosen:
            start = time.time()
            with tempfile.TemporaryDirectory(prefix=".sample-", dir=root) as scratch:
                made = get_kind(kind).generate_samples(Path(scratch), seed=seed)
                for folder in made:
                    target = root / Path(folder).name
                    if target.exists():
                        if not force:
                            progress.note(f"  {kind}: {target.name} exists, kept (use --force to replace)")
                            continue
                        shutil.rmtree(target)
                    Path(folder).rename(target)
                    written.append(target)
            progress.note(f"  {kind}: {', '.join(Path(f).name for f in made)} in {time.time() - start:.1f}s")
            progress.update()
    return written
