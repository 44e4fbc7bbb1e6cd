"""What the pages load, cached: the data set, a model, its ONNX twin alone or its description, and the models there
are to choose from (the app's own inference shares the CPU with training jobs). Importing this module imports no
torch: a page that needs only a twin, a description or the data draws without it (torch takes seconds)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from core.checkpoint_file import check_container
from core.data import DataSpec, HiriseData, load_dataset, open_tile_cache, read_source
from core.errors import CheckpointError
from core.experiment.runs import Run, list_runs
from core.gpu import cuda_available
from core.onnx_model import OnnxError, OnnxModel, load_twin, twin_path
from core.settings import DEFAULT_CHECKPOINT, ENGINE, LABEL_OVERRIDES_FILE, PROJECT_ROOT
from ui.progress import progress_bar

if TYPE_CHECKING:
    from core.checkpoint import CheckpointInfo, LoadedModel

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
    if not cuda_available():
        import torch

        torch.set_num_threads(1 if _cpu_job_running() else max(1, os.cpu_count() or 1))


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def _cached_model(path: str, stamp: tuple[float, float]) -> LoadedModel:
    from core.checkpoint import load_checkpoint
    from core.inference import defer_trace

    twin = get_twin(path)[0] if ENGINE != "torch" else None  # the session pages answered from, not a second one
    model = load_checkpoint(path, engine=ENGINE, twin=twin)  # HIRISE_ENGINE (core.settings): auto unless told
    defer_trace(model)  # a page's first one-tile answer runs eagerly; the Explain page makes the trace after it
    return model


def get_model(path: str | Path | None = None) -> LoadedModel:
    """Load a checkpoint once per file version (a retrained file is reloaded); the app's inference then shares
    the CPU with running jobs."""
    share_cpu_with_jobs()
    p = _existing_checkpoint(path)
    return _cached_model(str(p), _stamp(p))


def _stamp(p: Path) -> tuple[float, float]:
    """A checkpoint's version and its twin's: a re-exported twin is a new model to load, and a new session."""
    twin_file = twin_path(p)
    return p.stat().st_mtime, twin_file.stat().st_mtime if twin_file.is_file() else 0.0


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_twin(path: str, stamp: tuple[float, float]) -> OnnxModel | str:
    try:
        return load_twin(Path(path))
    except OnnxError as exc:
        return f"torch: {exc}"


def get_twin(path: str | Path | None = None) -> tuple[OnnxModel | None, str]:
    """A checkpoint's verified ONNX twin alone, loaded once per checkpoint version without importing torch, and
    which engine serves (its note); (None, why) when there is no usable twin (torch serves then).
    CheckpointError when the checkpoint is missing or predicts other classes."""
    p = _existing_checkpoint(path)
    if ENGINE == "torch":
        return None, "torch (HIRISE_ENGINE=torch)"
    twin = _cached_twin(str(p), _stamp(p))
    return (None, twin) if isinstance(twin, str) else (twin, twin.engine_note)


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_info(path: str, stamp: float) -> CheckpointInfo:
    from core.checkpoint import checkpoint_info

    return checkpoint_info(path)


def get_model_info(path: str | Path | None = None) -> CheckpointInfo:
    """What a checkpoint is, without building its model (the Home page: no timm import, no weights)."""
    p = _existing_checkpoint(path)
    return _cached_info(str(p), p.stat().st_mtime)


def default_model_file() -> Path:
    """The default checkpoint, its container checked without torch (CheckpointError says what is wrong): the Home
    page names a broken default even when the registry describes the model."""
    p = _existing_checkpoint(None)
    check_container(p)
    return p


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


def shipped_models() -> dict[str, Path]:
    """The checkpoints shipped in checkpoints/ (the default first), by display name."""
    choices: dict[str, Path] = {}
    if DEFAULT_CHECKPOINT.is_file():
        choices[f"default model · {_short(DEFAULT_CHECKPOINT)}"] = DEFAULT_CHECKPOINT
    for path in sorted((PROJECT_ROOT / "checkpoints").glob("*.pt")):
        if path.resolve() != DEFAULT_CHECKPOINT.resolve():
            choices[f"{_short(path)} · shipped baseline ({path.name})"] = path
    return choices


def _short(path: Path) -> str:
    """A checkpoint's name with what tells models apart first (a select box cuts the end off at 1400 px, and
    'shipped baseline (hirise-efficientnet-lite...' read the same for Lite0 and Lite2)."""
    import re
    stem = re.sub(r"-\d{8}-\d{6}-[0-9a-f]{4}$", "", path.stem)  # a promoted default's CV id: in the file name
    return stem.removeprefix("hirise-").replace("efficientnet-lite", "EfficientNet-Lite")


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
