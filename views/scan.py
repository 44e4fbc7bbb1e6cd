"""Scan: find the landmarks in whole observations. A scan runs as a job (its own process: it survives a refresh and
can be cancelled); its detections are drawn on the observation, listed in a table, and each one opens its window
with a Grad-CAM of its class."""
from __future__ import annotations

import shutil
from pathlib import Path

import streamlit as st

from core.experiment.cluster import ClusterError
from core.experiment.cluster import check as check_cluster
from core.scan import job as scan_jobs
from core.scan.scanner import DEFAULT_SIZES, DEFAULT_STEP, DEFAULT_THRESHOLD, SCAN_SUFFIXES, default_threshold
from core.settings import DEFAULT_SCAN_THRESHOLD, DEFAULT_TTA, SCAN_THRESHOLD_WHY
from ui.errors import USER_ERRORS, show_error
from ui.loaders import require_model_choices
from ui.uploads import unique_names
from ui.widgets import kept, kept_selectbox

STATE_WORDS = {"starting": "starting", "queued": "queued for the device", "running": "running", "completed": "done", "failed": "failed",
               "cancelled": "cancelled", "lost": "lost"}

st.caption("Windows of several sizes are cut from each observation, classified by the model (calibrated "
           "probabilities and the out-of-distribution check), and the windows of one class that overlap are merged "
           "into detections. With a PDS3 label beside the image (X.LBL for X.JP2 or X.browse.jpg) or a GeoTIFF, every "
           "detection gets map coordinates and latitude/longitude. Details: docs/scan.md.")

choices = require_model_choices()
jobs = scan_jobs.list_scans()

#: The option fields, by the command-line flag core.scan's parser checks them under: a refusal names the field.
FIELDS = {"--sizes": "Window sizes (px)", "--threshold": "Probability threshold", "--step": "Window step",
          "--level": "Resolution level"}
UPLOAD, PATH = "Upload files", "A file or folder on this machine"

with st.expander("New scan", expanded=not jobs, key="scan_new"):
    source = kept(st.radio, "Observations", "scan_source", UPLOAD, [UPLOAD, PATH], horizontal=True)
    uploads, typed = [], ""
    if source == UPLOAD or st.session_state.get("scan_uploads"):
        # drawn while a path is chosen too (disabled, in the same place), so the files uploaded are kept: Streamlit
        # forgets a widget a run does not draw, and switching to a path and back dropped them without a word
        uploads = st.file_uploader(
            "Observations (browse JPEG, JPEG 2000, GeoTIFF, PDS .IMG, PNG; up to 64 MB each) and their PDS3 labels "
            "(.LBL, named as the image)" if source == UPLOAD else
            "Uploaded files: kept for Upload files, not scanned while a path is chosen",
            type=[s.lstrip(".") for s in (*SCAN_SUFFIXES, ".lbl")], accept_multiple_files=True, key="scan_uploads",
            disabled=source != UPLOAD) or []
    if source == PATH:
        typed = kept(st.text_input, "Path", "scan_path", "",
                     placeholder="/data/hirise/ESP_011277_1825_RED.JP2 or a folder of them",
                     help="Read where it is, never copied. A folder: every observation directly in it.")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        model_label = kept_selectbox("Model", list(choices), "scan_model")
    with c2:
        sizes = kept(st.text_input, FIELDS["--sizes"], "scan_sizes", ",".join(map(str, DEFAULT_SIZES)),
                     help="Window sides, comma-separated, each at least 32 px: landmarks span about 60 to 600 pixels "
                          "of a browse image, so 96, 192 and 384 cover them")
    with c3:
        # text, checked by the command line's parser when the scan starts: a number field would hold on to its last
        # valid value (or its minimum) when something else is typed, and the scan would run at a value nobody chose
        model_threshold, _ = default_threshold(choices[model_label])
        threshold = kept(st.text_input, FIELDS["--threshold"], "scan_threshold", str(DEFAULT_SCAN_THRESHOLD),
                         valid=lambda v: isinstance(v, str),
                         help="Above 0 and at most 1. A window counts when its class (not other) has at least this "
                              f"calibrated probability. {DEFAULT_THRESHOLD} is the standard (what the PDS Imaging Atlas "
                              f"indexes HiRISE tiles at); the default model's is {DEFAULT_SCAN_THRESHOLD}: "
                              f"{SCAN_THRESHOLD_WHY}.")
        if threshold.strip() != str(model_threshold):
            own = "the standard" if model_threshold == DEFAULT_THRESHOLD else "chosen out of fold; Home says why"
            st.caption(f"This model's default: {model_threshold} ({own}).")
    with c4:
        level = kept(st.text_input, FIELDS["--level"], "scan_level", "0", valid=lambda v: isinstance(v, str),
                     help="A whole number from 0 to 10; JPEG 2000 and tiled TIFF only: read at 1/2^N of full "
                          "resolution (a HiRISE RDR at full resolution is 10-20 times finer than the browse images "
                          "the model learned on)")
    tta = kept(st.toggle, "Average 8 flips and turns (TTA)", "scan_tta", DEFAULT_TTA, valid=lambda v: isinstance(v, bool),
               help="Each window's probabilities are the mean of its 8 flips and 90-degree turns: 8x the time. "
                    f"The default model's registry entry says {'on' if DEFAULT_TTA else 'off'}: see Home.")
    e1, e2, e3 = st.columns([1, 1, 2])
    with e1:
        step = kept(st.select_slider, FIELDS["--step"] + " (of its side)", "scan_step", DEFAULT_STEP,
                    [0.25, 0.5, 0.75, 1.0],
                    help="Half a window: neighbours overlap by half, so a landmark lies whole in one of them")
    with e2:
        engine = kept_selectbox("Run on", ["this machine", "a local Dask cluster", "a Dask scheduler"], "scan_engine",
                                help="A local Dask cluster runs 2 worker processes; a scheduler's workers must read "
                                     "the files at the same paths")
    with e3:
        address = kept(st.text_input, "Scheduler address", "scan_address", "", placeholder="tcp://10.0.0.5:8786",
                       disabled=engine != "a Dask scheduler")

    if st.button("Start scan", type="primary"):
        try:
            cluster = {"this machine": None, "a local Dask cluster": "local"}.get(engine, address.strip())
            if engine == "a Dask scheduler" and not cluster:
                raise ValueError("give the scheduler's address (tcp://host:8786)")
            argv = scan_jobs.options_argv(sizes, threshold, step, level, cluster, FIELDS, tta)  # before any folder
            if cluster:
                check_cluster(cluster)  # a scheduler that does not answer is refused here, with nothing started
            if source == UPLOAD:
                images = [u for u in uploads if not u.name.lower().endswith(".lbl")]
                if not images:
                    raise ValueError("upload at least one observation (a label alone is nothing to scan)")
                job = scan_jobs.new_scan(Path(images[0].name).stem[:30])
                job.inputs.mkdir(parents=True, exist_ok=True)
                inputs = []
                for name, payload in unique_names([(u.name, u.getvalue()) for u in uploads]):
                    path = job.inputs / scan_jobs.safe_file_name(name)
                    path.write_bytes(payload)
                    if not name.lower().endswith(".lbl"):
                        inputs.append(path)
            else:
                inputs = [scan_jobs.check_input_path(typed)]
                job = scan_jobs.new_scan(inputs[0].stem[:30])
            scan_jobs.launch(job, inputs, argv, choices[model_label])
            st.session_state["scan_job"] = job.name
            st.rerun()
        except (scan_jobs.ScanJobError, ClusterError, *USER_ERRORS) as exc:
            show_error(exc, "Not started")

