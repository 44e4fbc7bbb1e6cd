"""The Train page's cross-validation: launch K folds of the configured recipe as jobs, watch the pooled out-of-fold
report fill in as folds finish, and refit the recipe on all the data. All checking and figures are core.experiment.cv's."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import defaults
from core.data import DataError
from core.data.spec import MAX_FOLDS, MIN_FOLDS
from core.experiment import cv, jobs
from core.experiment.cluster import MAX_LOCAL_WORKERS, ClusterError
from core.experiment.cv_files import VIEWS
from core.training.config import ConfigError, RunConfig
from ui import figures
from ui.errors import show_error
from ui.intervals import interval_caption, interval_text
from ui.per_class import per_class_table
from ui.widgets import kept

SHOWN = "cv_shown"  # the cross-validation whose report is on screen
ACTIVE = ("queued", "running")


def cv_form(values: dict[str, Any]) -> None:
    """K folds (and the fold seed) over the run form's settings; every fold checked before anything is queued."""
    cols = st.columns([1, 1, 2])
    folds_text = kept(cols[0].text_input, "Folds", "cv_folds_text", "5",
                      help=f"{MIN_FOLDS} to {MAX_FOLDS} folds, grouped by observation: every fold is a run that "
                           "validates on its own observations and trains on the rest")
    seed_text = kept(cols[1].text_input, "Fold seed", "cv_seed_text", "0",
                     help="which observations fall in which fold (the same seed, the same folds)")
    configs, problem = None, None
    try:
        try:
            seed = int(seed_text.strip())
        except ValueError:
            raise cv.CVError(f"cv_seed: {seed_text.strip()!r} is not a whole number") from None
        configs = cv.plan(values, folds_text.strip(), seed)
    except ConfigError as exc:
        problem = exc
        st.caption(f"Cross-validation is refused until this is fixed: {exc}")
    if configs:
        epochs = values.get("epochs")
        cols[2].markdown(f"**{len(configs)} runs** of {epochs} epoch{'' if str(epochs) == '1' else 's'} each, queued "
                         "one after another; "
                         "each is scored at its last epoch, and their out-of-fold predictions are pooled in its "
                         "report, under Cross-validations further down once it is launched.")
    places = ("on this machine (the device queue)", "on a Dask cluster")
    where = kept(st.radio, "Run the folds", "cv_where", places[0], places, horizontal=True,
                 valid=lambda v: v in places, help="A cluster trains the folds side by side; its workers must see "
                                                   "this runs folder and the data at the same paths (docs/cluster.md)")
    address, workers = None, 2
    if where == "on a Dask cluster":
        cols = st.columns([2, 1])
        address = kept(cols[0].text_input, "Scheduler address", "cv_cluster", "local",
                       help="tcp://HOST:PORT of a running `dask scheduler`, or local: worker processes on this "
                            "machine").strip()
        workers_text = kept(cols[1].text_input, "Local workers", "cv_workers", "2",
                            help=f"with local: how many worker processes (1 to {MAX_LOCAL_WORKERS})")
        try:
            workers = int(workers_text.strip())
            if not 1 <= workers <= MAX_LOCAL_WORKERS:
                raise ValueError
        except ValueError:
            problem = problem or cv.CVError(f"workers: {workers_text.strip()!r} is not a whole number from 1 to "
                                                f"{MAX_LOCAL_WORKERS}")
        if not address:
            problem = problem or cv.CVError("cluster: give a scheduler address (tcp://HOST:PORT) or local")
    if st.button(f"Cross-validate ({len(configs)} folds)" if configs else "Cross-validate", key="cv_launch"):
        if configs is None or problem is not None:
            show_error(problem or "check the folds", "Not launched")
            return
        try:
            for line in cv.coverage(configs[0]):
                st.warning(f"Folds: {line}.", icon=":material/call_split:")
            if address:
                log, _ = cv.launch_on_cluster(configs, address, workers)
                st.success(f"Handed to the Dask cluster {address}: a background process submits the {len(configs)} "
                           f"folds and waits for them (its log: {log}). The cross-validation is listed under "
                           "Cross-validations below once they are submitted.", icon=":material/check:")
                return
            cv_id, runs = cv.launch(configs)
        except (ConfigError, DataError, jobs.JobError, ClusterError, OSError) as exc:
            show_error(exc, "Not launched")
            return
        st.session_state[SHOWN] = cv_id
        st.session_state["selected_run"] = runs[0].name
        st.success(f"Cross-validation {cv_id}: queued {len(runs)} folds (tagged cv:{cv_id}). Its report is under "
                   "Cross-validations below.", icon=":material/check:")


