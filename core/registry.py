"""Reading the registry of default models (`checkpoints/defaults.json`): which checkpoint is the default, whether its
predictions average 8 views by default, the threshold its scans use, and a one-line reason when the registry is
damaged. Standard library only:
`core.settings` reads it when a process starts. Writing it, and the gate a new default passes, are `core.defaults`'."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

FORMAT = "hirise-studio-defaults/1"
ENTRY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


class RegistryError(ValueError):
    """A registry that cannot be read, or a promotion that is refused; the message says why in one line."""


# ---- reading ------------------------------------------------------------------------------------------------

def read_registry(path: Path) -> dict[str, Any]:
    """The registry, checked; an empty one when there is no file. RegistryError (one line) when it is damaged."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": FORMAT, "current": None, "entries": []}
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: the registry of defaults cannot be read ({exc}); fix or restore it "
                            f"(from {last_good_path(path).name}, or git checkout)") from None
    problem = _problem(raw)
    if problem:
        raise RegistryError(f"{path}: the registry of defaults is damaged ({problem}); fix or restore it "
                            f"(from {last_good_path(path).name}, or git checkout)")
    return raw


def _problem(raw: Any) -> str | None:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return "not a registry of defaults"
    entries = raw.get("entries")
    if not isinstance(entries, list):
        return "entries is not a list"
    ids = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not ENTRY_ID.match(e["id"]):
            return f"entry {i + 1} has no valid id"
        if not isinstance(e.get("checkpoint"), str) or not ENTRY_ID.match(e["checkpoint"]) \
                or not e["checkpoint"].endswith(".pt"):
            return f"entry {e['id']}: checkpoint must be a file name in checkpoints/"
        if not isinstance(e.get("cv"), dict):
            return f"entry {e['id']}: no cross-validation"
        if "scan_threshold" in e and scan_threshold_of(e) is None:
            return f"entry {e['id']}: scan_threshold must hold a value above 0 and at most 1, and why"
        ids.append(e["id"])
    if len(set(ids)) != len(ids):
        return "two entries share an id"
    if raw.get("current") is not None and raw.get("current") not in ids:
        return f"current {raw.get('current')!r} is not an entry"
    return None


def current_entry(registry: dict[str, Any]) -> dict[str, Any] | None:
    return next((e for e in registry["entries"] if e["id"] == registry.get("current")), None)


def scan_threshold_of(entry: dict[str, Any]) -> tuple[float, str] | None:
    """An entry's scan threshold and why it was chosen (`core.defaults.set_scan_threshold`), or None."""
    raw = entry.get("scan_threshold")
    if not isinstance(raw, dict) or not isinstance(raw.get("why"), str):
        return None
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return None
    return float(value), raw["why"]


@dataclass(frozen=True)
class Serving:
    """How the default model serves: its checkpoint; whether predictions average the 8 flips and turns (the
    entry's `tta`, set at promotion when TTA won beyond noise and stayed fast enough); the threshold a scan with it
    uses, and why (None: the standard one); a warning when the registry could not say (it names what serves then:
    the last good copy's default, or the fallback)."""

    checkpoint: Path
    tta: bool = False
    scan_threshold: tuple[float, str] | None = None
    warning: str | None = None


def default_checkpoint_file(checkpoints_dir: Path, fallback: Path, registry: Path) -> tuple[Path, str | None]:
    """The current default's checkpoint, and a warning when the registry could not say (`default_serving`)."""
    serving = default_serving(checkpoints_dir, fallback, registry)
    return serving.checkpoint, serving.warning


def last_good_path(registry: Path) -> Path:
    """The copy of the registry as it was last written by `core.defaults.locked_registry` (after the registry, under
    the same lock): what serves while the registry itself is damaged by hand. Hand edits never reach it, and a
    crash between the two writes leaves it one write behind: it is the last good default, not the newest."""
    return registry.with_name(f"{registry.stem}.last-good{registry.suffix}")


def default_serving(checkpoints_dir: Path, fallback: Path, registry: Path) -> Serving:
    """How the current default serves (`Serving`). When the registry is damaged, the default of its last good copy
    (written with it) serves, else the fallback as it is; the warning says which."""
    try:
        entry = current_entry(read_registry(registry))
    except RegistryError as exc:
        try:
            good = current_entry(read_registry(last_good_path(registry)))
        except RegistryError:
            good = None
        served = _entry_serving(checkpoints_dir, good) if good else None
        if served is None:
            return Serving(fallback, warning=f"{exc}; meanwhile the built-in default serves: {fallback.name}")
        return replace(served, warning=f"{exc}; meanwhile the default of its last good copy serves: "
                                       f"{served.checkpoint.name}")
    if entry is None:
        return Serving(fallback)
    served = _entry_serving(checkpoints_dir, entry)
    if served is None:
        return Serving(fallback, warning=f"the registry's default {entry['checkpoint']} is missing; using "
                                         f"{fallback.name}")
    return served


def _entry_serving(checkpoints_dir: Path, entry: dict[str, Any]) -> Serving | None:
    path = checkpoints_dir / entry["checkpoint"]
    return Serving(path, entry.get("tta") is True, scan_threshold_of(entry)) if path.is_file() else None
