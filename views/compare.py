"""Compare: two or more runs side by side: settings (differences highlighted), curves, metrics, confusions."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.checkpoint import LoadedModel
from core.classes import CLASS_NAMES
from core.data import DataSpec
from core.evaluate import evaluate_model, tiles_digest
from core.experiment.runs import list_runs
from core.seen import NothingUnseen
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
                          help="Every model is scored on the same validation tiles of the first run's data (the "
                               "Dataset page's data when no run is picked): those recorded in the first model's "
                               "checkpoint when that data holds them all, else that data's own split, less every "
                               "tile any of the compared models trained on.")
if len(chosen) + len(included) < 2:
    st.info("Pick at least two models: two runs, or a run and a shipped model.")
    st.stop()
models: dict[str, LoadedModel] = {}  # each run's best checkpoint and each shipped model, by name: scored below
for run in chosen:
    if run.best_checkpoint.is_file():
        try:
            models[run.name] = get_model(run.best_checkpoint)
        except USER_ERRORS as exc:
            show_error(exc, f"Cannot load {run.name}'s best checkpoint")
for label in included:
    try:
        models[label] = get_model(shipped[label])  # once per page run: metadata below, scoring there
    except USER_ERRORS as exc:
        show_error(exc, f"Cannot load {shipped[label].name}")
        continue
for name, model in models.items():
    if model.refit:
        st.warning(f"{name}: " + refit_warning(model), icon=":material/warning:")
shipped_configs = {label: models[label].config for label in included if label in models}

st.subheader("Settings")
table, differing = compare.settings_table(chosen, shipped_configs)
only_diff = st.toggle("Only the settings that differ", value=True)
if only_diff and not differing:
    st.caption(f"No setting differs between these {len(table.columns)} models: all {len(table)} are the same "
               "(turn the toggle off to see them).")
shown = table.loc[differing] if only_diff else table
if len(shown):  # a static table: long values (data paths, checkpoint files) wrap instead of being cut off
    st.table(shown.style.apply(lambda row: ["background-color: #fff3cd" if row.name in differing else ""
                                            for _ in row], axis=1))

names_shown = [r.name for r in chosen] + list(shipped_configs)
colours = figures.run_colours(names_shown)  # a run keeps its colour in every chart below


def scored() -> None:
    """Every model scored on the validation tiles none of them trained on, or why not: metrics, the paired
    differences, per-class bars, confusion matrices."""
    st.subheader("Metrics (validation, best checkpoint)")
    if not models:
        st.caption("No model to score: none of these runs kept a best checkpoint.")
        return
    config = chosen[0].config() if chosen else appstate.data_spec().flat()
    if chosen and not all(Path(p).exists() for p in config.get("data") or ()):
        config = appstate.data_spec().flat()
        st.caption(f"{chosen[0].name}'s data is not here: the models are scored on the data chosen on the Dataset "
                   "page.")
    stamps = tuple((n, str(m.path), m.path.stat().st_mtime if m.path else 0) for n, m in models.items())
    key = ("compare-common", stamps, str(DataSpec.from_mapping(config)))
    if key not in st.session_state:
        try:
            data = data_for_config(config)
            st.session_state[key] = (data, *compare.common_tiles(models, data))
        except NothingUnseen as exc:
            st.session_state[key] = str(exc)
        except USER_ERRORS as exc:
            show_error(exc, "Cannot choose the tiles to compare on")
            return
    if isinstance(st.session_state[key], str):  # none or too few tiles that no model trained on: no figures
        st.error(f"Not compared: {st.session_state[key]}.", icon=":material/block:")
        return
    data, common, tiles_from, exclusion = st.session_state[key]
    digest = tiles_digest(r.name for r in common)
    (st.info if exclusion.excluded else st.caption)(
        f"{exclusion.sentence('val tiles')} Every model below is scored on these same {len(common):,} tiles "
        f"(from {tiles_from}).")
    reports: dict[str, dict | None] = {}
    for name in names_shown:
        run = next((r for r in chosen if r.name == name), None)
        saved = run.evaluation() if run else None
        if saved and saved.get("tiles_digest") == digest:  # its saved evaluation scored exactly these tiles
            reports[name] = saved
            continue
        if name not in models:
            reports[name] = None
            continue
        model = models[name]
        report_key = ("compare-eval", name, str(model.path), model.path.stat().st_mtime if model.path else 0, digest)
        if report_key not in st.session_state:
            try:
                st.session_state[report_key] = evaluate_model(
                    model, data, "val", records=common, tiles_from=f"{tiles_from}, less the tiles a compared model "
                    "trained on", on_progress=progress_bar(f"Scoring {name}"))
            except USER_ERRORS as exc:
                show_error(exc, f"Cannot score {name}")
                st.session_state[report_key] = None
        reports[name] = st.session_state[report_key]

    st.caption("The majority baseline column is what always answering the majority class scores on each row's "
               "tiles: read macro-F1 and balanced accuracy, not accuracy alone.")
    metrics = compare.metrics_table(chosen, reports)
    st.dataframe(metrics.style.format("{:.3f}", subset=[c for c in ("macro-F1", "balanced accuracy", "accuracy",
                                                                    "majority baseline") if c in metrics],
                                      na_rep="–")
                 .format("{:.0f}", subset=[c for c in ("val tiles", "best epoch") if c in metrics], na_rep="–")
                 .highlight_max(subset=["macro-F1", "balanced accuracy"], color="#d4edda"), width="stretch",
                 column_config={c: st.column_config.Column(width="small") for c in (
                     "majority baseline", "val tiles", "tile set", "best epoch", "macro-F1", "balanced accuracy",
                     "accuracy")})  # every column in view at 1400 px
    pairs = compare.paired_differences(reports)
    if len(pairs):
        st.markdown("**Is the difference real?** Each pair of models on these same tiles, the difference with its "
                    "95% interval from a paired bootstrap over observations: where the interval holds 0, these "
                    "tiles cannot tell the two apart.")
        st.dataframe(pairs, hide_index=True, width="stretch",  # every verdict in view at 1400 px
                     column_config={c: st.column_config.Column(width="small") for c in pairs.columns
                                    if c in ("tiles", "observations") or c.endswith("verdict")})
    elif len(names_shown) > 1:
        st.caption("No two of these models were scored on the same tiles (a run without a checkpoint keeps its own "
                   "validation figures), so no paired comparison.")
    f1 = compare.per_class(chosen, reports, "f1")
    if f1:
        st.plotly_chart(figures.grouped_bars(f1, CLASS_NAMES, "per-class F1 (whiskers: 95% intervals)", "F1",
                                             colours, compare.per_class_intervals(reports, "f1")), width="stretch")
    recall = compare.per_class(chosen, reports, "recall")
    if recall:
        st.plotly_chart(figures.grouped_bars(recall, CLASS_NAMES, "per-class recall (whiskers: 95% intervals)",
                                             "recall", colours, compare.per_class_intervals(reports, "recall")),
                        width="stretch")
    no_f1 = [name for name in names_shown if name not in f1]
    if no_f1:
        st.caption(f"No per-class F1 for {', '.join(no_f1)}: not scored (no best checkpoint)" +
                   ("; the recall chart shows its best epoch's validation recall." if any(n in recall for n in no_f1)
                    else "."))
    st.caption(RARE_NOTE + " A class these tiles have none of has no bar.")

    st.subheader("Confusion matrices (validation, row-normalised)")
    cols = st.columns(min(2, len(names_shown)))  # two across: three were too small to read, their titles cut
    for i, name in enumerate(names_shown):
        report = reports[name]
        with cols[i % len(cols)]:
            if report:
                st.plotly_chart(figures.confusion_matrix(report["confusion"], report["class_names"], True, name),
                                width="stretch", key=f"cm-{name}")
            else:
                st.caption(f"{name}: not scored (no best checkpoint).")


scored()

st.subheader("Curves")
rows = {r.name: r.metrics() for r in chosen}
if not rows:
    st.caption("Shipped models keep no training curves: pick runs to compare theirs.")
unvalidated = [name for name, metrics in rows.items()
               if not any(m.get("val_macro_f1") is not None for m in metrics if m.get("kind") == "epoch")]
a, b = st.columns(2) if rows and len(unvalidated) < len(rows) else (None, None)
if unvalidated:
    st.caption(f"{', '.join(unvalidated)}: no validation split (a refit trains on every tile), so no validation "
               "curve; its training loss is below.")
if rows and len(unvalidated) == len(rows):  # no validation curve at all: the training loss alone, full width
    st.plotly_chart(figures.compare_curves(rows, "train_loss", "training loss", colours), width="stretch")
else:
    for column, (key, label) in zip((a, b, a, b), (("val_macro_f1", "validation macro-F1"),
                                                   ("val_loss", "validation loss"),
                                                   ("val_balanced_accuracy", "validation balanced accuracy"),
                                                   ("train_loss", "training loss")), strict=True):
        if column is not None:
            column.plotly_chart(figures.compare_curves(rows, key, label, colours), width="stretch")