def _curve(curve: list[dict]) -> go.Figure:
    """The folds' mean validation macro-F1 per epoch, with a band of one standard deviation."""
    x = [r["epoch"] for r in curve]
    mean = [r["macro_f1"] for r in curve]
    sd = [r["macro_f1_sd"] for r in curve]
    fig = go.Figure()
    fig.add_scatter(x=x + x[::-1], y=[m + s for m, s in zip(mean, sd, strict=True)] + [m - s for m, s in zip(mean, sd, strict=True)][::-1],
                    fill="toself", fillcolor="rgba(78,121,167,0.2)", line=dict(width=0), hoverinfo="skip",
                    name="± 1 sd over folds")
    fig.add_scatter(x=x, y=mean, mode="lines+markers", name="mean over folds", line=dict(color="#4E79A7"),
                    customdata=[r["folds"] for r in curve], hovertemplate="epoch %{x}: %{y:.3f} (%{customdata} folds)")
    fig.update_layout(xaxis_title="epoch", yaxis_title="validation macro-F1", xaxis=dict(dtick=1))
    return figures._layout(fig, "Mean validation curve over the folds", height=320)


def _report_view(rep: dict) -> None:
    folds = pd.DataFrame([{"fold": f["fold"], "run": f.get("run") or "–", "state": f.get("state"),
                           "tiles": f.get("tiles"), "macro-F1 (its fold)": f.get("macro_f1"),
                           "missing": f.get("missing") or ""} for f in rep["folds"]])
    st.dataframe(folds, hide_index=True, width="stretch",
                 column_config={"macro-F1 (its fold)": st.column_config.NumberColumn(format="%.3f"),
                                "tiles": st.column_config.NumberColumn(format="%d")})
    if rep["missing"]:
        st.warning(f"Incomplete: fold{'s' if len(rep['missing']) > 1 else ''} "
                   f"{', '.join(str(f['fold']) for f in rep['missing'])} "
                   f"{'are' if len(rep['missing']) > 1 else 'is'} left out of every figure below "
                   "(resume or relaunch them: a missing fold is never averaged in).", icon=":material/warning:")
    pooled = rep.get("pooled")
    if not pooled:
        st.info("No fold has completed yet: the pooled figures appear as folds finish.")
        return
    _files_view(rep)
    iv = pooled["intervals"]
    st.markdown(f"**Out-of-fold**: every validated original scored once, by the fold model that never saw its "
                f"observation: {pooled['n']:,} tiles from {pooled['observations']} observations.")
    cols = st.columns(4)
    for col, key in zip(cols[:len(cv.HEADLINE)], cv.HEADLINE, strict=True):
        col.metric(cv.LABELS[key], f"{pooled[key]:.3f}")
        spread = rep["fold_spread"][key]
        col.caption(f"95% interval {interval_text(iv[key])} · "
                    f"{cv.spread_text(spread, len(rep['folds']) - len(rep['missing']))}")
    base = pooled["majority_baseline"]
    cols[3].metric(f"Always-{base['class']} accuracy", f"{base['accuracy']:.3f}")
    # the table full width, under the matrix: beside it, its last columns (F1 and its interval) were cut off
    st.plotly_chart(figures.confusion_matrix(pooled["confusion"], pooled["class_names"], True,
                                             "out-of-fold, row-normalised"), width="stretch", key=f"cv-cm-{rep['id']}")
    st.dataframe(per_class_table(pooled["per_class"], pooled["confusion"], iv), width="stretch")
    st.caption(interval_caption(iv))
    if rep["curve"]:
        st.plotly_chart(_curve(rep["curve"]), width="stretch", key=f"cv-curve-{rep['id']}")
        st.caption(f"The mean over the folds is highest at epoch {rep['best_epoch']}: the epoch count to refit with "
                   "(the folds ran the whole schedule; a refit with fewer epochs runs a shorter one).")


def files_table(views: dict) -> pd.DataFrame:
    """Per-class recall first, then the headline figures, the always-`other` accuracy on the same files and the
    false alarms at the scan threshold; one column per view (originals, all files, all files with TTA)."""
    shown = [v for v in VIEWS if views.get(v)]
    rows: list[dict] = [{"figure": "files scored", **{v: f"{views[v]['n']:,}" for v in shown}}]
    for c, name in enumerate(views[shown[0]]["class_names"]):
        row = {"figure": f"recall: {name}"}
        for v in shown:
            pc, civ = views[v]["per_class"][c], views[v]["intervals"]["per_class"][c]
            row[v] = f"{pc['recall']:.2f} ({interval_text(civ['recall'])}) n={pc['support']}" if pc["support"] \
                else "no files"
        rows.append(row)
    for key in cv.HEADLINE:
        rows.append({"figure": cv.LABELS[key], **{v: f"{views[v][key]:.3f} ({interval_text(views[v]['intervals'][key])})"
                                                  for v in shown}})
    rows.append({"figure": "always-other accuracy", **{v: f"{views[v]['majority_baseline']['accuracy']:.3f}"
                                                      for v in shown}})
    rows.append({"figure": "false alarms at 0.9", **{
        v: "–" if views[v]["false_alarms"]["rate"] is None else
        f"{views[v]['false_alarms']['rate']:.3f} ({interval_text(views[v]['false_alarms']['interval'])}) "
        f"{views[v]['false_alarms']['alarms']} of {views[v]['false_alarms']['other_files']}" for v in shown}})
    return pd.DataFrame(rows)


