"""A checkpoint's ONNX twin, served by ONNX Runtime: the forward pass (features and logits in one run) without
torch, and the metadata that travels with it (classes, input size, normalisation, temperature, the
out-of-distribution reference, the digest of the checkpoint it was exported from).

Made by `python -m core.export CHECKPOINT` (verified against torch on real tiles before it is written); read here
with every check a file from outside deserves: missing, empty, truncated or random bytes, another model's (digest),
an opset this runtime cannot run. Each is one line (OnnxError); callers fall back to torch and say why."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.dihedral import VIEWS, view
from core.errors import CheckpointError
from core.progress import ProgressCallback, Tiles, in_batches

FORMAT = "hirise-studio-onnx/1"
SUFFIX = ".onnx"
MAX_ONNX_BYTES = 256 * 2**20  # no shipped twin comes near; a bigger file is not ours


class OnnxError(ValueError):
    """An ONNX file that cannot serve: one line saying why."""


def twin_path(checkpoint: Path) -> Path:
    """Where a checkpoint's twin lives: beside it, same name, `.onnx`."""
    return Path(checkpoint).with_suffix(SUFFIX)


@dataclass
class OnnxModel:
    """An ONNX Runtime session and what feeding it needs."""

    path: Path
    session: Any  # onnxruntime.InferenceSession
    class_names: list[str]
    image_size: int
    mean: float
    std: float
    temperature: float
    checkpoint_digest: str
    arch: str
    ood: Any = None  # core.ood.FeatureDensity, or None
    verified: dict | None = None  # the export's check against torch: tiles, agreement, largest probability difference

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features and (N, C) logits of a (N, 1, S, S) float32 batch, already normalised."""
        features, logits = self.session.run(["features", "logits"],
                                            {"input": np.ascontiguousarray(x, dtype=np.float32)})
        return features, logits

    def features_logits(self, tiles: Tiles, batch_size: int = 32, views: bool = False,
                        on_progress: ProgressCallback | None = None, show_progress: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features of each uint8 tile as sent, and its logits: (N, C), or with `views` (8, N, C) for its 8
        flips and turns (core.dihedral's order). What core.inference's predict_features and predict_views give,
        without torch: the Explain page's first answer comes before torch is imported."""
        n, c = len(tiles), len(self.class_names)
        feats: np.ndarray | None = None
        logits = np.empty(((len(VIEWS),) if views else ()) + (n, c), dtype=np.float32)
        desc = "predicting (8 views)" if views else "predicting"
        for rows, batch in in_batches(tiles, batch_size, desc, on_progress, show_progress):
            x = model_input(np.asarray(batch), self.mean, self.std, self.image_size)
            for v in range(len(VIEWS) if views else 1):
                f, out = self.forward(view(x, v) if v else x)
                if feats is None:
                    feats = np.empty((n, f.shape[1]), dtype=np.float32)
                if v == 0:
                    feats[rows] = f
                if views:
                    logits[v, rows] = out
                else:
                    logits[rows] = out
        return (feats if feats is not None else np.empty((0, 0), np.float32)), logits

    @property
    def engine_note(self) -> str:
        """Which engine serves, for the pages and CLIs: this twin, and how it was verified against torch."""
        check = self.verified or {}
        return (f"ONNX Runtime ({self.path.name}" + (f", verified on {check.get('tiles')} real tiles: "
                f"{check.get('agreement', 0):.1%} equal predictions" if check else "") + ")")


