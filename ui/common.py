"""What the pages share: cached model and data loading, progress, friendly errors (the list of pages and
their set-up are in `ui.navigation`, which app.py imports without torch)."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
import torch

from core.checkpoint import CheckpointError, CheckpointInfo, LoadedModel, checkpoint_info, load_checkpoint
from core.data import DataError, DataSpec, HiriseData, load_dataset, open_tile_cache, read_source
from core.imageio import ImageError
from core.inference import defer_trace
from core.runs import Run, list_runs
from core.settings import DEFAULT_CHECKPOINT, LABEL_OVERRIDES_FILE, PROJECT_ROOT

if TYPE_CHECKING:
    import pandas as pd

#: Errors a user can cause; shown as a message, never a traceback.
USER_ERRORS = (DataError, CheckpointError, ImageError, ValueError, FileNotFoundError, OSError)

IMBALANCE_NOTE = ("Most HiRISE tiles are `other` (about 81% of the v3.2 set), so a model that always answers `other` "
                  "looks accurate: the Dataset page gives its accuracy on the data loaded. Read macro-F1, balanced "
                  "accuracy and per-class recall, not accuracy alone.")


def imbalance_note(baseline: dict | None = None, where: str = "") -> str:
    """The warning against reading accuracy alone, quoting the always-majority accuracy of the tiles in question
    (a report's `majority_baseline`) when there are any: a fixed figure would contradict the page's own."""
    if not baseline:
        return IMBALANCE_NOTE
    return (f"A model that always answers `{baseline['class']}` scores {baseline['accuracy']:.1%} accuracy{where}. "
            "Read macro-F1, balanced accuracy and per-class recall, not accuracy alone.")
RARE_NOTE = ("Rare classes (impact ejecta, spider, dark dune) have few tiles: their per-class figures move a lot "
             "with one tile more or less.")


JOBS_RECHECK_S = 5.0


@st.cache_data(ttl=JOBS_RECHECK_S, show_spinner=False)
def _cpu_job_running() -> bool:
    """Whether a training job runs on the CPU; the runs are listed again at most every few seconds (a page asks
    for its model several times per run)."""
    return any(s.get("state") == "running" and s.get("device") == "cpu" and r.trainer_alive()
               for r, s in ((r, r.status()) for r in list_runs()[:20]))


def share_cpu_with_jobs() -> None:
    """With no GPU, the app's own inference uses one thread while a training job runs on the CPU:
    two processes with two threads each on two cores ran small models 30-50x slower (measured)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(1 if _cpu_job_running() else max(1, os.cpu_count() or 1))


def progress_bar(label: str) -> Callable[[int, int, str], None]:
    """An on_progress callback drawing a Streamlit bar with counts, rate and ETA. Each stage (a new description)
    is timed from its own start and from the count it started at (work kept from an earlier run is not speed);
    a one-step stage shows its description alone, with no count to make an ETA from. The bar appears with the
    first report (work read from a cache reports none, and leaves no empty bar behind)."""
    bar = st.empty()
    stage = {"desc": None, "start": 0.0, "from": 0}

    def update(done: int, total: int, desc: str) -> None:
        now = time.perf_counter()
        desc = desc or label
        if desc != stage["desc"] or done < stage["from"]:
            stage.update({"desc": desc, "start": now, "from": done})
        if total > 1:
            rate = (done - stage["from"]) / (now - stage["start"]) if now > stage["start"] else 0.0
            eta = f"ETA {(total - done) / rate:,.0f} s" if rate > 0 else "ETA …"
            bar.progress(min(1.0, done / total), text=f"{desc}: {done:,}/{total:,} · {rate:,.0f}/s · {eta}")
        elif total == 1:
            bar.progress(float(min(done, 1)), text=f"{desc}…")
        else:
            bar.progress(0.0, text=f"{desc}: {done:,}")
        if total and done >= total:
            bar.empty()

    return update


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def _cached_model(path: str, stamp: float) -> LoadedModel:
    model = load_checkpoint(path)
    defer_trace(model)  # a page's first one-tile answer runs eagerly; the Explain page makes the trace after it
    return model


def get_model(path: str | Path | None = None) -> LoadedModel:
    """Load a checkpoint once per file version (a retrained file is reloaded); the app's inference then shares
    the CPU with running jobs."""
    share_cpu_with_jobs()
    p = _existing_checkpoint(path)
    return _cached_model(str(p), p.stat().st_mtime)


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_info(path: str, stamp: float) -> CheckpointInfo:
    return checkpoint_info(path)


def get_model_info(path: str | Path | None = None) -> CheckpointInfo:
    """What a checkpoint is, without building its model (the Home page: no timm import, no weights)."""
    p = _existing_checkpoint(path)
    return _cached_info(str(p), p.stat().st_mtime)


def _existing_checkpoint(path: str | Path | None) -> Path:
    p = Path(path) if path else DEFAULT_CHECKPOINT
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


@st.cache_resource(show_spinner="Reading, merging and splitting the data…", max_entries=4)
def _cached_data(spec: DataSpec, overrides_stamp: tuple = ()) -> HiriseData:
    return load_dataset(spec)  # draws nothing: Streamlit replays what cached functions draw


_WARM: set[tuple] = set()  # data sources whose on-disk caches this process has checked


def _warm_tile_caches(paths: tuple[str, ...]) -> None:
    """Build missing decoded-tile caches with a visible progress bar, once per process and sources."""
    if paths in _WARM:
        return
    slot = st.empty()
    with slot.container():
        on_progress = progress_bar("Decoding tiles (once; cached on disk for every later run)")
        for path in paths:
            open_tile_cache(read_source(path), on_progress=on_progress)
    slot.empty()
    _WARM.add(paths)


def get_data(spec: DataSpec) -> HiriseData:
    """The merged, split data set, held in memory once per DataSpec and label-overrides version (tiles decoded
    once, on disk)."""
    _warm_tile_caches(spec.paths)
    return _cached_data(spec, _overrides_stamp())


def _overrides_stamp() -> tuple:
    """The label overrides file's version, so accepting a correction (Explore page) reloads the data with it."""
    try:
        stat = LABEL_OVERRIDES_FILE.stat()
        return (stat.st_mtime_ns, stat.st_size)
    except OSError:
        return ()


def data_for_config(config: dict) -> HiriseData:
    """The data a run (its config.json, or its checkpoint's config) was trained on, split the same way."""
    return get_data(DataSpec.from_mapping(config))


def kept_selectbox(label: str, options: list, key: str, default: object = None, **kwargs: object) -> object:
    """A selectbox whose choice survives leaving the page and coming back: Streamlit drops a widget's state when a
    run does not draw it, and the widget then came back at its default (a model choice reverted to the default
    model, and the next map was drawn with a model nobody chose). The choice is mirrored in a key of its own."""
    mirror = f"kept_{key}"
    if key not in st.session_state:
        kept = st.session_state.get(mirror)
        st.session_state[key] = kept if kept in options else (default if default in options else options[0])
    value = st.selectbox(label, options, key=key, **kwargs)
    st.session_state[mirror] = value
    return value


def show_error(exc: BaseException | str, what: str = "") -> None:
    st.error(f"{what + ': ' if what else ''}{exc}", icon=":material/error:")


def shipped_models() -> dict[str, Path]:
    """The checkpoints shipped in checkpoints/ (the default first), by display name."""
    choices: dict[str, Path] = {}
    if DEFAULT_CHECKPOINT.is_file():
        choices[f"default model ({DEFAULT_CHECKPOINT.name})"] = DEFAULT_CHECKPOINT
    for path in sorted((PROJECT_ROOT / "checkpoints").glob("*.pt")):
        if path.resolve() != DEFAULT_CHECKPOINT.resolve():
            choices[f"shipped baseline ({path.name})"] = path
    return choices


def model_choices() -> dict[str, Path]:
    """The shipped models and every run with a best checkpoint, by display name."""
    choices = shipped_models()
    for run in list_runs():
        if run.best_checkpoint.is_file():
            choices[f"run {run.name}"] = run.best_checkpoint
    return choices


def require_model_choices() -> dict[str, Path]:
    """`model_choices`, or an error and the end of the page when there is none."""
    choices = model_choices()
    if not choices:
        st.error("No model is available: the shipped checkpoint is missing from checkpoints/ and no run has finished.")
        st.stop()
    return choices


def run_of_checkpoint(path: Path) -> Run | None:
    return Run(path.parent) if path.name == "best.pt" and (path.parent / "config.json").is_file() else None


NO_TILES = "no tiles"
NEVER_PREDICTED = "n/a"  # short: the table sits in a narrow column (never_predicted names the classes)


def _recall_colour(value: float | None) -> str:
    """Red to green, as background_gradient drew it; no colour where there is no recall."""
    if value is None or value != value:
        return "color: #888"
    from matplotlib import colormaps
    r, g, b, _ = colormaps["RdYlGn"](float(value))
    return f"background-color: rgb({r * 255:.0f}, {g * 255:.0f}, {b * 255:.0f}); color: black"


def never_predicted(per_class: list[dict], confusion: list[list[int]] | None = None) -> list[str]:
    """The classes a report's model never answered (their precision is undefined); a report saved before
    predictions were counted per class gives them through its confusion matrix's columns."""
    if per_class and "predicted" in per_class[0]:
        return [c["class"] for c in per_class if c["predicted"] == 0]
    if confusion is None:
        return []
    return [c["class"] for c, column in zip(per_class, zip(*confusion)) if sum(column) == 0]


def interval_text(interval: list[float] | None) -> str:
    """`0.87–0.94`, a 95% interval as the tables show it beside its figure; "" when there is none."""
    return f"{interval[0]:.2f}–{interval[1]:.2f}" if interval else ""


def interval_caption(intervals: dict | None) -> str:
    """One line saying what the intervals are, under the figures that carry them."""
    if not intervals:
        return ("No intervals: this report was saved before they were computed (evaluate again to get them).")
    return (f"In brackets and beside each figure: its 95% interval, from a {intervals['method']}: the tiles of one "
            "observation are alike, so whole observations are resampled. A wide interval means this split cannot "
            "pin the figure down.")


def per_class_table(per_class: list[dict], confusion: list[list[int]] | None = None,
                    intervals: dict | None = None) -> "pd.io.formats.style.Styler":
    """Per-class precision, recall, F1 and support, recall coloured, each figure with its 95% interval (a
    report's `intervals`, when it has them). A class the split has no tile of shows "no tiles" as its recall and
    F1 (a red 0.000 read as total failure; Streamlit shows NaN as "None"); a class never predicted shows "n/a" as
    its precision, which is undefined, not 0."""
    import pandas as pd  # here, not at the top: the Explain page's first prediction does not wait for it
    table = pd.DataFrame(per_class).set_index("class")
    absent = table["support"] == 0
    unpredicted = table.index.isin(never_predicted(per_class, confusion))
    recall = table["recall"].astype(float).mask(absent)
    class_iv = (intervals or {}).get("per_class") or [{}] * len(table)
    for column in ("precision", "recall", "f1"):
        blank = unpredicted if column == "precision" else absent
        text = NEVER_PREDICTED if column == "precision" else NO_TILES
        table[column] = [text if b else f"{v:.3f}" + (f" ({interval_text(iv.get(column))})" if iv.get(column) else "")
                         for v, b, iv in zip(table[column].astype(float), blank, class_iv)]
    table = table.drop(columns="predicted", errors="ignore")  # said through precision; the table keeps its width
    return table.style.apply(lambda col: [_recall_colour(recall[c]) for c in col.index], subset=["recall"])
