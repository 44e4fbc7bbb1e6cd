"""Cut an image larger than a tile (a HiRISE browse crop, a whole observation) into windows, and draw the class map
back on it. The one tiling path: the Explain page's class map and core.scan both cut their windows here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.classes import CLASS_COLORS
from core.imageio import TILE_SIZE

MAX_WINDOWS = 20_000  # ~1 GB of windows; a smaller stride on a huge image is refused, not swapped to death


@dataclass
class ClassMap:
    """The prediction of every window of a large image, as grids (rows, cols)."""

    classes: np.ndarray  # (rows, cols) int: predicted class of each window
    confidence: np.ndarray  # (rows, cols) float: its calibrated probability
    probabilities: np.ndarray  # (rows, cols, C) float
    boxes: np.ndarray  # (rows, cols, 4) int: x0, y0, x1, y1 of each window in image pixels
    window: int
    stride: int
    image_shape: tuple[int, int]  # (H, W) of the image the boxes refer to
    class_names: list[str]

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.classes.shape  # type: ignore[return-value]

    def counts(self) -> dict[str, int]:
        """Windows per predicted class (only classes that occur)."""
        n = np.bincount(self.classes.ravel(), minlength=len(self.class_names))
        return {c: int(k) for c, k in zip(self.class_names, n, strict=True) if k}



def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets along one side: every `stride`, plus one flush with the end so nothing is missed."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def count_starts(length: int, window: int, stride: int) -> int:
    """len(window_starts(length, window, stride)), by arithmetic: nothing is allocated, however large `length`."""
    if length <= window:
        return 1
    span = length - window
    return span // stride + 1 + (1 if span % stride else 0)


def count_windows(shape: tuple[int, int], window: int, stride: int) -> int:
    """How many windows `Windows` would cut from an image of `shape` (H, W), without cutting (or listing) any: the
    limits on the work an image may ask for are checked with it before anything is allocated."""
    h, w = shape
    return count_starts(h, window, stride) * count_starts(w, window, stride)


#: Pixels read from the source at a time by a batch of windows: a band of rows is read in pieces of at most this
#: many pixels (or one window, when a window is larger), so a row of large windows across a wide image is never
#: read as one band (8,192 rows x 100,000 columns would be 819 MB as 8-bit pixels alone).
BAND_PIXELS = 1 << 26


class Windows:
    """The square windows of one size over an image, on the `window_starts` grid, cut and resized to a tile only
    when a slice asks for them: a scan holds one batch of tiles at a time, never every window of an observation.

    `source` is an (H, W) uint8 array, or anything with `.shape` and `.read(x0, y0, x1, y1)` (a core.scan.raster
    Raster, which reads a JPEG 2000 or GeoTIFF a window at a time). A batch reads each band of rows it touches
    once and cuts its windows from it, so overlapping windows are decoded once, not once per window."""

    def __init__(self, source, size: int, stride: int):
        self.source, self.size, self.stride = source, size, stride
        h, w = source.shape
        self.rows, self.cols = window_starts(h, size, stride), window_starts(w, size, stride)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def boxes(self) -> np.ndarray:
        """(len, 4) int64: x0, y0, x1, y1 of every window, row by row (made when asked, never kept)."""
        return self._boxes(np.arange(len(self)))

    def _boxes(self, indices: np.ndarray) -> np.ndarray:
        r, c = np.divmod(indices, len(self.cols))
        x, y = np.asarray(self.cols, np.int64)[c], np.asarray(self.rows, np.int64)[r]
        return np.stack([x, y, x + self.size, y + self.size], axis=1).reshape(-1, 4)

    def _band(self, y0: int, x0: int, x1: int) -> np.ndarray:
        if isinstance(self.source, np.ndarray):
            return self.source[y0:y0 + self.size, x0:x1]
        return self.source.read(x0, y0, x1, y0 + self.size)

    def __getitem__(self, index: slice) -> np.ndarray:
        from PIL import Image

        which = range(len(self))[index]  # a range: nothing the size of the grid is made for a batch
        boxes = self._boxes(np.arange(which.start, which.stop, which.step, dtype=np.int64))
        out = np.empty((len(boxes), TILE_SIZE, TILE_SIZE), np.uint8)
        widest = max(BAND_PIXELS // self.size, self.size)  # columns of one read: a band of at most BAND_PIXELS
        for y0 in np.unique(boxes[:, 1]):
            here = np.flatnonzero(boxes[:, 1] == y0)
            here = here[np.argsort(boxes[here, 0], kind="stable")]
            while len(here):
                x0 = int(boxes[here[0], 0])
                take = max(1, int(np.searchsorted(boxes[here, 2], x0 + widest, side="right")))
                group, here = here[:take], here[take:]
                x1 = int(boxes[group, 2].max())
                band = self._band(int(y0), x0, x1)
                for i in group:
                    window = band[:, boxes[i, 0] - x0:boxes[i, 2] - x0]
                    out[i] = window if self.size == TILE_SIZE else np.asarray(
                        Image.fromarray(window).resize((TILE_SIZE, TILE_SIZE), Image.BILINEAR))
                del band
        return out


def cut_windows(gray: np.ndarray, window: int = TILE_SIZE, stride: int = TILE_SIZE
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(H, W) uint8 -> windows resized to tiles (rows*cols, 227, 227), boxes (rows, cols, 4), notes: the Explain
    page's class map, on the same `Windows` a scan uses.

    A side shorter than the window is padded by reflection (the model never sees a black border);
    boxes are clipped to the real image.
    """
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    h, w = gray.shape
    notes = []
    if h < window or w < window:
        gray = np.pad(gray, ((0, max(0, window - h)), (0, max(0, window - w))), mode="reflect"
                      if min(h, w) > 1 else "edge")
        notes.append(f"padded from {w}x{h} by reflection to fit {window}x{window} windows")
    count = count_windows(gray.shape, window, stride)  # counted before any window is listed
    if count > MAX_WINDOWS:
        raise ValueError(f"{w}x{h} at stride {stride} makes {count:,} windows, over the "
                         f"{MAX_WINDOWS:,} limit: use a larger stride")
    windows = Windows(gray, window, stride)
    boxes = windows.boxes.reshape(*windows.grid_shape, 4)
    boxes[..., 2], boxes[..., 3] = np.minimum(boxes[..., 2], w), np.minimum(boxes[..., 3], h)
    return windows[:], boxes, notes


