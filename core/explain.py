"""Class activation maps (pytorch-grad-cam) for one tile: where the model looked, and whether it mattered.

Each call builds the CAM object in a `with` block, so its hooks are removed when it returns; the
model's own state (train/eval mode, requires_grad flags, .grad tensors, layers swapped by
AblationCAM) is restored afterwards, so explaining never changes a model, frozen or in training.
"""
from __future__ import annotations

import contextlib
import functools
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import tqdm
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    ablation_cam,
    score_cam,
)
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction
from threadpoolctl import threadpool_limits
from torch import nn

from core.checkpoint import LoadedModel
from core.inference import MODEL_LOCK, calibrated_softmax, predict_proba, preprocess, probabilities
from core.models import default_cam_layer, get_layer


class SignedEigenCAM(EigenCAM):
    """EigenCAM with the package's sign correction: an SVD component's sign is arbitrary, and without
    it about half the maps highlight the background (flipped so the larger-magnitude side is positive)."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(activations)


#: The methods that run the model (or the layers above the target) once per channel of the layer: slow; each with
#: what it runs once per channel.
PERTURBATION_METHODS = {"scorecam": "the whole model", "ablationcam": "the layers above the target"}
_CAM_CLASSES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "xgradcam": XGradCAM,
                "layercam": LayerCAM, "eigencam": SignedEigenCAM, "scorecam": ScoreCAM, "ablationcam": AblationCAM}
#: The methods offered, in the order the Explain page lists them (the registry above is the one list).
CAM_METHODS = tuple(_CAM_CLASSES)
#: ScoreCAM and AblationCAM run one forward pass per channel of the layer (512 for a ResNet's
#: layer4), in batches of this size: CPU memory stays modest and the cores stay busy.
PERTURBATION_BATCH = 32
TOP_FRACTION = 0.2  # the share of the tile kept / removed by the faithfulness check



@dataclass
class Explanation:
    """A CAM for one tile and what the model made of it."""

    heatmap: np.ndarray  # (H, W) float32 in [0, 1] at the tile's resolution
    overlay: np.ndarray  # (H, W, 3) uint8 RGB: the tile with the heatmap (jet colormap) blended on top
    target: int  # the explained class
    target_name: str
    probabilities: np.ndarray  # (C,) calibrated probabilities of the whole tile
    confidence: float  # probability of the target class on the whole tile
    keep_top_confidence: float | None  # ... when only the hottest TOP_FRACTION of the tile is kept
    remove_top_confidence: float | None  # ... when that region is blanked out (to the data mean)
    method: str
    layer: str
    seconds: float

    @property
    def faithfulness(self) -> float | None:
        """keep-top minus remove-top confidence: high when the highlighted region really drives the class."""
        if self.keep_top_confidence is None or self.remove_top_confidence is None:
            return None
        return self.keep_top_confidence - self.remove_top_confidence


def overlay_heatmap(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W) uint8 tile + (h, w) heatmap in [0, 1] -> (H, W, 3) uint8 RGB with a jet colormap on top.

    `alpha` is the heatmap's weight (0: only the tile, 1: only the heatmap). The heatmap is resized
    to the tile when their sizes differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = np.asarray(gray)
    heatmap = _resize(np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0), gray.shape)
    rgb = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    return show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=1.0 - alpha)


def colour_scale(width: int = 256, height: int = 12) -> np.ndarray:
    """The overlay's colour bar, drawn by the same function as the overlay so the two cannot disagree:
    (height, width, 3) uint8, 0 on the left, 1 on the right."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return show_cam_on_image(np.zeros((height, width, 3), np.float32), ramp, use_rgb=True, image_weight=0.0)


