"""Small settings the app remembers across restarts (which data set to use), in one JSON file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .runs import update_json
from .settings import APP_STATE_FILE, SHARED_DATA_DIR


def load_state() -> dict[str, Any]:
    try:
        return json.loads(Path(APP_STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def save_state(**changes: Any) -> None:
    Path(APP_STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    update_json(Path(APP_STATE_FILE), changes)


def data_paths() -> list[str]:
    """The remembered data sources, or the shared development data when it is there."""
    remembered = load_state().get("data_paths")
    if remembered:
        return list(remembered)
    default = SHARED_DATA_DIR / "hirise-v3_2-subset"
    return [str(default)] if default.is_dir() else []
