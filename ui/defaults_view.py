"""The registry of defaults on a page: why the default is the default, its figures on every file a user could send,
and the defaults before it (core.defaults)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core import defaults
from core.bootstrap import fmt
from core.settings import REGISTRY_WARNING

VIEW_ORDER = ("originals", "all files", "all files, TTA")


def figures_table(figures: dict) -> pd.DataFrame:
    """An entry's stored figures: per-class recall first, then macro-F1, balanced accuracy, accuracy beside the
    always-`other` accuracy on the same files, and the false alarms at the scan threshold; a column per view."""
    views = [v for v in VIEW_ORDER if v in figures]
    if not views:
        return pd.DataFrame()
    rows = []
    for name in figures[views[0]]["recall"]:
        rows.append({"figure": f"recall: {name}", **{
            v: (fmt(*figures[v]["recall"][name][:2], digits=2) + f" n={figures[v]['recall'][name][2]}")
            if figures[v]["recall"][name][2] else "no files" for v in views}})
    for key, label in (("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy")):
        rows.append({"figure": label, **{v: fmt(*figures[v][key]) for v in views}})
    rows.append({"figure": "always-other accuracy", **{v: f"{figures[v]['always_other_accuracy']:.3f}" for v in views}})
    rows.append({"figure": "false alarms at 0.9", **{
        v: "–" if figures[v]["false_alarms"]["rate"] is None else
        fmt(figures[v]["false_alarms"]["rate"], figures[v]["false_alarms"]["interval"]) for v in views}})
    return pd.DataFrame(rows)


def registry_section() -> None:
    """The current default's registry entry and the defaults before it; a damaged registry named in one line."""
    if REGISTRY_WARNING:
        st.warning(f"{REGISTRY_WARNING}. The built-in default is used.", icon=":material/warning:")
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
    table = figures_table(entry.get("figures") or {})
    if not table.empty:
        st.dataframe(table, hide_index=True, width="stretch")
        st.caption("Out of fold, on the originals, on every file a user could send (originals and their official "
                   "turned, flipped and brightened copies), and with the 8 flips and turns averaged. 95% intervals, "
                   "bootstrap over observations.")
    earlier = [e for e in registry["entries"] if e["id"] != entry["id"]]
    if earlier:
        st.caption("Earlier defaults (still selectable on every page): " + "; ".join(
            f"{e['checkpoint']} ({e['date'][:10]}: {e.get('why') or ''})" for e in reversed(earlier)))
