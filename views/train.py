"""Train: configure and launch jobs (each its own process), watch them live, cancel or resume them."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.bootstrap import wilson
from core.experiment import jobs
from core.experiment.runs import ACTIVE_STATES, list_runs, read_json
from core.models import WeightsUnavailable, fetch_imagenet_weights, imagenet_status
from core.training.augment import epoch_multiplier
from core.training.config import ConfigError, RunConfig
from ui import appstate, figures
from ui.cv_view import cv_form, cv_results
from ui.errors import USER_ERRORS, show_error
from ui.grid_form import grid_form, grid_results
from ui.imbalance import IMBALANCE_NOTE
from ui.intervals import interval_text
from ui.loaders import data_for_config
from ui.per_class import NO_TILES
from ui.run_admin import delete_button, notes_editor
from ui.run_form import GROUP_TITLES, checked_config, group_of, propose, run_form

st.caption(f"Training runs on **{jobs.describe_device()}**, in a separate process: close the tab or restart the "
           "app and it goes on. " + IMBALANCE_NOTE)

applied = st.session_state.pop("lr_applied", None)
if applied:
    st.success(f"Learning rate set to {applied:.2e} from the LR finder: see Configure a run › Optimisation.",
               icon=":material/check:")
with st.expander("Configure a run", expanded=not list_runs() or applied is not None):
    values, slots = run_form(appstate.data_paths())
    cfg, problem = checked_config(values, slots)
    if values["augment"] == "expand":
        k = epoch_multiplier("expand", values["transforms"])
        st.info(f"Expand mode: each epoch holds the originals plus {k - 1} transformed copies, so it is {k}x longer "
                "than an epoch over the originals.")
    if values["augment"] == "official_online":
        st.info("Official + online mode trains on the data set's own -r90 ... -brt copies (about 7x the originals) "
                "and applies the chosen online transforms on top of them.")
    if values["augment"] == "official":
        st.info("Official mode trains on the data set's own -r90, -r180, -r270, -fh, -fv and -brt copies "
                "(about 7x the originals) and adds no augmentation of its own.")
    if values["init"] == "imagenet":
        ok, message = imagenet_status(values["model"])
        if ok:
            st.success(message)
        if not ok and st.button("Try to download the ImageNet weights"):
            try:
                fetch_imagenet_weights(values["model"], progress=False)
                st.rerun()
            except WeightsUnavailable as exc:
                show_error(exc)
    split_notes = st.container()  # always there, filled or not, so the buttons below keep their place
    if cfg is not None:
        try:  # the split this run will get: a class it cannot place is said before launch, not found after
            for warning in data_for_config(cfg.to_dict()).coverage:
                split_notes.warning(f"Split: {warning}.", icon=":material/call_split:")
        except USER_ERRORS as exc:
            with split_notes:
                show_error(exc, "Cannot read the data")
            problem = ConfigError(f"data: cannot read the data: {exc}")  # Launch refuses it, not a job 3 s later
    launch, find_lr = st.columns([1, 1])
    launch_clicked = launch.button("Launch training", type="primary")
    find_clicked = find_lr.button("Find a learning rate", help="A short LR range test, run as a job like training")
    if problem is not None:
        where = f" (in {GROUP_TITLES[group_of(problem.field)]})" if problem.field else ""
        st.caption(f"Launch is refused until this is fixed{where}: {problem}")
    if launch_clicked or find_clicked:
        try:
            if problem is not None:
                raise problem  # nothing is queued until every field is valid
            run = jobs.launch(cfg, lr_find=find_clicked)
            st.session_state["selected_run"] = run.name
            st.toast(f"Launched {run.name}")
        except (ConfigError, jobs.JobError) as exc:
            show_error(exc, "Not launched")
with st.expander("Cross-validate: K folds grouped by observation, figures with intervals"):
    cv_form(values)  # the recipe as configured above
with st.expander("Grid: vary up to three options, one run per combination"):
    grid_form(values)  # everything else as configured above

runs = list_runs()
deleted = st.session_state.pop("deleted_run", None)
if deleted:
    st.success(f"Deleted run {deleted}.", icon=":material/delete:")
if not runs:
    st.stop()

st.subheader("Jobs")
rows = []
for r in runs[:30]:
    status, cfg = jobs.observed_status(r), r.config()  # each file read once; a vanished trainer reads as lost
    notes = r.notes()
    rows.append({"run": r.name, "state": status["state"], "kind": status.get("kind", "train"), "model": cfg.get("model"),
                 "progress": jobs.progress_column(status, cfg), "tags": ", ".join(notes["tags"]),
                 "note": notes["note"], "queued": status.get("queued_at") or "",
                 "resumed": status.get("resumed_at") or ""})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
             column_config={"run": st.column_config.TextColumn(width="large"),  # fold names were cut at 1400 px
                            "kind": st.column_config.TextColumn(width="small"),
                            "queued": st.column_config.TextColumn(width="small"),
                            "resumed": st.column_config.TextColumn(width="small")})
grid_results()
cv_results()
names = [r.name for r in runs]
default = st.session_state.get("selected_run")
selected = st.selectbox("Watch run", names, index=names.index(default) if default in names else 0)
st.session_state["selected_run"] = selected
run = runs[names.index(selected)]
active = jobs.job_state(run) in ACTIVE_STATES


def _figure(value: object, spec: str) -> str:
    """A metrics row's figure, or a dash when the row lacks it (written by hand, or by an older version)."""
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


