"""The Train page's ablation grid: up to three options and their values over the run form's settings, launched
as queued jobs; and a grid's results table, with a way into Compare. All checking is core.experiment.grid's (the CLI's)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from core.experiment import cv, grid, jobs
from core.experiment.runs import ACTIVE_STATES
from core.training.config import field_specs
from ui.errors import show_error
from ui.widgets import kept

COMPARE_PRESET = "compare_runs"  # run names the Compare page preselects (views/compare.py)
SHOWN = "grid_shown"  # the grid whose results are on screen


def _value_widget(name: str, spec: dict) -> list[Any]:
    """The values of one varied option, as typed or picked: choices by a multiselect, the rest as text."""
    key = f"grid_values_{name}"
    if spec["type"] is bool:
        return kept(st.multiselect, f"{name}: values", key, [], ["true", "false"], help=spec["help"])
    if spec["choices"] and not grid.is_list_field(name):
        options = list(spec["choices"])
        return kept(st.multiselect, f"{name}: values", key, [], options, help=spec["help"],
                    valid=lambda v: all(x in options for x in v))
    example = "hflip+vflip, rot90" if grid.is_list_field(name) else f"{spec['default']}, ..."
    text = kept(st.text_input, f"{name}: values, separated by commas", key, "", placeholder=example,
                help=spec["help"] + (" (a value is transforms joined by +)" if grid.is_list_field(name) else ""))
    return text.split(",") if text.strip() else []


def grid_form(values: dict[str, Any]) -> None:
    """Vary up to three options over `values` (the run form's: everything else equal); the number of runs and
    their names are shown before Launch, and every problem under its field. Nothing is queued unless every
    combination passes RunConfig's checks."""
    specs = {s["name"]: s for s in field_specs()}
    gridable = grid.gridable_fields()
    chosen = kept(st.multiselect, f"Options to vary (up to {grid.MAX_FIELDS})", "grid_fields", [], gridable,
                  max_selections=grid.MAX_FIELDS, valid=lambda v: all(x in gridable for x in v),
                  help="Every other setting is taken from the run form above, the same for every run. "
                       "Data options are not offered: the runs of a grid share one split.")
    axes, slots, problem = [], {}, None
    cols = st.columns(max(1, len(chosen)))
    for name, col in zip(chosen, cols, strict=False):  # one column even when nothing is chosen
        with col:
            picked = _value_widget(name, specs[name])
            slots[name] = st.empty()
        if not picked:  # nothing typed yet: a hint, not an error
            slots[name].caption("Give at least two values.")
            problem = problem or grid.GridError(f"{name}: give at least two values to vary")
            continue
        try:
            axes.append(grid.parse_values(name, picked))
        except grid.GridError as exc:
            slots[name].error(str(exc), icon=":material/error:")
            problem = problem or exc
    p = None
    if problem is None and chosen:
        try:
            p = grid.plan(values, axes)
        except grid.GridError as exc:
            problem = exc
            slot = slots.get(exc.field)
            (slot.error if slot is not None else st.error)(str(exc), icon=":material/error:")
    folds_text = kept(st.text_input, "Cross-validate each combination: folds (0: one run each, on one split)",
                      "grid_cv_folds", "0",
                      help="With K folds every combination becomes a K-fold cross-validation grouped by "
                                    "observation, and the table ranks them by out-of-fold macro-F1 with intervals")
    folds = 0
    if folds_text.strip() not in ("", "0"):
        try:
            folds = cv.check_folds(folds_text.strip())
        except cv.CVError as exc:
            st.error(str(exc), icon=":material/error:")
            problem = problem or exc
    runs = len(p) * (folds or 1) if p is not None and problem is None else 0
    if runs:  # a count only for a grid that would launch: beside a refusal it would read as a plan
        what = f"{len(p)} cross-validations of {folds} folds ({runs} runs)" if folds else f"{runs} runs"
        st.markdown(f"**{what}**, queued one after another on {jobs.device_key(p.configs[0].device)}: "
                    + ", ".join(f"`{c.name}`" for c in p.configs))
    elif not chosen:
        st.caption("Choose the options to vary, then their values: optimizer × scheduler × augment, say.")
    if st.button(f"Launch grid ({runs} runs)" if runs else "Launch grid", key="grid_launch", type="primary"):
        if p is None:
            show_error(problem or "choose at least one option to vary and its values", "Grid not launched")
            return
        if problem is not None:
            show_error(problem, "Grid not launched")
            return
        try:
            if folds:
                grid_id, _ = grid.cross_validate(p, folds)
                st.session_state[SHOWN] = grid_id
                st.success(f"Grid {grid_id}: queued {len(p)} cross-validations of {folds} folds. Its table, ranked "
                           "by out-of-fold macro-F1, is under Grid results below.", icon=":material/check:")
                return
            grid_id, runs = grid.launch(p)
        except (grid.GridError, jobs.JobError) as exc:
            show_error(exc, "Grid not launched")
            return
        st.session_state[SHOWN] = grid_id
        st.session_state["selected_run"] = runs[0].name  # Watch run follows the grid's first run
        st.success(f"Grid {grid_id}: queued {len(runs)} runs (tagged grid:{grid_id}). Its results are under "
                   "Grid results below.", icon=":material/check:")


def grid_results() -> None:
    """A grid's results, a row per run (sortable: click a column), live while its runs are queued or running,
    and a button that opens its runs in Compare."""
    skipped: list[str] = []
    grids = grid.list_grids(skipped=skipped)
    for line in skipped:
        st.warning(f"A grid manifest was skipped: {line}", icon=":material/warning:")
    if not grids:
        return
    st.subheader("Grid results")
    ids = [m["id"] for m in grids]
    if st.session_state.get(SHOWN) not in ids:
        st.session_state[SHOWN] = ids[0]
    by_id = {m["id"]: m for m in grids}
    grid_id = st.selectbox("Grid", ids, key=SHOWN,
                           format_func=lambda i: f"{i} · {grid.describe_values(by_id[i].get('values', {}))}")
    table, _ = grid.report(grid_id)
    cross_validated = bool(by_id[grid_id].get("cv_folds"))
    running = ("active",) if cross_validated else ACTIVE_STATES
    active = bool(len(table)) and table["state"].isin(running).any()

    @st.fragment(run_every=3.0 if active else None)
    def live() -> None:
        table, split = grid.report(grid_id)
        if cross_validated:
            st.caption(split[0].upper() + split[1:])
            metrics = {c: st.column_config.NumberColumn(c, format="%.3f") for c in table.columns
                       if c.startswith("oof") and not c.endswith("95%")}
        else:
            (st.warning if "NOT" in split else st.caption)(split[0].upper() + split[1:] + ". Metrics: the best "
                                                           "epoch's, on validation.")
            metrics = {label: st.column_config.NumberColumn(label, format="%.3f") for label in grid.METRICS}
        st.dataframe(table, hide_index=True, width="stretch", column_config=metrics, key=f"grid_table_{grid_id}")
        if active and not table["state"].isin(running).any():
            st.rerun(scope="app")  # the grid just ended: redraw once, and stop polling

    live()
    if cross_validated:
        st.caption("Each row's cross-validation has its full report under Cross-validations below.")
        return
    scored = table.loc[table["best epoch"].notna(), "run"].tolist() if len(table) else []
    if st.button("Open these runs in Compare", key="grid_compare", disabled=len(scored) < 2,
                 help="Compare needs two runs with at least one finished epoch" if len(scored) < 2 else None):
        st.session_state[COMPARE_PRESET] = scored
        st.switch_page("views/compare.py")
