"""Find the landmarks in a whole image (a HiRISE browse image, or any large grayscale picture): windows at
several sizes, each resized to a tile and classified through the one inference path, and the windows of one
class that overlap merged into detections.

Why several sizes: the data set's tiles are square crops around a landmark plus a 30 px margin, resized to
227x227 from browse images where landmarks span roughly 60 to 600 pixels; a window much larger than a landmark
dilutes it into `other`, a much smaller one cuts it. Windows step by half their size (`stride`), so every
landmark lies well inside some window of a fitting size.

`python -m core.scan IMAGE [IMAGE ...] --out DIR [--checkpoint F] [--sizes 96,192,384] [--threshold 0.9]`
writes `detections.csv` (one row per detection: image, class, probability, typicality, window in pixels) and
says how many of each class it found.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import CheckpointError, LoadedModel
from .cliargs import number_in
from .imageio import TILE_SIZE, ImageError, decode_gray
from .progress import ProgressCallback
from .tiling import window_starts

#: Window sides in image pixels: about the span of the data set's landmarks in browse images, a factor of two
#: apart. 96 px windows catch the smallest craters; 384 px ones the large dune fields.
DEFAULT_SIZES = (96, 192, 384)
MIN_WINDOW = 32
#: The JPL/PDS Imaging Atlas indexes tiles with a posterior of at least 0.9; the same default here.
DEFAULT_THRESHOLD = 0.9
#: Windows of one class overlapping by at least this much (intersection over the smaller window) are one detection:
#: neighbours at half a window apart overlap by 0.5 side by side and 0.25 diagonally, and they see one landmark.
MERGE_OVERLAP = 0.25
MAX_WINDOWS = 200_000  # a bound on the work one image may ask for; a finer scan is refused with the count


@dataclass(frozen=True)
class Detection:
    """One landmark: the surest window of a group of overlapping windows of one class."""

    label: str
    probability: float  # calibrated
    typicality: float | None  # the out-of-distribution check's share (None: the checkpoint has no reference)
    x0: int
    y0: int
    x1: int
    y1: int
    windows: int  # how many windows of this class it merges

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


class Windows:
    """The windows of one size over an image, cut and resized to a tile only when a batch asks for them (a
    scan holds one batch of resized windows at a time, not the image's every window)."""

    def __init__(self, gray: np.ndarray, size: int, stride: int):
        h, w = gray.shape
        self.gray, self.size = gray, size
        ys = window_starts(h, size, stride)  # the Explain page's class map cuts its windows on the same grid
        xs = window_starts(w, size, stride)
        self.boxes = np.array([(x, y, x + size, y + size) for y in ys for x in xs], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: slice) -> np.ndarray:
        out = [np.asarray(Image.fromarray(self.gray[y0:y1, x0:x1]).resize((TILE_SIZE, TILE_SIZE), Image.BILINEAR))
               for x0, y0, x1, y1 in self.boxes[index]]
        return np.stack(out) if out else np.zeros((0, TILE_SIZE, TILE_SIZE), np.uint8)


def check_sizes(sizes: Sequence[int], shape: tuple[int, int]) -> list[str]:
    """Problems with `sizes` for an image of `shape` (H, W), one sentence each; [] when every size fits."""
    h, w = shape
    problems = []
    for s in sizes:
        if s < MIN_WINDOW:
            problems.append(f"window {s} px is below the smallest, {MIN_WINDOW} px")
        elif s > min(h, w):
            problems.append(f"window {s} px is larger than the {w}x{h} image")
    return problems


def scan_image(loaded: LoadedModel, gray: np.ndarray, sizes: Sequence[int] = DEFAULT_SIZES,
               threshold: float = DEFAULT_THRESHOLD, batch_size: int = 32,
               on_progress: ProgressCallback | None = None) -> list[Detection]:
    """The landmarks in `gray` (H, W uint8): every window of every size classified, those whose class is not
    `other` with a probability of at least `threshold` kept, overlapping ones of a class merged."""
    from .predict import proba_and_typicality

    problems = check_sizes(sizes, gray.shape)
    if problems:
        raise ValueError("; ".join(problems))
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not in (0, 1]")
    grids = [Windows(gray, s, max(1, s // 2)) for s in sizes]
    total = sum(len(g) for g in grids)
    if total > MAX_WINDOWS:
        raise ValueError(f"{gray.shape[1]}x{gray.shape[0]} at window sizes {', '.join(map(str, sizes))} makes "
                         f"{total:,} windows, over the {MAX_WINDOWS:,} limit: use larger windows")
    names = list(loaded.class_names)
    found: list[Detection] = []
    for grid in grids:
        probs, typical = proba_and_typicality(loaded, grid, batch_size, on_progress,
                                               show_progress=on_progress is None)
        best = probs.argmax(1)
        keep = np.flatnonzero((probs[np.arange(len(best)), best] >= threshold) & (np.asarray(names)[best] != "other"))
        for i in keep:
            x0, y0, x1, y1 = (int(v) for v in grid.boxes[i])
            found.append(Detection(names[best[i]], float(probs[i, best[i]]),
                                   None if typical is None else float(typical[i]), x0, y0, x1, y1, 1))
    return merge(found)


def merge(candidates: list[Detection], overlap: float = MERGE_OVERLAP) -> list[Detection]:
    """Non-maximum suppression per class: the surest window stands for every window of its class that overlaps
    it by at least `overlap` (of the smaller window's area); surest first."""
    out: list[Detection] = []
    for label in sorted({d.label for d in candidates}):
        todo = sorted((d for d in candidates if d.label == label), key=lambda d: -d.probability)
        while todo:
            head, rest = todo[0], todo[1:]
            close = [d for d in rest if _overlap(head, d) >= overlap]
            out.append(Detection(**{**asdict(head), "windows": 1 + len(close)}))
            todo = [d for d in rest if _overlap(head, d) < overlap]
    return sorted(out, key=lambda d: -d.probability)


def _overlap(a: Detection, b: Detection) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a.x1 - a.x0) * (a.y1 - a.y0), (b.x1 - b.x0) * (b.y1 - b.y0))
    return w * h / smaller


COLUMNS = ("image", "label", "probability", "typicality", "x0", "y0", "x1", "y1", "centre_x", "centre_y", "windows")


def write_detections(path: Path, found: dict[str, list[Detection]]) -> None:
    """detections.csv: one row per detection of every image scanned, written whole or not at all."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for image, detections in found.items():
            for d in detections:
                cx, cy = d.centre
                out.writerow([image, d.label, f"{d.probability:.4f}",
                              "" if d.typicality is None else f"{d.typicality:.3f}", d.x0, d.y0, d.x1, d.y1,
                              f"{cx:.1f}", f"{cy:.1f}", d.windows])


def _sizes(text: str) -> tuple[int, ...]:
    parse = number_in(int, MIN_WINDOW, None)
    try:
        return tuple(int(parse(part)) for part in text.split(",") if part.strip())
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"window sizes: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(prog="python -m core.scan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, TIFF, ...)")
    parser.add_argument("--out", type=Path, required=True, help="folder for detections.csv (created if needed)")
    parser.add_argument("--checkpoint", help="model (default: the shipped one)")
    parser.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES,
                        help=f"window sides in pixels, comma-separated (default: {','.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--threshold", type=number_in(float, 0.0, 1.0), default=DEFAULT_THRESHOLD,
                        help=f"smallest calibrated probability kept (default: {DEFAULT_THRESHOLD})")
    args = parser.parse_args(argv)
    if not args.sizes:
        parser.error("--sizes: give at least one window size")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        loaded = load_checkpoint(args.checkpoint) if args.checkpoint else load_checkpoint()
        found: dict[str, list[Detection]] = {}
        for path in args.images:
            t0 = time.perf_counter()
            gray, notes = decode_gray(path.read_bytes(), path.name)
            found[path.name] = scan_image(loaded, gray, args.sizes, args.threshold)
            counts = {}
            for d in found[path.name]:
                counts[d.label] = counts.get(d.label, 0) + 1
            print(f"{path.name}: {gray.shape[1]}x{gray.shape[0]}, {len(found[path.name])} detections "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'}) at probability >= "
                  f"{args.threshold} in {time.perf_counter() - t0:.0f} s", flush=True)
        write_detections(args.out / "detections.csv", found)
    except (CheckpointError, ImageError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"-> {args.out / 'detections.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