@st.fragment(run_every=2.0 if active else None)
def live() -> None:
    status = jobs.observed_status(run)  # a vanished trainer shows as lost, with why
    state, cfg, rows = status["state"], run.config(), run.metrics()
    epoch_rows = [r for r in rows if r.get("kind") == "epoch"]
    st.markdown(" · ".join([f"**{run.name}**", f"state **{state}**"] + ([status["device"]] if status.get("device") else [])))
    if state == "queued":
        st.info("Queued: waiting for the device (one job per device at a time).")
    # a row without its time (written by hand, or by an older version) leaves the ETA to the others
    text = jobs.progress_text(status, cfg, [r["seconds"] for r in epoch_rows
                                            if isinstance(r.get("seconds"), (int, float))])
    if text:
        st.progress(min(1.0, (status.get("step_in_epoch") or 0) / status["steps_per_epoch"]), text=text)
    if state == "failed":
        st.error(f"Failed: {status.get('error')}")
    if state == "lost":
        st.error(f"Lost: {status.get('error')}")
    if run.lr_find_file.is_file():
        result = read_json(run.lr_find_file)
        st.plotly_chart(figures.lr_finder(result), width="stretch")
        if result.get("suggested_lr"):
            lr = float(f"{result['suggested_lr']:.2e}")
            if st.button(f"Use the suggested LR ({lr:.2e}) in the form"):
                propose(lr=lr)  # the form's widget is outside this fragment: the whole page must redraw
                st.session_state["lr_applied"] = lr
                st.rerun(scope="app")
    elif rows:
        st.plotly_chart(figures.training_curves(rows), width="stretch")
        if epoch_rows and epoch_rows[-1].get("val_macro_f1") is None:
            last = epoch_rows[-1]
            st.caption(f"Epoch {last['epoch']} of {cfg.get('epochs')}: no validation split (a refit on all the data). "
                       + (f"Its figures are cross-validation {cfg['calibrate_from']}'s out-of-fold ones (under "
                          "Cross-validations)." if cfg.get("calibrate_from") else "It has no figures of its own."))
        elif epoch_rows:
            last = epoch_rows[-1]
            best = run.best_epoch(status)
            which = f"epoch {last['epoch']}, the last"
            st.caption(f"Validation figures of {which}:")  # said once: in every label it cut them at 1400 px
            cols = st.columns(4)
            cols[0].metric("val macro-F1", _figure(last.get("val_macro_f1"), ".3f"))
            cols[1].metric("val balanced accuracy", _figure(last.get("val_balanced_accuracy"), ".3f"))
            cols[2].metric("val accuracy", _figure(last.get("val_accuracy"), ".3f"))
            cols[3].metric("images/s", _figure(last.get("images_per_s"), ".0f"))
            counts = last.get("val_support") if isinstance(last.get("val_support"), dict) else {}
            if sum(v for v in counts.values() if isinstance(v, int)) > 0:  # accuracy beside always-other's
                total = sum(v for v in counts.values() if isinstance(v, int))
                cols[2].caption(f"always-other: {counts.get('other', 0) / total:.3f}")
            shown_iv = last.get("val_intervals") if isinstance(last.get("val_intervals"), dict) else {}
            for col, key in zip(cols, ("macro_f1", "balanced_accuracy", "accuracy"), strict=False):
                if isinstance(shown_iv.get(key), list) and len(shown_iv[key]) == 2:
                    col.caption(f"95% interval {interval_text(shown_iv[key])}")
            if best.get("epoch") and best.get("epoch") != last["epoch"] and best.get("val_macro_f1") is not None:
                st.caption(f"The run keeps its best epoch, {best['epoch']} (val macro-F1 {best['val_macro_f1']:.3f}), "
                           "as its checkpoint: Home, Evaluate and Compare show that one.")
            support = last.get("val_support") if isinstance(last.get("val_support"), dict) else {}
            recalls = last.get("val_recall") if isinstance(last.get("val_recall"), dict) else {}
            # text, not NaN: Streamlit shows a NaN as "None" whatever the Styler says
            recall = pd.DataFrame([{c: NO_TILES if not support.get(c) or not isinstance(r, (int, float)) else
                                    f"{r:.2f} ({interval_text(wilson(round(r * support[c]), support[c]).as_list())})"
                                    for c, r in recalls.items()}], index=[f"val recall ({which})"]).T
            if recalls:
                st.dataframe(recall, width="stretch")  # a row per class: eight columns were cut at 1400 px
                st.caption("In parentheses: the 95% Wilson interval of each recall from its tile counts (an epoch keeps "
                           "no predictions to resample observations with; the run's evaluation at its end does).")
            absent = [c for c, n in support.items() if n == 0]
            if absent:
                st.caption(f"Validation has no tiles of {', '.join(absent)}: no recall for them, and macro-F1 "
                           "averages over the other classes.")
    with st.expander("Log", expanded=state in ("failed", "lost")):
        st.code(run.log_tail(30) or "(empty)")
    buttons = st.columns(4)
    if state in ACTIVE_STATES:
        if buttons[0].button("Cancel", type="secondary"):
            try:
                jobs.cancel(run)
                st.toast("Cancel requested: the job stops after the current batch and keeps its last checkpoint.")
            except OSError as exc:
                show_error(f"cannot write to {run.path}: {exc.strerror or exc}", "Not cancelled")
    elif state in ("cancelled", "lost", "failed") and run.last_checkpoint.is_file() and \
            status.get("kind", "train") == "train" and buttons[0].button("Resume from the last checkpoint"):
        try:
            jobs.launch(RunConfig.load(run.config_file), resume=run)
            st.rerun()
        except (ConfigError, jobs.JobError) as exc:
            show_error(exc, "Not resumed")
    if active and state not in ACTIVE_STATES:
        st.rerun()  # the job just ended: redraw the page once, and stop polling


live()
with st.expander("Note, tags, delete"):
    notes_editor(run)
    delete_button(run, jobs.job_state(run) in ACTIVE_STATES)
