"""The registry of defaults on a page: why the default is the default, its figures on every file a user could send,
and the defaults before it (core.defaults)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import defaults
from core.bootstrap import fmt
from core.registry import scan_threshold_of
from core.settings import REGISTRY_WARNING

VIEW_WORDS = {"originals": "on the originals",
              "all files": "on every file a user could send (the originals and their official turned, flipped and "
                           "brightened copies)",
              "all files, TTA": "and on every file with the 8 flips and turns averaged (TTA)"}

def figures_table(figures: dict) -> pd.DataFrame:
    """An entry's stored figures as a table (`core.defaults.figures_rows`)."""
    return pd.DataFrame(defaults.figures_rows(figures))


def registry_model_line(checkpoint: Path) -> str | None:
    """What the default model is (architecture, input size, calibration, recipe), from its registry entry when the
    entry describes `checkpoint`: no checkpoint is read, so the Home page draws without torch. None otherwise."""
    try:
        entry = defaults.current_entry(defaults.read_registry())
    except defaults.RegistryError:
        return None
    if not entry or Path(entry.get("checkpoint") or "").name != checkpoint.name \
            or not {"arch", "image_size", "temperature"} <= entry.keys():
        return None
    recipe = (entry.get("cv") or {}).get("recipe") or {}
    epochs = f", {recipe['epochs']} epochs" if isinstance(recipe.get("epochs"), int) else ""
    return (f"**{entry['arch']}**, input {entry['image_size']}px, refit on every tile{epochs}, temperature "
            f"{float(entry['temperature']):.2f}")


def registry_headline() -> bool:
    """The current default's headline from its registry entry (every file a user could send, out of fold; with
    TTA when its predictions average 8 views), written; False when the registry cannot say (the caller falls back
    to the checkpoint's own figures)."""
    try:
        entry = defaults.current_entry(defaults.read_registry())
    except defaults.RegistryError:
        return False
    figures = (entry or {}).get("figures") or {}
    view = "all files, TTA" if entry and entry.get("tta") and "all files, TTA" in figures else "all files"
    if view not in figures:
        return False
    f = figures[view]
    fa = f["false_alarms"]
    st.write(f"Out of fold on every file a user could send ({view}: {f['n']:,} originals and official copies, "
             f"{entry['cv']['folds']}-fold cross-validation grouped by observation): macro-F1 "
             f"**{fmt(*f['macro_f1'])}**, balanced accuracy **{fmt(*f['balanced_accuracy'])}**, accuracy "
             f"{fmt(*f['accuracy'])} vs always-other {f['always_other_accuracy']:.3f}; false alarms at 0.9: "
             + ("–" if fa["rate"] is None else fmt(fa["rate"], fa["interval"])) + ".")
    st.caption("In brackets: 95% intervals from a bootstrap over observations. Per-class recall below.")
    return True


def registry_section() -> None:
    """The current default's registry entry and the defaults before it; a damaged registry named in one line."""
    if REGISTRY_WARNING:
        st.warning(f"{REGISTRY_WARNING}.", icon=":material/warning:")  # it says which default serves meanwhile
    try:
        registry = defaults.read_registry()
    except defaults.RegistryError as exc:
        if not REGISTRY_WARNING:
            st.warning(str(exc), icon=":material/warning:")
        return
    entry = defaults.current_entry(registry)
    if entry is None:
        st.caption("No registry of defaults yet: the built-in default is used.")
        return
    cvr = entry["cv"]
    gate = entry.get("gate")
    why = entry.get("why") or ""
    st.markdown(f"**Why this default**: {why} ({entry['date'][:10]}; cross-validation {cvr['id']}, {cvr.get('folds')} "
                f"folds grouped by observation, seed {cvr.get('seed')}).")
    if gate:
        st.caption(f"Against {gate['against']} on the same {gate['files']:,} files: macro-F1 "
                   f"{fmt(gate['macro_f1']['difference'], gate['macro_f1']['interval'])}, accuracy "
                   f"{fmt(gate['accuracy']['difference'], gate['accuracy']['interval'])} (paired bootstrap over "
                   f"{gate['groups']} observations).")
    scan_threshold = scan_threshold_of(entry)
    if scan_threshold:
        st.caption(f"Scans with it use the threshold {scan_threshold[0]}: {scan_threshold[1]}.")
    table = figures_table(entry.get("figures") or {})
    if not table.empty:
        st.table(table.set_index(table.columns[0]))  # static: every column in view at any width
        views = [c for c in table.columns[1:]]
        st.caption("Out of fold: " + ", ".join(VIEW_WORDS.get(v, v) for v in views) + ". 95% intervals, bootstrap "
                   "over observations.")
    earlier = [e for e in registry["entries"] if e["id"] != entry["id"]]
    if earlier:
        st.caption("Earlier defaults (still selectable on every page): " + "; ".join(
            f"{e['checkpoint']} ({e['date'][:10]}: {e.get('why') or ''})" for e in reversed(earlier)))
