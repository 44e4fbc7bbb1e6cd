"""Self-describing checkpoints: weights plus everything needed to use them, loaded safely."""
from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.checkpoint_file import MAX_UNPACKED_BYTES, check_container
from core.classes import CLASS_NAMES
from core.errors import CheckpointError, first_line
from core.models import ARCHITECTURES, build_model
from core.ood import FeatureDensity, OODError
from core.settings import DEFAULT_CHECKPOINT, ENGINES
from core.training.config import MIN_INPUT_SIZE, field_bounds

FORMAT = "hirise-studio-checkpoint/1"


@dataclass
class LoadedModel:
    """A ready-to-use model (eval mode, float32, channels-last) and what it needs to be fed.

    Running it is `core.inference`'s job (`predict_logits`, `predict_proba`)."""

    model: nn.Module
    arch: str
    class_names: list[str]
    image_size: int
    mean: float
    std: float
    temperature: float = 1.0  # calibration: softmax(logits / temperature)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    epoch: int | None = None
    splits: dict = field(default_factory=dict)  # {"val": {"files": [...], "observations": [...]}, "test": ...}
    ood: FeatureDensity | None = None  # how unlike the training tiles an input is (`core.ood`); None: no reference
    onnx: Any = None  # its verified ONNX twin (`core.onnx_model.OnnxModel`): forward passes run there on a CPU
    engine_note: str = "torch"  # which engine serves forward passes, and why (pages and CLIs say it)
    # the frozen CPU trace `core.inference.fast_forward` makes on first use; False: the model is not traceable;
    # `core.inference.DEFERRED`: not made yet on purpose (`defer_trace`)
    _frozen: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def refit(self) -> bool:
        """Trained on every tile of its data, with no split of its own: its figures are the out-of-fold ones of
        the cross-validation that chose it (training writes `metrics["split"] = "out-of-fold"`)."""
        return self.metrics.get("split") == "out-of-fold"