def explain(loaded: LoadedModel, tile: np.ndarray, method: str = "gradcam", target: int | None = None,
            aug_smooth: bool = False, eigen_smooth: bool = False, layer: str | None = None,
            alpha: float = 0.5, faithfulness: bool = True) -> Explanation:
    """The `method` CAM of `tile` (H, W uint8) for class `target` (None: the predicted class).

    `layer` is a dotted module name (default: the last conv block, `models.default_cam_layer`).
    `faithfulness` adds one forward pass of two images (the keep/remove-top confidences).
    """
    if method not in _CAM_CLASSES:
        raise ValueError(f"unknown CAM method {method!r} (expected one of {', '.join(CAM_METHODS)})")
    tile = np.asarray(tile)
    if tile.ndim != 2 or tile.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 tile, got {tile.shape} {tile.dtype}")
    n_classes = len(loaded.class_names)
    if target is not None and not 0 <= int(target) < n_classes:
        raise ValueError(f"target {target} is not a class index (0..{n_classes - 1})")
    layer = layer or default_cam_layer(loaded.arch)
    model = loaded.model
    get_layer(model, layer)  # a bad name fails here, before the wait
    start = time.perf_counter()
    x = preprocess(loaded, tile[None])
    with MODEL_LOCK, _ModelState(model):  # a CAM call changes model state for its duration
        # The layer is looked up only now: AblationCAM swaps it out of the model while it runs, so a lookup
        # made while another session's AblationCAM held the lock would find its stand-in, hook a layer the
        # model no longer calls, and put the stand-in back for good when "restoring" it.
        target_layer = get_layer(model, layer)
        probs = None
        if target is None and aug_smooth:  # smoothing runs several views: settle the class on the plain one
            probs = predict_proba(loaded, tile[None])[0]
            target = int(probs.argmax())
        cam, logits = _run_cam(model, target_layer, method, x, target, aug_smooth, eigen_smooth, layer)
        if probs is None:
            probs = probabilities(logits[None], loaded.temperature)[0]
        target = int(probs.argmax()) if target is None else int(target)
        keep = remove = None
        if faithfulness:
            keep, remove = _keep_remove_confidence(loaded, x, cam, target)
    heatmap = _resize(cam, tile.shape)
    return Explanation(heatmap=heatmap, overlay=overlay_heatmap(tile, heatmap, alpha), target=target,
                       target_name=loaded.class_names[target], probabilities=probs,
                       confidence=float(probs[target]), keep_top_confidence=keep, remove_top_confidence=remove,
                       method=method, layer=layer, seconds=time.perf_counter() - start)


def _run_cam(model: nn.Module, target_layer: nn.Module, method: str, x: torch.Tensor, target: int | None,
             aug_smooth: bool, eigen_smooth: bool, layer_name: str) -> tuple[np.ndarray, torch.Tensor]:
    """(S, S) CAM in [0, 1] at the model input's size, and the logits of the last forward pass.

    With `target` None the package explains the argmax of that forward pass (no extra pass needed).
    """
    kwargs, cam_model, cam_input = {}, model, x
    if method == "ablationcam":  # a fresh AblationLayer each call: the package's default one is shared
        kwargs = {"batch_size": PERTURBATION_BATCH, "ablation_layer": AblationLayer()}
        split = None if aug_smooth else _split_at(model, layer_name, x)
        if split is not None:
            cam_model, cam_input = split
    # The CAM only needs the gradient at the layer's output. Making that output a leaf that requires
    # grad works for frozen layers and stops backward there (nothing below it is differentiated).
    # The eigen methods run a small SVD: multi-threaded BLAS turns that from 3 ms into a second
    # when the cores are busy (say, with a training run), so it gets one thread.
    blas = threadpool_limits(1, "blas") if method == "eigencam" or eigen_smooth else contextlib.nullcontext()
    bars = _quiet_package_bars() if method in PERTURBATION_METHODS else contextlib.nullcontext()
    leaf = target_layer.register_forward_hook(_as_grad_leaf, prepend=True)
    grayscale = None
    try:
        with blas, bars, torch.enable_grad(), _CAM_CLASSES[method](model=cam_model, target_layers=[target_layer],
                                                             **kwargs) as cam:
            if method == "scorecam":
                cam.batch_size = PERTURBATION_BATCH
            try:
                targets = None if target is None else [ClassifierOutputTarget(target)]
                grayscale = cam(input_tensor=cam_input, targets=targets, aug_smooth=aug_smooth,
                                eigen_smooth=eigen_smooth)
            except ValueError as exc:
                raise ValueError(f"layer {layer_name!r} cannot be used for a CAM ({exc}); pick a "
                                 "convolutional block such as the default") from exc
            logits = cam.outputs[0].detach().float().cpu()
            cam.outputs = None  # drop the autograd graph now rather than when the object is collected
    finally:
        leaf.remove()
        if method == "ablationcam" and get_layer(model, layer_name) is not target_layer:
            replace_layer_recursive(model, get_layer(model, layer_name), target_layer)  # after an error midway
    if grayscale is None:  # the package's __exit__ swallows IndexError (after printing it)
        raise RuntimeError(f"{method} failed on layer {layer_name!r}")
    return np.nan_to_num(grayscale[0].astype(np.float32)), logits


