"""Single-tile latency on CPU: prediction and every CAM method, against the bare forward pass.

    python bench/bench_inference.py [--checkpoint PATH] [--reps 50] [--cam-reps 20] [--threads N]

The baseline is `model(x)` on an already preprocessed (1, 1, 227, 227) tensor under
`torch.inference_mode()`: what no prediction can beat. `predict_bytes` adds JPEG decoding,
preprocessing and calibration; the CAMs add their backward pass or perturbation passes.
Goals on a 2-core machine: prediction p50 < 15 ms, Grad-CAM p50 < 60 ms, for a resnet18 at 227 px. A checkpoint with
an ONNX twin (issue 30) predicts on ONNX Runtime, and the same call on torch is timed beside it (goal: < 5 ms).
A resnet18 with random weights at --image-size (227) is used unless --checkpoint is given
(`--checkpoint default` for the shipped one): latency does not depend on the weights' values.
Run it on an idle machine: with another process busy on the same cores, torch's threads wait on
each other and every figure inflates (try --threads 1).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.checkpoint import LoadedModel, load_checkpoint
from core.classes import CLASS_NAMES
from core.cliargs import at_least
from core.explain import CAM_METHODS, PERTURBATION_METHODS, explain
from core.inference import preprocess
from core.models import build_model, default_cam_layer, get_layer
from core.predict import predict_bytes
from core.settings import DEFAULT_CHECKPOINT


def timed(fn: Callable[[], object], reps: int, warmup: int = 3) -> tuple[float, float]:
    """(p50, p95) wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    p50, p95 = np.percentile(np.asarray(times) * 1000, [50, 95])
    return float(p50), float(p95)


def model_under_test(path: str | None, image_size: int) -> LoadedModel:
    if path:
        return load_checkpoint(DEFAULT_CHECKPOINT if path == "default" else path)
    model = build_model("resnet18", num_classes=len(CLASS_NAMES)).eval()
    return LoadedModel(model=model, arch="resnet18", class_names=list(CLASS_NAMES), image_size=image_size,
                       mean=0.4, std=0.2)


def sample_jpeg(seed: int = 0) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:227, :227]
    img = rng.normal(100, 12, (227, 227)) + 110 * np.exp(-((yy - 90) ** 2 + (xx - 130) ** 2) / 400.0)
    tile = np.clip(img, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="JPEG", quality=92)
    return buf.getvalue(), tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a checkpoint file, or 'default' for the shipped one "
                        "(default: resnet18 with random weights)")
    parser.add_argument("--image-size", type=at_least(32), default=227, help="input size of the random resnet18")
    parser.add_argument("--reps", type=at_least(1), default=50)
    parser.add_argument("--cam-reps", type=at_least(1), default=20)
    parser.add_argument("--slow-reps", type=at_least(1), default=2, help=f"repetitions for {', '.join(PERTURBATION_METHODS)}")
    parser.add_argument("--threads", type=at_least(1), help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-cams", action="store_true", help="prediction only (the engines), no CAM method")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = model_under_test(args.checkpoint, args.image_size)
    data, tile = sample_jpeg()
    print(f"{loaded.arch} at {loaded.image_size}px ({loaded.path or 'random weights'}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")

    x = preprocess(loaded, tile[None])
    with torch.inference_mode():
        base = timed(lambda: loaded.model(x), args.reps)
    rows = [("model(x) baseline", base)]
    rows.append(("predict_bytes (decode+preprocess+forward)", timed(lambda: predict_bytes(loaded, data, "t.jpg"),
                                                                    args.reps)))
    rows.append(("predict_bytes with TTA (8 flips and turns)", timed(
        lambda: predict_bytes(loaded, data, "t.jpg", tta=True), args.reps)))
    if loaded.onnx is not None:  # issue 30: the same call on each engine, in this run
        torch_only = load_checkpoint(loaded.path, engine="torch")
        rows.append(("  engine: ONNX twin forward alone", timed(lambda: loaded.onnx.forward(x.numpy()), args.reps)))
        rows.append(("  engine: predict_bytes on torch (frozen trace)",
                     timed(lambda: predict_bytes(torch_only, data, "t.jpg"), args.reps)))
    # other layouts and compilers (not used by core, except channels-last, which load_checkpoint applies)
    with torch.inference_mode():
        cl_model = build_model(loaded.arch, len(CLASS_NAMES)).eval().to(memory_format=torch.channels_last)
        cl_model.load_state_dict(loaded.model.state_dict())
        x_cl = x.contiguous(memory_format=torch.channels_last)
        rows.append(("  variant: channels_last model and input", timed(lambda: cl_model(x_cl), args.reps)))
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(loaded.model, x)))
        rows.append(("  variant: TorchScript freeze (conv-bn folded)", timed(lambda: frozen(x), args.reps)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rows.append(("  variant: bfloat16 autocast (changes numerics)", timed(lambda: loaded.model(x), args.reps)))

    for method in () if args.no_cams else CAM_METHODS:
        reps = args.slow_reps if method in PERTURBATION_METHODS else args.cam_reps
        warmup = 1 if method in PERTURBATION_METHODS else 3
        rows.append((f"explain {method}", timed(lambda m=method: explain(loaded, tile, m, faithfulness=False),
                                                reps, warmup)))
        if method == "gradcam":
            rows.append(("explain gradcam + faithfulness", timed(lambda: explain(loaded, tile, "gradcam"),
                                                                 args.cam_reps)))
            rows.append(("  plain pytorch-grad-cam GradCAM (full backward)", timed(lambda: _plain_gradcam(loaded, x),
                                                                                  args.cam_reps)))

    print(f"\n{'':<50}{'p50 ms':>9}{'p95 ms':>9}{'x base':>8}")
    for name, (p50, p95) in rows:
        print(f"{name:<50}{p50:>9.1f}{p95:>9.1f}{p50 / base[0]:>8.2f}")
    pred = dict(rows)["predict_bytes (decode+preprocess+forward)"][0]
    cam = dict(rows).get("explain gradcam", (float("nan"),))[0]
    tta = dict(rows)["predict_bytes with TTA (8 flips and turns)"][0]
    print(f"\nengine: {loaded.engine_note}")
    if loaded.onnx is not None:
        on_torch = dict(rows)["  engine: predict_bytes on torch (frozen trace)"][0]
        print(f"one tile on ONNX Runtime {pred:.1f} ms against torch {on_torch:.1f} ms ({on_torch / pred:.2f}x; "
              f"goal < 5 ms: {'met' if pred < 5 else 'missed'})")
    print(f"goals: prediction p50 {pred:.1f} ms (< 15: {'met' if pred < 15 else 'missed'}), "
          f"with TTA {tta:.1f} ms (< 60 for TTA to be the default: {'met' if tta < 60 else 'missed'}), "
          f"Grad-CAM p50 {cam:.1f} ms (< 60: {'met' if cam < 60 else 'missed'})")


def _plain_gradcam(loaded: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """The package's textbook usage, for comparison: backward runs through the whole network."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=loaded.model, target_layers=[get_layer(loaded.model, default_cam_layer(loaded.arch))]) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    loaded.model.zero_grad(set_to_none=True)
    return out


if __name__ == "__main__":
    main()
