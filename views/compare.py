"""Compare: two or more runs side by side: settings (differences highlighted), curves, metrics, confusions."""
from __future__ import annotations

import streamlit as st

from core.classes import CLASS_NAMES
from core.runs import list_runs
from core.evaluate import evaluate_model
from ui import appstate, compare, figures
from ui.errors import USER_ERRORS, show_error
from ui.imbalance import RARE_NOTE
from ui.intervals import refit_warning
from ui.loaders import data_for_config, get_model, shipped_models
from ui.progress import progress_bar

runs = [r for r in list_runs() if (status := r.status()).get("kind", "train") == "train" and r.best_epoch(status)]
shipped = shipped_models()
if len(runs) + len(shipped) < 2:
    st.info("Compare needs at least two models: train runs on the Train page (a run can be set against the shipped "
            "default model).")
    st.stop()
names = [r.name for r in runs]
preset = [n for n in st.session_state.pop("compare_runs", []) if n in names]  # from a grid (ui/grid_form.py)
if len(preset) >= 2 or "compare_picked" not in st.session_state:
    st.session_state["compare_picked"] = preset if len(preset) >= 2 else names[:2]
st.session_state["compare_picked"] = [n for n in st.session_state["compare_picked"] if n in names]
picked = st.multiselect("Runs", names, key="compare_picked")
chosen = [runs[names.index(n)] for n in picked]
if "compare_shipped" not in st.session_state:
    st.session_state["compare_shipped"] = list(shipped)[:1] if len(chosen) < 2 else []
included = st.multiselect("Shipped models to include", list(shipped), key="compare_shipped",
                          help="Scored on the validation tiles of the first run's data (the Dataset page's data when "
                               "no run is picked): the tiles recorded in the model's checkpoint when that data holds "
                               "them all, else that data's own split. The 'tile set' column says whether two rows "
                               "scored the same tiles.")
if len(chosen) + len(included) < 2:
    st.info("Pick at least two models: two runs, or a run and a shipped model.")
    st.stop()
shipped_reports: dict[str, dict] = {}
shipped_models_loaded: dict = {}
for label in included:
    path = shipped[label]
    shipped_models_loaded[label] = model = get_model(path)  # once per page run: metadata below, scoring here
    config = chosen[0].config() if chosen else appstate.data_spec().flat()
    key = ("compare-eval", str(path), path.stat().st_mtime, str(config.get("data")), str(config.get("split_seed")))
    if key not in st.session_state:
        try:
            st.session_state[key] = evaluate_model(model, data_for_config(config), "val",
                                                   on_progress=progress_bar(f"Scoring {path.name}"))
        except USER_ERRORS as exc:
            show_error(exc, f"Cannot score {path.name}")
            continue
    shipped_reports[label] = st.session_state[key]
    if model.refit:
        st.warning(f"{label}: " + refit_warning(model, "where its data's tiles are among those scored here"),
                   icon=":material/warning:")

st.subheader("Settings")
table, differing = compare.settings_table(chosen, {label: shipped_models_loaded[label].config for label in shipped_reports})
only_diff = st.toggle("Only the settings that differ", value=True)
shown = table.loc[differing] if only_diff and differing else table
st.dataframe(shown.style.apply(lambda row: ["background-color: #fff3cd" if row.name in differing else ""
                                            for _ in row], axis=1), width="stretch",
             height=min(36 * (len(shown) + 1) + 3, 1200))  # every setting in view, no scroll box

reports = {r.name: r.evaluation() for r in chosen} | shipped_reports  # each saved evaluation read once
names_shown = [r.name for r in chosen] + list(shipped_reports)
colours = figures.run_colours(names_shown)  # a run keeps its colour in every chart below

st.subheader("Metrics (validation, best checkpoint)")
st.caption("The majority baseline column is what always answering the majority class scores on each row's "
           "tiles: read macro-F1 and balanced accuracy, not accuracy alone.")
metrics = compare.metrics_table(chosen, reports)
st.dataframe(metrics.style.format("{:.3f}", subset=[c for c in ("macro-F1", "balanced accuracy", "accuracy",
                                                                "majority baseline") if c in metrics], na_rep="–")
             .format("{:.0f}", subset=[c for c in ("val tiles", "best epoch") if c in metrics], na_rep="–")
             .highlight_max(subset=["macro-F1", "balanced accuracy"], color="#d4edda"), width="stretch")
pairs = compare.paired_differences(reports)
if len(pairs):
    st.markdown("**Is the difference real?** Each pair of models scored on the same tiles, the difference with its "
                "95% interval from a paired bootstrap over observations: where the interval holds 0, this split "
                "cannot tell the two apart.")
    st.dataframe(pairs, hide_index=True, width="stretch")
elif len(names_shown) > 1:
    st.caption("No two of these models were scored on the same tiles (different tile sets), so no paired "
               "comparison: differences between their rows mix the models with the tiles.")
f1 = compare.per_class(chosen, reports, "f1")
if f1:
    st.plotly_chart(figures.grouped_bars(f1, CLASS_NAMES, "per-class F1 (whiskers: 95% intervals)", "F1", colours,
                                         compare.per_class_intervals(reports, "f1")), width="stretch")
recall = compare.per_class(chosen, reports, "recall")
if recall:
    st.plotly_chart(figures.grouped_bars(recall, CLASS_NAMES, "per-class recall (whiskers: 95% intervals)", "recall",
                                         colours, compare.per_class_intervals(reports, "recall")), width="stretch")
no_f1 = [name for name in names_shown if name not in f1]
if no_f1:
    st.caption(f"No per-class F1 for {', '.join(no_f1)}: no saved evaluation (the run did not complete)" +
               ("; the recall chart shows its best epoch's validation recall." if any(n in recall for n in no_f1)
                else "."))
st.caption(RARE_NOTE + " A class a split has no tiles of has no bar.")

st.subheader("Curves")
rows = {r.name: r.metrics() for r in chosen}
if not rows:
    st.caption("Shipped models keep no training curves: pick runs to compare theirs.")
a, b = st.columns(2) if rows else (None, None)
for column, (key, label) in zip((a, b, a, b), (("val_macro_f1", "validation macro-F1"), ("val_loss", "validation loss"),
                                              ("val_balanced_accuracy", "validation balanced accuracy"),
                                              ("train_loss", "training loss"))):
    if column is not None:
        column.plotly_chart(figures.compare_curves(rows, key, label, colours), width="stretch")

st.subheader("Confusion matrices (validation, row-normalised)")
cols = st.columns(min(2, len(names_shown)))  # two across: three were too small to read, their titles cut
for i, name in enumerate(names_shown):
    report = reports[name]
    with cols[i % len(cols)]:
        if report:
            st.plotly_chart(figures.confusion_matrix(report["confusion"], report["class_names"], True, name),
                            width="stretch", key=f"cm-{name}")
        else:
            st.caption(f"{name}: no saved evaluation (the run did not complete).")