@torch.no_grad()
def _split_at(model: nn.Module, layer_name: str, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor] | None:
    """(the model from `layer_name` on, the input of that layer for x), or None where that can't be done.

    AblationCAM swaps the layer for one that replays its cached output with channels zeroed, then
    runs the whole model once per channel: for a ResNet's layer4, 512 passes through layers that
    don't matter. Running only the rest of the model gives the same weights for ~1/500 of the cost.
    It needs a model that calls its top-level children in order (ResNet, SimpleCNN; a Flatten goes
    before the final Linear); the result is checked against the model's own output.
    """
    children = dict(model.named_children())
    if layer_name not in children:
        return None
    names = list(children)
    i = names.index(layer_name)
    rest = [children[n] for n in names[i:]]
    if isinstance(rest[-1], nn.Linear):
        rest.insert(-1, nn.Flatten(1))
    head, tail = nn.Sequential(*(children[n] for n in names[:i])), nn.Sequential(*rest)
    features = head(x)
    try:
        same = torch.allclose(tail(features), model(x), rtol=1e-4, atol=1e-4)
    except (RuntimeError, TypeError, ValueError):  # the children don't chain: not a sequential model
        return None
    return (tail, features) if same else None


def _as_grad_leaf(module: nn.Module, inputs, output):
    if isinstance(output, torch.Tensor) and torch.is_grad_enabled():
        return output.detach().requires_grad_(True)
    return None


class _ModelState:
    """Save and restore what a CAM call touches: train/eval mode, requires_grad flags and .grad tensors."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> _ModelState:
        self.training = {m: m.training for m in self.model.modules()}
        self.params = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        for p, _, _ in self.params:
            p.requires_grad_(False)  # no parameter gradients are needed: backward stops at the layer
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        for p, requires_grad, grad in self.params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, training in self.training.items():
            m.training = training


@contextlib.contextmanager
def _quiet_package_bars() -> Iterator[None]:
    """Silence the tqdm bar ScoreCAM and AblationCAM draw on every call, for the length of one call: it would
    clutter the CLI and the app's logs (they report progress themselves). tqdm itself is left alone."""
    modules = (score_cam, ablation_cam)
    saved = [m.tqdm for m in modules]
    quiet = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    for m in modules:
        m.tqdm = quiet
    try:
        yield
    finally:
        for m, original in zip(modules, saved, strict=True):
            m.tqdm = original


class CalibratedSoftmaxTarget:
    """The model's calibrated probability of one class (softmax(logits / T)), as a pytorch-grad-cam target."""

    def __init__(self, category: int, temperature: float):
        self.category, self.temperature = category, temperature

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return calibrated_softmax(model_output, self.temperature)[..., self.category]


def _zero_imputer(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Blank the pixels `keep` is 0 at: 0 in model-input space is the training data's mean brightness."""
    return x * keep.to(x.dtype)


#: pytorch-grad-cam's perturbation metrics, with the mean brightness as the imputation: the target's
#: confidence after removing the hottest TOP_FRACTION of the CAM (most relevant first), and after keeping
#: only it (least relevant removed first).
_REMOVE_TOP = PerturbationConfidenceMetric(RemoveMostRelevantFirst(100 * (1 - TOP_FRACTION), _zero_imputer))
_KEEP_TOP = PerturbationConfidenceMetric(RemoveLeastRelevantFirst(100 * TOP_FRACTION, _zero_imputer))


@torch.inference_mode()
def _keep_remove_confidence(loaded: LoadedModel, x: torch.Tensor, cam: np.ndarray, target: int
                            ) -> tuple[float | None, float | None]:
    """Target confidence with only the top TOP_FRACTION of the CAM kept, and with it removed.

    Removed pixels are set to the training data's mean brightness. A flat CAM has no top region: (None, None).
    """
    if cam.max() <= cam.min():
        return None, None
    cams = _resize(cam, x.shape[-2:])[None]
    targets = [CalibratedSoftmaxTarget(target, loaded.temperature)]
    keep, remove = (float(metric(x, cams, targets, loaded.model, return_diff=False)[0])
                    for metric in (_KEEP_TOP, _REMOVE_TOP))
    return keep, remove


def _resize(heatmap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if heatmap.shape == tuple(shape[:2]):
        return heatmap.astype(np.float32)
    out = cv2.resize(heatmap.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)