def _files_view(rep: dict) -> None:
    files = rep.get("files") or {}
    views = files.get("views")
    st.markdown("**On every file a user could send**: the originals, their official turned, flipped and brightened "
                "copies as sent, and the same with the 8 flips and turns averaged (TTA). Per-class recall first.")
    if not views:
        st.info(f"Not scored yet ({'; '.join(files.get('missing') or ['no completed fold'])}). Folds score every "
                "file as they finish; for folds trained before that, run "
                f"`python -m core.train score {rep['id']}`.", icon=":material/info:")
        return
    st.dataframe(files_table(views), hide_index=True, width="stretch")
    st.caption(f"{files['originals']:,} originals and {files['files'] - files['originals']:,} copies; temperature "
               f"{rep.get('temperature', 1.0):.3f} (fitted on the originals' out-of-fold logits, as the refit's). "
               "False alarms: the share of `other` files called a landmark with probability at least 0.9, the "
               "scan's standard threshold (a default's scans may use its own: Home says). 95% intervals, bootstrap "
               "over observations.")


def _promote(rep: dict) -> None:
    """The champion/challenger gate: this cross-validation's refit becomes the default only if it beats the current
    default on the same folds (core.defaults)."""
    st.markdown("**Make it the default**: its refit replaces the default model only if it beats the default's own "
                "cross-validation on the same folds, on every file (paired bootstrap over observations): not worse "
                "beyond noise on macro-F1 or accuracy, and better on one.")
    try:
        champion = defaults.current_entry(defaults.read_registry())
    except defaults.RegistryError as exc:
        show_error(exc, "The registry of defaults")
        return
    st.caption(f"Current default: {champion['checkpoint']} (cross-validation {champion['id']}, "
               f"{champion['cv'].get('folds')} folds, seed {champion['cv'].get('seed')})" if champion else
               "The registry has no default yet: the first champion is set from the command line (--promote ID "
               "--first).")
    if st.button("Promote its refit to default", key=f"cv_promote_{rep['id']}", disabled=champion is None):
        said: list[str] = []
        with st.spinner("Comparing with the default on the same folds ..."):
            try:
                entry = defaults.promote(rep["id"], say=said.append)
            except defaults.RegistryError as exc:
                st.error("Not promoted: " + str(exc).replace("; ", "  \n"), icon=":material/block:")
                return
        st.success(f"{entry['checkpoint']} is the default. Pages and commands started from now use it; restart the "
                   "app for pages already open.", icon=":material/check:")
        st.code("\n".join(said), language=None)


def _paired_view(rep: dict, ids: list[str]) -> None:
    """This cross-validation against another, paired on the files both scored (`core.experiment.cv.paired`): what
    `report cv ID --against ID2` prints, for any two, with no registry involved. Computed on Compare and kept for
    the pair: reading every fold's files and bootstrapping three views is too much for every rerun of the page."""
    others = [i for i in ids if i != rep["id"]]
    if not others:
        return
    with st.expander("Compare with another cross-validation (paired, on the files both scored)"):
        cols = st.columns([3, 1])
        other = cols[0].selectbox("Against", others, index=None, key=f"cv_against_{rep['id']}",
                                  placeholder="choose a cross-validation", label_visibility="collapsed",
                                  help="Each figure of this one minus the other's, on the out-of-fold files both "
                                       "scored, with a 95% interval from a paired bootstrap over observations")
        key = f"cv_paired_{rep['id']}"
        if cols[1].button("Compare", key=f"cv_compare_{rep['id']}", disabled=other is None):
            try:
                with st.spinner("Pairing the two on every file both scored …"):
                    st.session_state[key] = cv.paired(rep["id"], other)
            except (FileNotFoundError, cv.CVError) as exc:
                st.session_state.pop(key, None)
                show_error(exc, "Not compared")
                return
        result = st.session_state.get(key)
        if other is None or not result or result["b"] != other:
            st.caption("Choose a cross-validation, then Compare.")
            return
        st.dataframe(pd.DataFrame(cv.paired_rows(result)), hide_index=True, width="stretch")
        st.caption(f"A = {rep['id']}, B = {other}. Each cell: A minus B with its 95% interval; 'within noise' when "
                   "the interval holds 0." + "".join(f" {view}: not paired ({why})." for view, why
                                                     in result["not_paired"].items()))
        if not result["same_folds"]:
            text = cv.folds_text(result)
            st.warning(text[0].upper() + text[1:] + ".", icon=":material/call_split:")


