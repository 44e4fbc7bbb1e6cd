"""Home: what this is, the device, the data, the default model, the runs so far."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.choices import HEADLINE
from core.classes import CLASS_DESCRIPTIONS, CLASS_NAMES
from core.experiment.jobs import describe_device, observed_status, progress_column
from core.experiment.runs import list_runs
from core.settings import DEFAULT_CHECKPOINT
from ui import appstate
from ui.defaults_view import registry_headline, registry_model_line, registry_section
from ui.errors import USER_ERRORS
from ui.imbalance import IMBALANCE_NOTE
from ui.intervals import interval_text
from ui.loaders import default_model_file, get_model_info

SCORES = (("val macro-F1", "val_macro_f1"), ("bal. acc", "val_balanced_accuracy"), ("accuracy", "val_accuracy"))


def _iv(intervals: dict, key: str) -> str:
    """` (0.85–0.93)`: a figure's 95% interval, when the checkpoint records one."""
    value = intervals.get(key)
    return f" ({interval_text(value)})" if isinstance(value, list) and len(value) == 2 else ""


def _score(value: float | None, interval: list | None = None) -> str:
    """A score to three places with its 95% interval when known, or a dash before the first epoch (never `None`)."""
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" ({interval_text(interval)})" if isinstance(interval, list) and len(interval) == 2
                             else "")


@st.cache_data(show_spinner=False, max_entries=256)
def _kept_intervals(path: str, mtime_ns: int) -> dict:
    """The 95% intervals of a completed run's kept checkpoint on its validation split (eval_val.json), read once
    per version of the file."""
    import json

    try:
        intervals = json.loads(Path(path).read_text()).get("intervals")
    except (OSError, ValueError, AttributeError):
        return {}
    return intervals if isinstance(intervals, dict) else {}


def _run_intervals(run) -> dict:
    try:
        return _kept_intervals(str(run.eval_file), run.eval_file.stat().st_mtime_ns)
    except OSError:
        return {}


st.markdown(
    "Classify NASA HiRISE Mars orbital image tiles into the eight landmark classes of the v3.2 data set: "
    + ", ".join(f"**{c}**" for c in CLASS_NAMES) + ". Train models, watch them learn, inspect their mistakes, "
    "see what they look at with Grad-CAM, and compare runs.")
st.info(IMBALANCE_NOTE, icon=":material/balance:")

left, middle, right = st.columns(3)
with left:
    st.subheader("Device")
    st.write(f"Training runs on **{describe_device()}**.")
    st.caption("Jobs run as separate processes, one per device at a time; a refresh or restart loses nothing.")
with middle:
    st.subheader("Data")
    paths = appstate.data_paths()
    if not paths:
        st.warning("No data set chosen yet.")
    for p in paths:
        (st.success if Path(p).exists() else st.error)(f"{'found' if Path(p).exists() else 'missing'}: `{p}`")
    st.page_link("views/dataset.py", label="Choose or download data", icon=":material/folder_open:")
    st.page_link("views/explore.py", label="Explore: embedding map and label review", icon=":material/scatter_plot:")
with right:
    st.subheader("Default model")
    try:
        # its registry entry: the checkpoint's container is checked, nothing unpickled, no torch imported
        line = registry_model_line(default_model_file())
        if line:
            st.write(line)
        # the registry's out-of-fold figures on every file (what to expect on unseen observations), when the
        # registry describes the checkpoint in use; else the checkpoint's own (read, not built: torch, no timm)
        if not (line and registry_headline()):
            model = get_model_info()
            m = model.metrics
            if not line:
                st.write(f"**{model.arch}**, input {model.image_size}px, epoch {model.epoch}, temperature "
                         f"{model.temperature:.2f}")
            if all(isinstance(m.get(k), (int, float)) for k in HEADLINE) \
                    and isinstance(m.get("majority_baseline"), dict) and "accuracy" in m["majority_baseline"]:
                iv = m.get("intervals") if isinstance(m.get("intervals"), dict) else {}
                where = (f"Out-of-fold over {m.get('n', '?')} tiles (cross-validation grouped by observation)"
                         if m.get("split") == "out-of-fold" else
                         f"On its {m.get('split') or 'validation'} split ({m.get('n', '?')} tiles)")
                st.write(f"{where}: macro-F1 **{m['macro_f1']:.3f}**{_iv(iv, 'macro_f1')}, balanced accuracy "
                         f"**{m['balanced_accuracy']:.3f}**{_iv(iv, 'balanced_accuracy')}, accuracy "
                         f"{m['accuracy']:.3f}{_iv(iv, 'accuracy')} vs always-other "
                         f"{m['majority_baseline']['accuracy']:.3f}")
                if iv:
                    st.caption("In parentheses: 95% intervals from a bootstrap over observations.")
    except USER_ERRORS as exc:
        st.warning(f"No default model: {exc}")
    st.caption(f"`{DEFAULT_CHECKPOINT}`")
    st.page_link("views/explain.py", label="Classify and explain tiles", icon=":material/image_search:")

with st.expander("The default model: why it is the default, its scans' threshold, and its figures on every file a "
                 "user could send", expanded=True):
    registry_section()  # full width: in a third of the page its table wrapped every cell onto three lines

st.subheader("Runs")
runs = list_runs()
if not runs:
    st.write("No runs yet.")
    st.page_link("views/train.py", label="Train a model", icon=":material/model_training:")
else:
    rows = []
    for run in runs[:50]:
        cfg, status = run.config(), run.status()
        best = run.best_epoch(status)
        seen = observed_status(run, status)  # a vanished trainer reads as lost
        kept = _run_intervals(run) if seen["state"] == "completed" else {}
        rows.append({"run": run.name, "state": seen["state"], "model": cfg.get("model") or "",
                     "progress": progress_column(seen, cfg),
                     "kept epoch": str(best.get("epoch") or "–"),  # the figures are this epoch's (best.pt)
                     **{label: _score(best.get(key), kept.get(key.removeprefix("val_")))
                        for label, key in SCORES},
                     "tags": ", ".join(run.notes()["tags"]), "started": status.get("started_at") or ""})
    st.caption("The figures are each run's kept epoch on its validation split; in parentheses, once it has completed, "
               "their 95% interval (bootstrap over observations).")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"run": st.column_config.TextColumn(width="large"),
                                "kept epoch": st.column_config.TextColumn(width="small"),
                                "started": st.column_config.TextColumn(width="small")})

with st.expander("The eight classes"):
    for name in CLASS_NAMES:
        st.markdown(f"**{name}**: {CLASS_DESCRIPTIONS[name]}")
