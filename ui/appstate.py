"""Small settings the app remembers across pages and restarts (which data, merged and split how), in one JSON file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.data.spec import DataSpec
from core.experiment.runs import update_json
from core.settings import APP_STATE_FILE, SHARED_DATA_DIR


def load_state() -> dict[str, Any]:
    try:
        return json.loads(Path(APP_STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def save_state(**changes: Any) -> None:
    Path(APP_STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    update_json(Path(APP_STATE_FILE), changes)


def data_paths(state: dict | None = None) -> list[str]:
    """The remembered data sources (from `state`, else the state file), or the shared development data when it is
    there."""
    remembered = (load_state() if state is None else state).get("data_paths")
    if remembered:
        return list(remembered)
    default = SHARED_DATA_DIR / "hirise-v3_2-subset"
    return [str(default)] if default.is_dir() else []


def data_spec() -> DataSpec:
    """The remembered data sources, merged and split as last chosen on the Dataset page (defaults otherwise)."""
    state = load_state()
    options = state.get("data_options")
    spec = DataSpec.from_mapping({**(options if isinstance(options, dict) else {}), DataSpec.PATHS_KEY: data_paths(state)})
    return spec if spec.problem() is None else DataSpec(spec.paths)  # a hand-edited file never breaks a page


def save_data_options(spec: DataSpec) -> None:
    """Remember how `spec` merges and splits (its paths are remembered by `data_paths`)."""
    options = spec.flat()
    options.pop(DataSpec.PATHS_KEY)
    if load_state().get("data_options") != options:
        save_state(data_options=options)