if deleted := st.session_state.pop("scan_deleted", None):
    st.success(f"Deleted the scan {deleted}: its folder, with its outputs and any uploads (files scanned from a path "
               "on this machine stay where they are).", icon=":material/delete:")
if not jobs:
    st.info("No scans yet: start one under New scan.")
    st.stop()
names = [j.name for j in jobs]
default = st.session_state.get("scan_job")
chosen = st.selectbox("Scan", names, index=names.index(default) if default in names else 0,
                      help="Every scan started here, newest first; a scan keeps running when the page is closed")
st.session_state["scan_job"] = chosen
job = jobs[names.index(chosen)]
status = job.status()  # read once for this run; the fragment below reads it again on its own schedule
active = status.get("state") in scan_jobs.ACTIVE


@st.fragment(run_every=1.5 if active else None)
def live() -> None:
    status = job.status()
    state = status.get("state")
    request = job.request()
    st.markdown(f"**{job.name}** · state **{STATE_WORDS.get(state, state)}** · "
                f"{len(request.get('inputs', []))} input(s) · options `{' '.join(request.get('argv', []))}`")
    if state in scan_jobs.ACTIVE:
        done, total = status.get("done") or 0, status.get("total")
        if total:
            rate, eta = status.get("rate") or 0, status.get("eta_s")
            st.progress(min(1.0, done / total), text=f"{done:,}/{total:,} windows · " + (
                f"{rate:,.1f} windows/s · ETA {eta:,.0f} s" if rate and eta is not None else "measuring speed…"))
        elif state == "queued":
            st.progress(0.0, text="queued: a training run or another scan has the device; this scan starts when it "
                                  "is done (one job at a time, oldest first: the Train page's Jobs table lists them)")
        else:
            st.progress(0.0, text="opening the observations and loading the model…")
        if st.button("Cancel scan"):
            try:
                job.cancel()
                st.toast("Cancel requested: the scan stops after the windows in hand; nothing is written.")
            except OSError as exc:
                show_error(f"cannot write to {job.path}: {exc.strerror or exc}", "Not cancelled")
    elif state == "failed":
        st.error(f"Failed: {status.get('error')}")
    elif state == "lost":
        st.error(f"Lost: {status.get('error')}")
    elif state == "cancelled":
        st.warning("Cancelled: nothing was written.")
    elif state == "completed" and status.get("missing"):
        st.error(f"{status['missing']:,} windows were not classified (a worker lost for good); the log names "
                 "them, and the GeoTIFFs mark them as not classified.")
    with st.expander("Log", expanded=state in ("failed", "lost")):
        st.code(job.log_tail() or "(empty)")
    if active and state not in scan_jobs.ACTIVE:
        st.rerun(scope="app")  # it just ended: draw the results once, and stop polling


live()
if status.get("state") == "completed":
    from ui.scan_results import show_results

    show_results(job)
if status.get("state") not in scan_jobs.ACTIVE:
    with st.expander("Delete this scan"):
        st.caption(f"Removes {job.path} with its uploads and outputs.")
        if st.button("Delete", key="scan_delete"):
            try:
                shutil.rmtree(job.path)
                st.session_state.pop("scan_job", None)
                st.session_state["scan_deleted"] = job.name
                st.rerun()
            except OSError as exc:
                show_error(f"cannot delete {job.path}: {exc.strerror or exc}", "Not deleted")