def checkpoint_payload(model: nn.Module, *, arch: str, image_size: int, mean: float, std: float,
                       config: dict, metrics: dict | None = None, temperature: float = 1.0,
                       epoch: int | None = None, half: bool = False,
                       class_names: list[str] | None = None, splits: dict | None = None) -> dict[str, Any]:
    """The dict a checkpoint file holds. `half` stores floating weights as float16 (for shipping).

    `splits` records which files (and observations) were in validation and test, so the model is later
    scored on exactly those tiles whenever the same data is loaded (`core.data.split_manifest`)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in _unwrap(model).state_dict().items()}
    return {"format": FORMAT, "arch": arch, "class_names": list(class_names or CLASS_NAMES),
            "image_size": int(image_size), "in_chans": 1, "mean": float(mean), "std": float(std),
            "temperature": float(temperature), "config": config, "metrics": metrics or {},
            "epoch": epoch, "splits": splits or {}, "state_dict": state}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate the dict, with `weights_only=True` (no code runs from the file)."""
    path = Path(path)
    check_container(path, MAX_UNPACKED_BYTES)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError, IndexError, KeyError) as exc:
        detail = first_line(exc, 200)
        if detail.startswith("Weights only load failed"):  # torch's advice there (weights_only=False) is unsafe
            detail = "it does not read as tensors and plain data, and nothing else is ever unpickled here"
        raise CheckpointError(f"{path.name} is not a readable checkpoint (corrupt, truncated or not a "
                              f"PyTorch file): {detail}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a HiRISE Studio checkpoint (no '{FORMAT}' header); plain "
                              "state dicts and other projects' checkpoints cannot be used")
    missing = [k for k in ("arch", "class_names", "image_size", "mean", "std", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path.name} lacks {', '.join(missing)}")
    if payload["arch"] not in ARCHITECTURES:
        raise CheckpointError(f"{path.name} is a {payload['arch']!r} model, which this version cannot build "
                              f"(known: {', '.join(ARCHITECTURES)})")
    problem = payload_problem(payload)
    if problem:
        raise CheckpointError(f"{path.name} is not a usable checkpoint: {problem}")
    return payload


def payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's fields, or None. Every field a loader uses is checked before use:
    a hand-made file must fail here in one line, not as a traceback (or a 40 GB allocation) later."""
    low, high = MIN_INPUT_SIZE, field_bounds("image_size")[1]  # a real size: never 0 (which means "native")
    size = payload["image_size"]
    if not _is_int(size) or not low <= size <= high:
        return f"image_size {_brief(size)} is not a whole number of pixels from {low} to {high}"
    names = payload["class_names"]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, str) for c in names):
        return "class_names is not a list of class names"
    for key in ("mean", "std"):
        if not _is_number(payload[key]) or not math.isfinite(payload[key]):
            return f"{key} {_brief(payload[key])} is not a finite number"
    if not 1e-3 <= payload["std"] <= 10 or not -10 <= payload["mean"] <= 10:
        return (f"mean {_brief(payload['mean'])} / std {_brief(payload['std'])} cannot normalise tiles (expected a "
                "mean within ±10 and a std from 0.001 to 10)")
    in_chans, temperature = payload.get("in_chans", 1), payload.get("temperature")
    if not (_is_int(in_chans) and in_chans == 1):
        return f"in_chans {_brief(in_chans)}: models here read one-channel tiles"
    if temperature is not None and not _is_number(temperature):
        return f"temperature {_brief(temperature)} is not a number"
    if payload.get("epoch") is not None and not _is_int(payload["epoch"]):
        return f"epoch {_brief(payload['epoch'])} is not a whole number"
    for key in ("config", "metrics"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            return f"{key} is not a dictionary"
    state = payload["state_dict"]
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return "state_dict is not a dictionary of named weight tensors"
    broken = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if broken:
        return f"the weight {broken} holds NaN or infinite values"
    return _train_state_problem(payload.get("train_state"))


@dataclass
class TrainState:
    """What a resumable checkpoint (last.pt) keeps to continue training: written by the engine after every
    epoch (`to_dict`, under the payload's `train_state`), checked when the file is read, read back on resume."""

    optimizer: dict
    scheduler: dict
    epoch: int  # the last finished epoch (0-based)
    best_score: float
    best_epoch: int | None
    bad_epochs: int
    step: int
    rng: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in TRAIN_STATE_FIELDS}

    @classmethod
    def of(cls, payload: dict[str, Any], path: Path) -> TrainState:
        """The train state of a checkpoint read by `read_checkpoint` (which checked it); CheckpointError when the
        checkpoint has none (a best.pt, a shipped model)."""
        state = payload.get("train_state")
        if state is None:
            raise CheckpointError(f"{path.name} holds no training state to resume from")
        return cls(**{f: state[f] for f in TRAIN_STATE_FIELDS})


#: TrainState's fields and the type each must have in a file (what `read_checkpoint` checks).
TRAIN_STATE_FIELDS = {"optimizer": dict, "scheduler": dict, "epoch": int, "best_score": (int, float),
                      "best_epoch": (int, type(None)), "bad_epochs": int, "step": int, "rng": torch.Tensor}


def _train_state_problem(state: Any) -> str | None:
    if state is None:
        return None
    if not isinstance(state, dict):
        return "train_state is not a dictionary"
    for key, kind in TRAIN_STATE_FIELDS.items():
        value = state.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"train_state lacks a valid {key}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: Which engine runs forward passes (core.settings.ENGINES): its verified ONNX twin when there is one (auto), only
#: the twin (onnx: refused without one), or torch. Training, Grad-CAM, bf16 and GPU runs are torch's whatever it says.


def load_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu",
                    expect_classes: list[str] | None = None, engine: str = "auto", twin: Any = None) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights (default: the shipped model), with its ONNX
    twin for forward passes when `engine` allows one (`attach_twin`; `twin`: that twin already loaded)."""
    path = Path(path) if path else DEFAULT_CHECKPOINT
    loaded = model_from_payload(read_checkpoint(path), path, device, expect_classes)
    attach_twin(loaded, engine, twin)
    return loaded


def attach_twin(loaded: LoadedModel, engine: str = "auto", twin: Any = None) -> None:
    """Serve `loaded`'s forward passes from its ONNX twin (`core.onnx_model`) when `engine` is auto or onnx and a
    twin of exactly this checkpoint loads and fits; say which engine serves and why in `loaded.engine_note`.
    `twin`: the `load_twin` of this checkpoint already held (the app's cache), so that one session serves both.
    engine=onnx without a usable twin is a CheckpointError; auto falls back to torch."""
    from core.onnx_model import OnnxError, load_twin, twin_path

    if engine not in ENGINES:
        raise CheckpointError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        loaded.engine_note = "torch (asked for)"
        return
    if loaded.device.type != "cpu" or loaded.path is None:
        why = "torch: the model runs on the GPU" if loaded.device.type != "cpu" else "torch: a model held in memory"
        if engine == "onnx":
            raise CheckpointError(f"engine onnx: {why.removeprefix('torch: ')}; its twin serves CPU runs only")
        loaded.engine_note = why
        return
    try:
        model = twin if twin is not None else load_twin(loaded.path, loaded.class_names)
        if model.path.resolve() != twin_path(loaded.path).resolve():  # load_twin checked that file's digest
            raise OnnxError(f"{model.path.name} is not the twin of {loaded.path.name}")
        if model.class_names != loaded.class_names:
            raise CheckpointError(f"{model.path.name} predicts other classes than {loaded.path.name}")
        if (model.image_size, model.mean, model.std) != (loaded.image_size, loaded.mean, loaded.std):
            raise OnnxError(f"{model.path.name} does not feed like {loaded.path.name}")
    except (OnnxError, CheckpointError) as exc:
        if engine == "onnx":
            raise CheckpointError(f"engine onnx: {exc}") from None
        loaded.engine_note = f"torch: {exc}"
        return
    loaded.onnx = model
    loaded.engine_note = model.engine_note


def model_from_payload(payload: dict[str, Any], path: Path, device: str | torch.device = "cpu",
                       expect_classes: list[str] | None = None) -> LoadedModel:
    """`load_checkpoint` for a payload already read (by `read_checkpoint`) from `path`."""
    classes = list(payload["class_names"])
    expected = list(expect_classes or CLASS_NAMES)
    if classes != expected:
        raise CheckpointError(f"{path.name} predicts classes {classes}, not the expected {expected}")
    model = build_model(payload["arch"], num_classes=len(classes))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path.name}: its weights do not fit a {payload['arch']} ({first_line(exc)})") from exc
    # channels-last: faster CPU inference with the same fp32 numerics (bench/bench_eval.py's NCHW variant)
    model.eval().to(device=device, memory_format=torch.channels_last)
    return LoadedModel(model=model, arch=payload["arch"], class_names=classes, image_size=int(payload["image_size"]),
                       mean=float(payload["mean"]), std=float(payload["std"]), temperature=_temperature(payload),
                       config=dict(payload.get("config") or {}), metrics=dict(payload.get("metrics") or {}),
                       path=path, epoch=payload.get("epoch"), splits=_splits(payload.get("splits")),
                       ood=_ood(payload.get("ood")))


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, read without building its model (no timm import, no weights loaded)."""

    arch: str
    image_size: int
    epoch: int | None
    temperature: float
    metrics: dict


def checkpoint_info(path: str | Path | None = None) -> CheckpointInfo:
    """The Home page's view of a checkpoint (default: the shipped model), validated as `load_checkpoint` does."""
    payload = read_checkpoint(Path(path) if path else DEFAULT_CHECKPOINT)
    return CheckpointInfo(arch=payload["arch"], image_size=int(payload["image_size"]), epoch=payload.get("epoch"),
                          temperature=_temperature(payload), metrics=dict(payload.get("metrics") or {}))


def _temperature(payload: dict[str, Any]) -> float:
    """The calibration temperature; 1.0 (uncalibrated) when absent or unusable."""
    temperature = float(payload.get("temperature") or 1.0)
    return temperature if math.isfinite(temperature) and temperature > 0 else 1.0


def _ood(value: Any) -> FeatureDensity | None:
    """The stored out-of-distribution reference, or None when there is none or it is unusable: the model still
    classifies, the app then says it has no typicality to show."""
    if value is None:
        return None
    try:
        return FeatureDensity.from_dict(value)
    except OODError:
        return None


def _splits(value: Any) -> dict:
    """The recorded split manifest, kept only if it has the expected shape (lists of file names)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, dict) and isinstance(v.get("files"), list)
            and all(isinstance(f, str) for f in v["files"])}


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
