"""The one inference path: tiles in, logits (or calibrated probabilities) out.

Per-epoch validation (`core.train`), evaluation (`core.evaluate`), prediction (`core.predict`) and explanation
(`core.explain`) all come here, so batching, test-time augmentation, bf16 autocast, channels-last, the frozen
CPU trace and the calibration temperature are each decided in one place. Nothing here imports scikit-learn:
the prediction path (the Explain page) must start fast.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from core.calibration import softmax
from core.dihedral import VIEWS
from core.models import get_layer, spec
from core.precision import autocast, bf16_native
from core.preprocess import to_model_input
from core.progress import ProgressCallback, Tiles, in_batches

if TYPE_CHECKING:
    from core.checkpoint import LoadedModel

Forward = Callable[[torch.Tensor], torch.Tensor]

#: The 8 flips and turns of a square image (core.dihedral.VIEWS' order), as functions of (B, C, H, W).
DIHEDRAL: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = tuple(
    (lambda t, k=k, flip=flip: torch.rot90(torch.flip(t, dims=(3,)) if flip else t, k, dims=(2, 3)))
    for flip, k in VIEWS)


def model_input(tiles: torch.Tensor | np.ndarray, mean: float, std: float, image_size: int,
                device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) uint8 tiles -> standardised model input on `device`."""
    t = torch.as_tensor(np.asarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
    if t.dim() == 2:
        t = t[None]
    if t.dim() == 3:
        t = t[:, None]
    x = to_model_input(t.to(device, non_blocking=True), mean, std, image_size)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def batched_logits(forward: Forward, tiles: Tiles, prepare: Callable[[np.ndarray | torch.Tensor], torch.Tensor],
                   num_classes: int, *, batch_size: int = 64, tta: bool = False,
                   amp: tuple[torch.device, bool] | None = None, on_progress: ProgressCallback | None = None,
                   show_progress: bool = True) -> np.ndarray:
    """(N, ...) uint8 tiles -> (N, C) float32 logits, `batch_size` tiles at a time.

    With `tta`, the logits are the mean over the 8 dihedral transforms: Mars has no "up", so every rotation
    and mirror of a tile is an equally valid view (8x the compute). `amp` = (device, enabled) runs the
    forward under bf16 autocast where that is native. Progress counts tiles (a tqdm bar, or `on_progress`;
    none at all without `show_progress`)."""
    if isinstance(tiles, list):
        tiles = np.asarray(tiles)
    out = np.empty((len(tiles), num_classes), dtype=np.float32)
    desc = "predicting" + (" (8x TTA)" if tta else "")
    for rows, batch in in_batches(tiles, batch_size, desc, on_progress, show_progress):
        x = prepare(batch)
        with autocast(*amp) if amp else contextlib.nullcontext():
            logits = torch.stack([forward(t(x)).float() for t in DIHEDRAL]).mean(0) if tta else forward(x).float()
        out[rows] = logits.cpu().numpy()
    return out


def probabilities(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Softmax of (N, C) logits divided by the calibration temperature (1.0: uncalibrated)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    return softmax(logits, temperature)


def calibrated_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`probabilities` for callers that stay in torch (pytorch-grad-cam's metric targets), over the last axis."""
    return torch.softmax(logits.float() / temperature, dim=-1)


# ---- a checkpoint's model ----------------------------------------------------------------------------

def bf16_suits(loaded: LoadedModel) -> bool:
    """Whether bf16 evaluation is offered for this model: some architectures change predictions under it."""
    return spec(loaded.arch).bf16_safe


def uses_bf16(loaded: LoadedModel, bf16: bool) -> bool:
    """Whether asking for `bf16` really runs this model in bf16 (the architecture allows it, the device has it)."""
    return bf16 and bf16_suits(loaded) and bf16_native(loaded.device)


def preprocess(loaded: LoadedModel, tiles: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) uint8 tiles -> `loaded`'s input, in its layout (channels-last) and device."""
    return model_input(tiles, loaded.mean, loaded.std, loaded.image_size, loaded.device)


class FeaturesAndLogits(nn.Module):
    """A classifier that also returns what its head reads (the penultimate features), from the same forward
    pass: prediction gets its out-of-distribution score (`core.ood`) and Explore its map at no extra cost."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, get_layer(model, head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        return torch.flatten(seen[0], 1), logits


#: Held while a model's own modules run outside training: a CAM call (`core.explain`) hooks or replaces layers for
#: its duration, and an eager forward or a trace of the same model from another app session must not run meanwhile
#: (its activations would land in the CAM, or its trace would record the CAM's hooks). A frozen trace needs no lock.
MODEL_LOCK = threading.RLock()

#: `LoadedModel._frozen` after `defer_trace`: one-tile calls run eagerly until `prepare_trace` (or a batch) makes it.
DEFERRED = "deferred"


def fast_forward(loaded: LoadedModel, features: bool = False) -> Callable[[torch.Tensor], torch.Tensor | tuple]:
    """The forward pass of prediction and evaluation for `loaded`: logits, or (features, logits) with `features`.

    On a CPU this runs the model's verified ONNX twin when it has one (`core.checkpoint.attach_twin`), else a
    frozen TorchScript trace of the model (BatchNorm folded into the convolutions): the
    same numbers within float rounding, about twice as fast for EfficientNet-Lite (`bench_inference`); the
    trace is made on the first call and kept on `loaded`, unless `defer_trace` asked for it later. Training and
    Grad-CAM use `loaded.model` itself, which they need hooks and gradients from; bf16 does too (a frozen trace
    does not follow autocast)."""
    eager = locked(FeaturesAndLogits(loaded.model, spec(loaded.arch).head).eval())

    def forward(x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = None
        if loaded.onnx is not None and x.device.type == "cpu" and x.shape[-1] == loaded.onnx.image_size:
            # its verified ONNX twin (`core.onnx_model`), made for the model's own input size; another size
            # (Explore's smaller maps) runs on torch
            f, logits = loaded.onnx.forward(x.float().contiguous().numpy())
            return (torch.from_numpy(f), torch.from_numpy(logits)) if features else torch.from_numpy(logits)
        if x.device.type == "cpu":
            if loaded._frozen is None or (loaded._frozen is DEFERRED and len(x) > 1):
                _make_trace(loaded, x)
            if loaded._frozen not in (False, DEFERRED):
                with contextlib.suppress(RuntimeError):  # a shape the trace cannot take: the eager model can
                    out = loaded._frozen(x)
        if out is None:
            out = eager(x)
        return out if features else out[1]
    return forward


def locked(module: nn.Module) -> Callable[[torch.Tensor], Any]:
    """`module`'s forward, one caller at a time: the app's sessions share one model, and a CAM in one of them
    hooks its layers (MODEL_LOCK). Every eager forward of a shared model goes through here."""
    def forward(x: torch.Tensor) -> Any:
        with MODEL_LOCK:
            return module(x)
    return forward


def defer_trace(loaded: LoadedModel) -> None:
    """Serve one-tile calls eagerly until `prepare_trace`: an app's first answer then costs no trace (seconds on a
    CPU, plus TorchScript's first optimising runs); a batch of tiles still makes the trace, which pays there."""
    if loaded._frozen is None:
        loaded._frozen = DEFERRED


def prepare_trace(loaded: LoadedModel) -> None:
    """Make the frozen trace now, on one tile of the model's input size, and run it twice so TorchScript's
    profiling runs are paid here rather than by the next predictions (no-op on a GPU or once made)."""
    if loaded.device.type != "cpu" or loaded._frozen not in (None, DEFERRED):
        return
    x = torch.zeros(1, 1, loaded.image_size, loaded.image_size).contiguous(memory_format=torch.channels_last)
    _make_trace(loaded, x)
    if loaded._frozen:
        with torch.inference_mode():
            for _ in range(2):
                loaded._frozen(x)


def _make_trace(loaded: LoadedModel, example: torch.Tensor) -> None:
    """Keep on `loaded` the frozen trace of its (features, logits) model made on `example` (False: untraceable)."""
    with MODEL_LOCK:
        loaded._frozen = frozen_trace(FeaturesAndLogits(loaded.model, spec(loaded.arch).head).eval(), example) or False


def frozen_trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule | None:
    """`model` traced on `example` and frozen for inference, if that works and gives the model's own outputs
    (a tensor or a tuple of tensors)."""
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about Python values taken as constants
            frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            got, want = frozen(example), model(example)
            got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
            same = all(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(got, want, strict=True))
    except Exception:
        return None
    return frozen if same else None


def predict_logits(loaded: LoadedModel, tiles: Tiles | Sequence[np.ndarray], batch_size: int = 64,
                   tta: bool = False, on_progress: ProgressCallback | None = None, bf16: bool = False,
                   show_progress: bool = True) -> np.ndarray:
    """(N, H, W) uint8 tiles -> (N, C) float32 logits of a checkpoint's model, uncalibrated.

    `tta`: see `batched_logits`. With `bf16`, the model runs under bf16 autocast where that is native and the
    architecture allows it (about 2x on this project's CPU; a few predictions in a thousand may flip, so
    reports say which precision made them)."""
    bf16 = bf16 and bf16_suits(loaded)
    forward = locked(loaded.model) if bf16 else fast_forward(loaded)
    return batched_logits(forward, tiles, lambda t: preprocess(loaded, t), len(loaded.class_names),
                          batch_size=batch_size, tta=tta, amp=(loaded.device, bf16), on_progress=on_progress,
                          show_progress=show_progress)


def predict_proba(loaded: LoadedModel, tiles: Tiles | np.ndarray, batch_size: int = 64,
                  on_progress: ProgressCallback | None = None, show_progress: bool = False,
                  calibrated: bool = True) -> np.ndarray:
    """(N, C) probabilities of a checkpoint's model, calibrated with its temperature unless told otherwise.

    Progress goes to `on_progress` when given, else to a tqdm bar with `show_progress` (off by default: for a
    tile or two a bar is only noise)."""
    logits = predict_logits(loaded, tiles, batch_size=batch_size, on_progress=on_progress,
                            show_progress=show_progress or on_progress is not None)
    return probabilities(logits, loaded.temperature if calibrated else 1.0)


@torch.inference_mode()
def predict_features(loaded: LoadedModel, tiles: Tiles | np.ndarray, batch_size: int = 64, size: int = 0,
                     on_progress: ProgressCallback | None = None, show_progress: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) penultimate features and (N, C) uncalibrated logits of a checkpoint's model, one pass per batch.

    `size` feeds the model `size` px inputs instead of its own (0): faster on a CPU, at a cost in what the
    features know (docs/explore.md)."""
    forward = fast_forward(loaded, features=True)
    px = size or loaded.image_size
    feats: np.ndarray | None = None
    logits = np.empty((len(tiles), len(loaded.class_names)), dtype=np.float32)
    for rows, batch in in_batches(tiles, batch_size, f"features at {px}px", on_progress, show_progress):
        f, out = forward(model_input(batch, loaded.mean, loaded.std, px, loaded.device))
        if feats is None:
            feats = np.empty((len(tiles), f.shape[1]), dtype=np.float32)
        feats[rows] = f.float().cpu().numpy()
        logits[rows] = out.float().cpu().numpy()
    return (feats if feats is not None else np.empty((0, 0), np.float32)), logits


@torch.inference_mode()
def predict_views(loaded: LoadedModel, tiles: Tiles | np.ndarray, batch_size: int = 64,
                  on_progress: ProgressCallback | None = None, show_progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features of each tile as sent, and (8, N, C) uncalibrated logits of its 8 flips and 90-degree turns
    (DIHEDRAL's order, the identity first): their mean is the TTA prediction, and the out-of-distribution check
    reads the features as sent, as its reference was fitted. 8 forward passes, no more."""
    forward = fast_forward(loaded, features=True)
    feats: np.ndarray | None = None
    logits = np.empty((len(DIHEDRAL), len(tiles), len(loaded.class_names)), dtype=np.float32)
    for rows, batch in in_batches(tiles, batch_size, "predicting (8 views)", on_progress, show_progress):
        x = model_input(batch, loaded.mean, loaded.std, loaded.image_size, loaded.device)
        for v, view in enumerate(DIHEDRAL):
            f, out = forward(view(x).contiguous())
            if v == 0:
                if feats is None:
                    feats = np.empty((len(tiles), f.shape[1]), dtype=np.float32)
                feats[rows] = f.float().cpu().numpy()
            logits[v, rows] = out.float().cpu().numpy()
    return (feats if feats is not None else np.empty((0, 0), np.float32)), logits


# ---- a model in training -----------------------------------------------------------------------------

def training_model_logits(model: nn.Module, tiles: torch.Tensor, num_classes: int, mean: float, std: float,
                          image_size: int, device: torch.device, batch_size: int, amp: bool,
                          channels_last: bool) -> np.ndarray:
    """Per-epoch validation logits of the model being trained (eval mode, eager: its weights change each epoch)."""
    model.eval()
    return batched_logits(model, tiles, lambda t: model_input(t, mean, std, image_size, device, channels_last),
                          num_classes, batch_size=batch_size, amp=(device, amp), show_progress=False)
