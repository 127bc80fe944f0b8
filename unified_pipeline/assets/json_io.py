"""IO manager that stores asset outputs as small JSON documents.

Assets write their real artefacts (manifests, tensors, model versions) themselves, atomically,
under UNIFIED_HOME and return a JSON-able pointer to them; this manager stores that pointer.
Dagster's default IO manager would pickle outputs, and nothing here loads pickles.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext

from unified_pipeline import atomic
from unified_pipeline.paths import unified_home


class JsonIOManager(ConfigurableIOManager):
    base_dir: str = ""

    def _path(self, key_path: list[str]) -> Path:
        root = Path(self.base_dir) if self.base_dir else unified_home() / "assets"
        return root.joinpath(*key_path).with_suffix(".json")

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        atomic.write_json(self._path(list(context.asset_key.path)), obj)

    def stored(self, key_path: list[str]) -> Any | None:
        """The last stored output of an asset, or None when it was never materialised."""
        path = self._path(key_path)
        return json.loads(path.read_text()) if path.exists() else None

    def load_input(self, context: InputContext) -> Any:
        key_path = list(context.asset_key.path)
        value = self.stored(key_path)
        if value is None:
            raise FileNotFoundError(
                f"{self._path(key_path)}: upstream asset {context.asset_key.to_user_string()} has not been materialised yet"
            )
        return value