def _refit(rep: dict) -> None:
    """Train the cross-validated recipe on all the data, calibrated by these out-of-fold predictions."""
    base = dict(rep["base"])
    st.markdown("**Refit on all the data**: the same recipe with no validation split, for a fixed number of "
                "epochs; its figures are these out-of-fold ones, and its calibration comes from them too.")
    cols = st.columns([1, 3])
    epochs = cols[0].text_input("Epochs", value=str(base.get("epochs")), key=f"cv_refit_epochs_{rep['id']}")
    values = {**base, "cv_folds": 0, "cv_fold": 0, "val_fraction": 0.0, "test_fraction": 0.0,
              "calibrate_from": rep["id"], "epochs": epochs.strip(), "name": f"refit-{rep['id']}"}
    cfg, problem = None, None
    try:
        cfg = RunConfig.from_dict(values).validate().check_ready()
    except ConfigError as exc:
        problem = exc
        cols[1].caption(f"Refit is refused until this is fixed: {exc}")
    if rep["missing"]:
        problem = problem or cv.CVError("every fold must complete before a refit is calibrated on them")
        cols[1].caption("Refit waits until every fold has completed.")
    if rep["missing"] and not any(f.get("state") in ACTIVE for f in rep["folds"]) and \
            st.button("Relaunch missing folds", key=f"cv_relaunch_{rep['id']}",
                      help="Queue again every fold that was deleted, failed, cancelled or never queued, with the "
                           "cross-validation's own recipe and folds"):
        try:
            runs = cv.relaunch_missing(rep["id"])
        except (ConfigError, DataError, jobs.JobError, OSError) as exc:
            show_error(exc, "Not relaunched")
        else:
            st.success(f"Queued {', '.join(r.name for r in runs)}; the report fills in as they finish.",
                       icon=":material/check:")
    if st.button("Refit on all the data", key=f"cv_refit_{rep['id']}", disabled=bool(rep["missing"])):
        if cfg is None or problem is not None:
            show_error(problem, "Not launched")
            return
        waiting = cv.active_refit(rep["id"])
        if waiting is not None:
            show_error(f"a refit of this cross-validation is already {jobs.job_state(waiting, waiting.status())}: "
                       f"{waiting.name}", "Not launched")
            return
        try:
            run = jobs.launch(cfg)
        except (ConfigError, jobs.JobError) as exc:
            show_error(exc, "Not launched")
            return
        st.session_state["selected_run"] = run.name
        st.success(f"Queued the refit {run.name}.", icon=":material/check:")


def cv_results() -> None:
    """The chosen cross-validation's report, live while its folds are queued or running."""
    skipped: list[str] = []
    found = cv.list_cvs(skipped=skipped)
    for line in skipped:
        st.warning(f"A cross-validation manifest was skipped: {line}", icon=":material/warning:")
    if not found:
        return
    st.subheader("Cross-validations")
    ids = [m["id"] for m in found]
    if st.session_state.get(SHOWN) not in ids:
        st.session_state[SHOWN] = ids[0]
    by_id = {m["id"]: m for m in found}
    cv_id = st.selectbox("Cross-validation", ids, key=SHOWN,
                         format_func=lambda i: f"{i} · {by_id[i].get('folds')} folds · "
                                               f"{(by_id[i].get('base') or {}).get('model')}"
                                               + (f" · grid {by_id[i]['grid']}" if by_id[i].get("grid") else ""))
    try:
        first = cv.report(cv_id)  # read once for this run of the page: every fold's report is a large file
    except (FileNotFoundError, cv.CVError) as exc:
        show_error(exc)
        return
    active = any(f.get("state") in ACTIVE for f in first["folds"])
    shown = {"report": first}

    @st.fragment(run_every=5.0 if active else None)
    def live() -> None:
        rep = shown.pop("report", None) or cv.report(cv_id)  # the page's own read first, fresh ones when polled
        _report_view(rep)
        if active and not any(f.get("state") in ACTIVE for f in rep["folds"]):
            st.rerun(scope="app")  # the last fold just ended: redraw once, and stop polling

    live()
    if first["complete"]:
        _paired_view(first, ids)
    _refit(first)
    if first["complete"]:
        _promote(first)