def _grid_index(class_map: ClassMap) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) index arrays, broadcastable to (H, W), of the window nearest each pixel."""
    h, w = class_map.image_shape
    half = class_map.window / 2.0
    rows = _nearest(np.arange(h) + 0.5, class_map.boxes[:, 0, 1] + half)
    cols = _nearest(np.arange(w) + 0.5, class_map.boxes[0, :, 0] + half)
    return rows[:, None], cols[None, :]


def _nearest(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    if len(centres) == 1:
        return np.zeros(len(positions), dtype=np.int64)
    return np.searchsorted((centres[1:] + centres[:-1]) / 2.0, positions)


#: Rows of the image blended at a time: bounds render_class_map's temporaries (a few MB) for any width.
RENDER_ROWS = 256


def render_class_map(gray: np.ndarray, class_map: ClassMap, alpha: float = 0.45,
                     skip: tuple[str, ...] = ("other",), min_confidence: float = 0.0) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grayscale image with each window's class colour blended on top.

    Classes in `skip` (by default `other`) and windows below `min_confidence` stay uncoloured,
    so the landmarks stand out. Memory: the uint8 result plus a band of RENDER_ROWS rows; every blend
    of a grey level with a class colour is looked up in a (classes + 1, 256, 3) table made once.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = class_map.image_shape
    n = len(class_map.class_names)
    drawn = np.array([c not in skip for c in class_map.class_names])[class_map.classes]
    if min_confidence > 0:
        drawn &= class_map.confidence >= min_confidence
    window_colour = np.where(drawn, class_map.classes, n)  # per window: its class, or n for "leave grey"
    rows, cols = _grid_index(class_map)
    out = np.empty((h, w, 3), dtype=np.uint8)
    lut = _blend_table(class_map.class_names, alpha)
    for y in range(0, h, RENDER_ROWS):
        band = slice(y, min(h, y + RENDER_ROWS))
        out[band] = lut[window_colour[rows[band], cols], gray[band, :w]]
    return out


def _blend_table(class_names: list[str], alpha: float) -> np.ndarray:
    """(C + 1, 256, 3) uint8: grey level g blended with class c's colour (row C: g unchanged), rounded as
    a float32 blend of the pixel itself would be."""
    palette = np.array([CLASS_COLORS.get(c, (255, 255, 255)) for c in class_names], dtype=np.float32)
    grey = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
    blended = (1 - alpha) * grey[None] + alpha * palette[:, None, :]
    table = np.concatenate([blended, grey[None]])
    return np.clip(table + 0.5, 0, 255).astype(np.uint8)


def legend_strip(class_names: list[str], width: int, skip: tuple[str, ...] = ("other",)) -> np.ndarray:
    """RGB uint8 (h, width, 3): a swatch and the name of each drawn class, wrapped to `width`; the key that goes
    under a class map (a map without one leaves the reader guessing which colour is which)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    entries = [n for n in class_names if n not in skip]
    swatch, gap, line = 14, 18, 22
    x, y, places = 6, 4, []
    for name in entries:
        item = swatch + 6 + int(font.getlength(name))
        if x + item > width - 6 and x > 6:
            x, y = 6, y + line
        places.append((x, y, name))
        x += item + gap
    canvas = Image.new("RGB", (max(width, 1), y + line + 2), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for x, y, name in places:
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=CLASS_COLORS.get(name, (255, 255, 255)),
                       outline=(0, 0, 0))
        draw.text((x + swatch + 6, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
