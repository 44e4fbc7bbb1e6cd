"""Classify image files: one tile, or every window of a larger image (a class map).

    python -m core.predict [--checkpoint PATH] FILE_OR_FOLDER [...] [--top-k 3] [--csv OUT]
                           [--cam gradcam --out DIR] [--stride 227]

A file the out-of-distribution check flags (`core.ood.judge`: unlike any HiRISE tile by its pixels, or unusual
by its features) gets a line saying why; the CSV has its `typicality`, `unusual` and `unusual_reason`.

Exit status: 0 when every file was classified, 1 when some could not be read (they are listed
and skipped), 2 for a usage error (no checkpoint, no image found).
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from core.calibration import softmax as probabilities
from core.cliargs import add_engine_argument
from core.errors import CheckpointError
from core.imageio import IMAGE_SUFFIXES, TILE_SIZE, ImageError, decode_gray, to_tile
from core.onnx_model import OnnxModel
from core.ood import Verdict, judge, judge_windows
from core.progress import ProgressCallback
from core.settings import DEFAULT_CHECKPOINT, DEFAULT_TTA
from core.tiling import ClassMap, cut_windows, render_class_map

if TYPE_CHECKING:
    from core.checkpoint import LoadedModel

#: What answers: a checkpoint's model (core.inference runs it: its twin or torch), or its ONNX twin alone (no
#: torch import at all: the Explain page's first answer).
Served = Union["LoadedModel", OnnxModel]

RESIZE_LIMIT = 1.5  # images up to 1.5x a tile (per side) are resized to one tile; larger ones are tiled


@dataclass
class Prediction:
    """What the model says about one image (probabilities are calibrated)."""

    name: str
    label: str  # the predicted class
    index: int
    confidence: float
    probabilities: dict[str, float]  # every class, in class order
    top_k: list[tuple[str, float]]
    tile: np.ndarray  # the 227x227 uint8 tile classified (for a class map: the window surest of `label`)
    image_shape: tuple[int, int]  # (H, W) of the decoded image
    notes: list[str] = field(default_factory=list)
    class_map: ClassMap | None = None  # for images larger than a tile
    #: share of validation tiles more typical than this image (`core.ood`): near 1, unlike anything the model
    #: knows; None when the checkpoint has no reference. For a large image, the median over its windows.
    typicality: float | None = None
    #: the out-of-distribution verdict (`core.ood.judge`): flagged, why, and the sentence for the reader
    ood: Verdict | None = None
    tta: bool = False  # probabilities from the mean logits of the 8 flips and 90-degree turns
    #: with `tta`, for a tile: (8, C) each view's own calibrated probabilities (`core.inference.VIEW_NAMES`' order)
    view_probabilities: np.ndarray | None = None

    def row(self) -> dict:
        """A flat dict for CSV and tables."""
        out = {"file": self.name, "predicted": self.label, "confidence": round(self.confidence, 4),
               "top_k": "; ".join(f"{c} {p:.3f}" for c, p in self.top_k),
               "windows": "x".join(map(str, self.class_map.grid_shape)) if self.class_map else "",
               "typicality": "" if self.typicality is None else round(self.typicality, 4),
               "unusual": "" if self.ood is None else ("yes" if self.ood.flagged else "no"),
               "unusual_reason": "" if self.ood is None else self.ood.reason,
               "tta": "8 views" if self.tta else "as sent", "notes": "; ".join(self.notes)}
        out.update({f"p_{c}": round(p, 5) for c, p in self.probabilities.items()})
        return out


def predict_bytes(loaded: Served, data: bytes, name: str, top_k: int = 3, *, stride: int = TILE_SIZE,
                  batch_size: int = 32, on_progress: ProgressCallback | None = None, tta: bool = False) -> Prediction:
    """Decode `data` (any common image format; ImageError says why not) and classify it."""
    gray, notes = decode_gray(data, name)
    return predict_array(loaded, gray, name, top_k, notes=notes, stride=stride, batch_size=batch_size,
                         on_progress=on_progress, tta=tta)


def predict_array(loaded: Served, gray: np.ndarray, name: str = "image", top_k: int = 3, *,
                  notes: Sequence[str] = (), stride: int = TILE_SIZE, batch_size: int = 32,
                  on_progress: ProgressCallback | None = None, tta: bool = False) -> Prediction:
    """Classify an (H, W) uint8 image: resized to one tile when close to its size, else window by window.

    For a large image the probabilities are the mean over its windows (what the image holds on
    average) and the class map has each window's own prediction. With `tta`, each tile's or window's
    probabilities come from the mean logits of its 8 flips and 90-degree turns (a tile keeps each view's own).
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 image, got {gray.shape} {gray.dtype}")
    notes = list(notes)
    h, w = gray.shape
    class_map = None
    view_probs = None
    if max(h, w) <= RESIZE_LIMIT * TILE_SIZE:
        tile, more = to_tile(gray, TILE_SIZE)
        if more and max(h, w) < TILE_SIZE / RESIZE_LIMIT:
            more = [f"{more[0]} (upscaled a lot: fine detail is interpolated, treat with care)"]
        notes += more
        if tta:
            probs, typical, views = proba_views_typicality(loaded, tile[None])
            view_probs = views[:, 0]
        else:
            probs, typical = proba_and_typicality(loaded, tile[None])
        probs = probs[0]
        verdict = judge(tile, None if typical is None else float(typical[0]))
    else:
        class_map, window_probs, tiles, typical = classify_windows(loaded, gray, stride, batch_size, on_progress,
                                                                   tta=tta)
        rows, cols = class_map.grid_shape
        notes.append(f"{w}x{h} image: classified as {rows}x{cols} windows of {TILE_SIZE}px (stride {stride}); "
                     "probabilities are the mean over windows")
        if min(h, w) < TILE_SIZE:
            notes.append(f"the short side was padded by reflection to {TILE_SIZE}px")
        probs = window_probs.mean(axis=0)
        tile = tiles[int(window_probs[:, int(probs.argmax())].argmax())]
        verdict = judge_windows(tiles, typical)
    if not np.isfinite(probs).all():
        raise ValueError("the model's output is not a number (NaN or infinite): its weights or normalisation are "
                         "damaged; use another checkpoint")
    names = list(loaded.class_names)
    order = np.argsort(-probs, kind="stable")
    k = max(1, min(int(top_k), len(names)))
    best = int(order[0])
    return Prediction(name=name, label=names[best], index=best, confidence=float(probs[best]),
                      probabilities={c: float(p) for c, p in zip(names, probs, strict=True)},
                      top_k=[(names[i], float(probs[i])) for i in order[:k]], tile=tile, image_shape=(h, w),
                      notes=notes, class_map=class_map,
                      typicality=None if typical is None else float(np.median(typical)), ood=verdict, tta=tta,
                      view_probabilities=view_probs)


def proba_and_typicality(loaded: Served, tiles: np.ndarray, batch_size: int = 32,
                          on_progress: ProgressCallback | None = None, show_progress: bool = False,
                          tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities and, when the checkpoint has an out-of-distribution reference, each tile's
    typicality: both from one forward pass (with `tta`, the mean of the 8 flips' and turns' logits, and the
    typicality of the tile as sent: 8 passes)."""
    if tta:
        probs, typical, _ = proba_views_typicality(loaded, tiles, batch_size, on_progress, show_progress)
        return probs, typical
    features, logits = features_logits(loaded, tiles, batch_size, False, on_progress,
                                       show_progress or on_progress is not None)
    typical = loaded.ood.typicality(features) if loaded.ood is not None else None
    return probabilities(logits, loaded.temperature), typical


def proba_views_typicality(loaded: Served, tiles: np.ndarray, batch_size: int = 32,
                           on_progress: ProgressCallback | None = None, show_progress: bool = False
                           ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """TTA: (N, C) calibrated probabilities of the mean logits over the 8 flips and turns, (N,) typicality of each
    tile as sent (None without a reference), and (8, N, C) each view's own calibrated probabilities."""
    features, logits = features_logits(loaded, tiles, batch_size, True, on_progress,
                                       show_progress or on_progress is not None)
    typical = loaded.ood.typicality(features) if loaded.ood is not None else None
    return (probabilities(logits.mean(0), loaded.temperature), typical,
            probabilities(logits.reshape(-1, logits.shape[-1]), loaded.temperature).reshape(logits.shape))


def features_logits(loaded: Served, tiles: np.ndarray, batch_size: int, views: bool,
                    on_progress: ProgressCallback | None, show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Features of each tile as sent and its logits ((8, N, C) with `views`): from the twin alone without
    importing torch, or through core.inference (the model's twin at its own input size, else torch)."""
    if isinstance(loaded, OnnxModel):
        return loaded.features_logits(tiles, batch_size, views, on_progress, show_progress)
    from core.inference import predict_features, predict_views

    run = predict_views if views else predict_features
    return run(loaded, tiles, batch_size=batch_size, on_progress=on_progress, show_progress=show_progress)


def classify_windows(loaded: Served, gray: np.ndarray, stride: int = TILE_SIZE, batch_size: int = 32,
                     on_progress: ProgressCallback | None = None, tta: bool = False
                     ) -> tuple[ClassMap, np.ndarray, np.ndarray, np.ndarray | None]:
    """Every TILE_SIZE window of `gray` -> (class map, (N, C) probabilities, (N, 227, 227) windows, (N,)
    typicality or None)."""
    tiles, boxes, _ = cut_windows(gray, TILE_SIZE, stride)
    probs, typical = proba_and_typicality(loaded, tiles, batch_size, on_progress, show_progress=True, tta=tta)
    probs = probs.astype(np.float32)
    rows, cols = boxes.shape[:2]
    grid = probs.reshape(rows, cols, -1)
    class_map = ClassMap(classes=grid.argmax(-1), confidence=grid.max(-1), probabilities=grid, boxes=boxes,
                         window=TILE_SIZE, stride=stride, image_shape=gray.shape, class_names=list(loaded.class_names))
    return class_map, probs, tiles, typical


def find_images(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files named, and the images directly inside folders named (sorted); plus problems found."""
    files, problems = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{p}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _save_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def load_served(checkpoint: str | Path | None, engine: str, needs_torch: bool = False) -> Served:
    """What answers for the command line: the checkpoint's verified twin alone when the engine allows it and
    nothing needs torch (no torch import: an answer in well under a second), else the checkpoint loaded with torch
    (with its twin for forward passes when the engine allows one). CheckpointError says what is wrong."""
    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if engine != "torch" and not needs_torch:
        from core.onnx_model import OnnxError, load_twin

        try:
            return load_twin(path)
        except OnnxError:
            pass  # load_checkpoint says why the twin cannot serve (auto), or refuses (onnx)
    from core.checkpoint import load_checkpoint

    return load_checkpoint(path, engine=engine)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", metavar="FILE", help="image files, or folders of images")
    parser.add_argument("--checkpoint", help=f"checkpoint file (default: {DEFAULT_CHECKPOINT})")
    add_engine_argument(parser)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--csv", metavar="OUT", help="write one row per classified file to this CSV")
    parser.add_argument("--cam", metavar="METHOD", help="write a CAM overlay PNG per file to --out: gradcam, or "
                        "another of core.explain's methods (a wrong name lists them); torch loads for it")
    parser.add_argument("--out", metavar="DIR", help="folder for CAM overlays and class maps of large images")
    parser.add_argument("--stride", type=int, default=TILE_SIZE, help="window stride for images larger than a tile")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=DEFAULT_TTA,
                        help="average the 8 flips and 90-degree turns of each tile (8x the compute; default: "
                             f"{'on' if DEFAULT_TTA else 'off'}, as the registry of defaults decided for the default "
                             "model)")
    args = parser.parse_args(argv)
    if args.cam:
        from core.explain import CAM_METHODS, explain  # only the --cam path pays for importing torch and grad-cam

        if args.cam not in CAM_METHODS:
            parser.error(f"argument --cam: invalid choice: {args.cam!r} (choose from {', '.join(CAM_METHODS)})")
        if not args.out:
            parser.error("--cam needs --out DIR")
    if args.stride < 1 or args.top_k < 1:
        parser.error("--stride and --top-k must be at least 1")
    try:
        loaded = load_served(args.checkpoint, args.engine, needs_torch=bool(args.cam))
    except CheckpointError as exc:
        hint = "" if args.checkpoint else " (train a model first, or pass --checkpoint PATH)"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    files, problems = find_images(args.files)
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    if not files:
        print("error: no image to classify", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    rows, failed = [], len(problems)
    for path in files:
        try:
            gray, notes = decode_gray(path.read_bytes(), path.name)
        except (ImageError, OSError) as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            pred = predict_array(loaded, gray, path.name, args.top_k, notes=notes, stride=args.stride, tta=args.tta)
        except ValueError as exc:  # e.g. a stride so small the image has too many windows
            print(f"skipped: {path.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        top = " | ".join(f"{c} {p:.3f}" for c, p in pred.top_k)
        notes = f"  ({'; '.join(pred.notes)})" if pred.notes else ""
        print(f"{path.name}: {pred.label}  [{top}]{notes}")
        if pred.ood is not None and pred.ood.flagged:
            print(f"  unusual input: {pred.ood.reason}")
        if pred.class_map is not None:
            print(f"  windows per class: {', '.join(f'{c} {n}' for c, n in pred.class_map.counts().items())}")
        try:
            if out and pred.class_map is not None:
                _save_png(out / f"{path.stem}-classmap.png", render_class_map(gray, pred.class_map))
            if args.cam:
                exp = explain(loaded, pred.tile, args.cam, target=pred.index)
                _save_png(out / f"{path.stem}-{args.cam}.png", exp.overlay)
        except OSError as exc:
            print(f"error: cannot write to {out}: {exc}", file=sys.stderr)
            return 2
        rows.append(pred.row())
    if args.csv and rows:
        try:
            _write_csv(Path(args.csv), rows)
        except OSError as exc:
            print(f"error: cannot write {args.csv}: {exc}", file=sys.stderr)
            return 2
    if out:
        print(f"images written to {out}")
    print(f"engine: {loaded.engine_note}")  # last: one line per image above, as before
    if failed:
        print(f"{failed} file(s) skipped, {len(rows)} classified", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
