"""Write the built-in sample datasets (one or more per kind) into the raw root."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from unified_pipeline.datasets import KIND_MODULES, get_kind
from unified_pipeline.paths import raw_root


def write_sample_data(root: Path | None = None, seed: int = 0, kinds: list[str] | None = None,
                      force: bool = False, log=print) -> list[Path]:
    """Generate each kind in a scratch folder beside the raw root, then move finished datasets in.

    Existing dataset folders are kept unless `force`, so user data is never overwritten.
    """
    root = Path(root) if root else raw_root()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for kind in kinds or list(KIND_MODULES):
        start = time.time()
        with tempfile.TemporaryDirectory(prefix=".sample-", dir=root) as scratch:
            made = get_kind(kind).generate_samples(Path(scratch), seed=seed)
            for folder in made:
                target = root / Path(folder).name
                if target.exists():
                    if not force:
                        log(f"  {kind}: {target.name} exists, kept (use --force to replace)")
                        continue
                    shutil.rmtree(target)
                Path(folder).rename(target)
                written.append(target)
        log(f"  {kind}: {', '.join(Path(f).name for f in made)} in {time.time() - start:.1f}s")
    return written
