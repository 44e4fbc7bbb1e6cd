"""Self-describing checkpoints: weights plus everything needed to use them, loaded safely."""
from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .classes import CLASS_NAMES
from .models import ARCHITECTURES, build_model
from .preprocess import to_model_input
from .settings import DEFAULT_CHECKPOINT

FORMAT = "hirise-studio-checkpoint/1"


class CheckpointError(ValueError):
    """A file that cannot be used as a model; the message says why."""


@dataclass
class LoadedModel:
    """A ready-to-use model (eval mode, float32) and what it needs to be fed."""

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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, tiles: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, H, W) or (N, 1, H, W) uint8 tiles -> model input on the model's device."""
        t = torch.as_tensor(np.asarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
        if t.dim() == 2:
            t = t[None]
        if t.dim() == 3:
            t = t[:, None]
        return to_model_input(t.to(self.device), self.mean, self.std, self.image_size)

    @torch.inference_mode()
    def predict_proba(self, tiles: torch.Tensor | np.ndarray, calibrated: bool = True) -> np.ndarray:
        logits = self.model(self.preprocess(tiles)).float()
        if calibrated:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1).cpu().numpy()


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


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically (a crash mid-write never leaves half a checkpoint behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate the dict, with `weights_only=True` (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError) as exc:
        detail = str(exc).splitlines()[0][:200]
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
    return payload


def load_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu",
                    expect_classes: list[str] | None = None) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights (default: the shipped model)."""
    path = Path(path) if path else DEFAULT_CHECKPOINT
    return model_from_payload(read_checkpoint(path), path, device, expect_classes)


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
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path.name}: its weights do not fit a {payload['arch']} ({first})") from exc
    temperature = float(payload.get("temperature") or 1.0)
    if not math.isfinite(temperature) or temperature <= 0:
        temperature = 1.0
    # channels-last: faster CPU inference with the same fp32 numerics (bench/bench_eval.py's NCHW variant)
    model.eval().to(device=device, memory_format=torch.channels_last)
    return LoadedModel(model=model, arch=payload["arch"], class_names=classes, image_size=int(payload["image_size"]),
                       mean=float(payload["mean"]), std=float(payload["std"]), temperature=temperature,
                       config=dict(payload.get("config") or {}), metrics=dict(payload.get("metrics") or {}),
                       path=path, epoch=payload.get("epoch"), splits=_splits(payload.get("splits")))


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
