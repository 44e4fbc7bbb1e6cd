"""Compare: two or more runs side by side: settings (differences highlighted), curves, metrics, confusions."""
from __future__ import annotations

import streamlit as st

from core import compare, figures
from core.classes import CLASS_NAMES
from core.runs import list_runs
from ui.common import IMBALANCE_NOTE, RARE_NOTE, page

page("Compare runs", ":material/compare:")
runs = [r for r in list_runs() if (status := r.status()).get("kind", "train") == "train" and r.best_epoch(status)]
if len(runs) < 2:
    st.info("Compare needs at least two runs with metrics: train some on the Train page.")
    st.stop()
names = [r.name for r in runs]
picked = st.multiselect("Runs", names, default=names[:2])
chosen = [runs[names.index(n)] for n in picked]
if len(chosen) < 2:
    st.info("Pick at least two runs.")
    st.stop()

st.subheader("Settings")
table, differing = compare.settings_table(chosen)
only_diff = st.toggle("Only the settings that differ", value=True)
shown = table.loc[differing] if only_diff and differing else table
st.dataframe(shown.style.apply(lambda row: ["background-color: #fff3cd" if row.name in differing else ""
                                            for _ in row], axis=1), width="stretch")

reports = {r.name: r.evaluation() for r in chosen}  # each saved evaluation read once

st.subheader("Metrics (validation, best checkpoint)")
st.caption(IMBALANCE_NOTE)
metrics = compare.metrics_table(chosen, reports)
st.dataframe(metrics.style.format("{:.3f}", subset=[c for c in ("macro-F1", "balanced accuracy", "accuracy",
                                                                "majority baseline") if c in metrics])
             .highlight_max(subset=["macro-F1", "balanced accuracy"], color="#d4edda"), width="stretch")
f1 = compare.per_class(chosen, reports, "f1")
if f1:
    st.plotly_chart(figures.grouped_bars(f1, CLASS_NAMES, "per-class F1", "F1"), width="stretch")
recall = compare.per_class(chosen, reports, "recall")
if recall:
    st.plotly_chart(figures.grouped_bars(recall, CLASS_NAMES, "per-class recall", "recall"), width="stretch")
st.caption(RARE_NOTE)

st.subheader("Curves")
rows = {r.name: r.metrics() for r in chosen}
a, b = st.columns(2)
a.plotly_chart(figures.compare_curves(rows, "val_macro_f1", "validation macro-F1"), width="stretch")
b.plotly_chart(figures.compare_curves(rows, "val_loss", "validation loss"), width="stretch")
a.plotly_chart(figures.compare_curves(rows, "val_balanced_accuracy", "validation balanced accuracy"), width="stretch")
b.plotly_chart(figures.compare_curves(rows, "train_loss", "training loss"), width="stretch")

st.subheader("Confusion matrices (validation, row-normalised)")
cols = st.columns(min(3, len(chosen)))
for i, run in enumerate(chosen):
    report = reports[run.name]
    with cols[i % len(cols)]:
        if report:
            st.plotly_chart(figures.confusion_matrix(report["confusion"], report["class_names"], True, run.name),
                            width="stretch", key=f"cm-{run.name}")
        else:
            st.caption(f"{run.name}: no saved evaluation (the run did not complete).")