def model_input(tiles: np.ndarray, mean: float, std: float, image_size: int) -> np.ndarray:
    """(N, H, W) or (H, W) uint8 tiles -> (N, 1, S, S) float32, scaled to [0, 1], resized, standardised: what
    core.preprocess.to_model_input does, without torch. Resizing is PIL's bilinear filter on float images,
    antialiased when shrinking, which torch's `interpolate(..., antialias=True)` follows (tests/test_onnx.py holds
    the two paths to the same probabilities on real tiles)."""
    x = np.asarray(tiles, dtype=np.float32) / np.float32(255.0)
    if x.ndim == 2:
        x = x[None]
    if x.shape[-2:] != (image_size, image_size):
        x = np.stack([np.asarray(Image.fromarray(t).resize((image_size, image_size), Image.Resampling.BILINEAR))
                      for t in x])
    return ((x - np.float32(mean)) / np.float32(std))[:, None].astype(np.float32, copy=False)


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)  # the test workers' one thread each
    if threads:
        options.intra_op_num_threads = threads
    # no busy-waiting between runs: on a 2-core machine shared with a training job (or the other test worker),
    # spinning threads take the cores the others need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # its warnings are not the user's business
    return options


def load_onnx(path: Path, expect_digest: str | None = None, threads: int | None = None) -> OnnxModel:
    """The twin at `path`, checked: OnnxError naming what is wrong (and `expect_digest`: the checkpoint it must
    come from)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise OnnxError(f"{path.name}: no such ONNX file") from None
    if size == 0:
        raise OnnxError(f"{path.name} is empty (0 bytes): not an ONNX model")
    if size > MAX_ONNX_BYTES:
        raise OnnxError(f"{path.name} is {size / 2**20:,.0f} MiB, over the {MAX_ONNX_BYTES / 2**20:.0f} MiB a twin may be")
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxError("onnxruntime is not installed (pip install -r requirements.txt)") from None
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for truncated, random or unsupported files
        full = str(exc).strip()
        if "opset" in full.lower():
            raise OnnxError(f"{path.name}: an opset this ONNX Runtime ({ort.__version__}) cannot run; export it "
                            "again (python -m core.export)") from None
        text = full.splitlines()[0][:200] if full else type(exc).__name__
        raise OnnxError(f"{path.name}: not a readable ONNX model ({text})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("format") != FORMAT:
        raise OnnxError(f"{path.name}: not an ONNX twin made by this studio (python -m core.export makes one)")
    try:
        info = json.loads(meta["studio"])
        outputs = {o.name for o in session.get_outputs()}
        if {"features", "logits"} - outputs or [i.name for i in session.get_inputs()] != ["input"]:
            raise ValueError("its inputs and outputs are not input -> features, logits")
        model = OnnxModel(path, session, list(info["class_names"]), int(info["image_size"]), float(info["mean"]),
                          float(info["std"]), float(info["temperature"]), str(info["checkpoint_sha256"]),
                          str(info["arch"]), verified=info.get("verified"))
        if info.get("ood") is not None:
            from core.ood import FeatureDensity

            model.ood = FeatureDensity.from_dict(info["ood"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxError(f"{path.name}: its metadata is damaged ({exc})") from None
    if expect_digest is not None and model.checkpoint_digest != expect_digest:
        raise OnnxError(f"{path.name} was exported from another checkpoint (digest {model.checkpoint_digest[:12]}, "
                        f"not {expect_digest[:12]}): export it again (python -m core.export)")
    return model


def load_twin(checkpoint: Path, expect_classes: list[str] | None = None, threads: int | None = None) -> OnnxModel:
    """The verified twin of exactly this checkpoint file, for serving without torch: OnnxError when there is none
    or it is not this checkpoint's (its digest), CheckpointError when the checkpoint is missing or predicts
    other classes than `expect_classes` (default: the 8 classes), as load_checkpoint would say."""
    from core.classes import CLASS_NAMES
    from core.digest import file_digest

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    twin = twin_path(checkpoint)
    if not twin.is_file():
        raise OnnxError(f"{checkpoint.name} has no ONNX twin ({twin.name}; python -m core.export makes it)")
    model = load_onnx(twin, expect_digest=file_digest(checkpoint), threads=threads)
    expected = list(expect_classes or CLASS_NAMES)
    if model.class_names != expected:
        raise CheckpointError(f"{checkpoint.name} predicts classes {model.class_names}, not the expected {expected}")
    return model
