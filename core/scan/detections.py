"""What a scan of an observation found, and the files a GIS opens: detections.csv, detections.geojson, a GeoTIFF of
every window's class and probability per window size, and an overlay PNG. One writer per format, each written
whole or not at all (core.atomic)."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.atomic import atomic_path
from core.scan.georef import Georef

#: Windows of one class overlapping by at least this much (intersection over the smaller window) are one detection:
#: neighbours at half a window apart overlap by 0.5 side by side and 0.25 diagonally, and they see one landmark.
MERGE_OVERLAP = 0.25


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


@dataclass
class WindowGrid:
    """Every window of one size over an image: rows x cols of windows starting at `rows[r]`, `cols[c]`."""

    size: int
    rows: list[int]
    cols: list[int]
    probabilities: np.ndarray  # (rows * cols, C) calibrated; NaN rows: windows not classified (a lost worker)
    typicality: np.ndarray | None  # (rows * cols,)


@dataclass
class ImageScan:
    """One observation's scan: its size, georeferencing, every window's prediction and the detections."""

    name: str
    width: int
    height: int
    georef: Georef | None
    class_names: list[str]
    grids: list[WindowGrid]
    detections: list[Detection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Windows that were never classified (a worker lost for good): said, never silently dropped."""
        return sum(int(np.isnan(g.probabilities[:, 0]).sum()) for g in self.grids)


def detections_of(scan: ImageScan, threshold: float) -> list[Detection]:
    """The windows whose likeliest class is not `other` at a calibrated probability of at least `threshold`,
    merged per class."""
    names = np.asarray(scan.class_names)
    found = []
    for grid in scan.grids:
        probs = np.nan_to_num(grid.probabilities, nan=0.0)
        best = probs.argmax(1)
        sure = probs[np.arange(len(best)), best]
        keep = np.flatnonzero((sure >= threshold) & (names[best] != "other"))
        for i in keep:
            r, c = divmod(int(i), len(grid.cols))
            x0, y0 = grid.cols[c], grid.rows[r]
            found.append(Detection(str(names[best[i]]), float(sure[i]),
                                   None if grid.typicality is None else float(grid.typicality[i]),
                                   x0, y0, x0 + grid.size, y0 + grid.size, 1))
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


COLUMNS = ("image", "label", "probability", "typicality", "x0", "y0", "x1", "y1", "centre_x", "centre_y",
           "map_x", "map_y", "lon", "lat", "windows")


def rows_of(scans: list[ImageScan]) -> list[dict]:
    """One record per detection, with map coordinates (metres) and east longitude/latitude (degrees) of its
    centre when its image is georeferenced (None otherwise): the table the CSV, the GeoJSON and the page show."""
    rows = []
    for scan in scans:
        if not scan.detections:
            continue
        cx = np.array([d.centre[0] for d in scan.detections])
        cy = np.array([d.centre[1] for d in scan.detections])
        if scan.georef is not None:
            mx, my = scan.georef.map_xy(cx, cy)
            lon, lat = scan.georef.lonlat(mx, my)
        else:
            mx = my = lon = lat = [None] * len(cx)
        for d, *where in zip(scan.detections, mx, my, lon, lat, strict=True):
            rows.append({"image": scan.name, **{k: v for k, v in asdict(d).items() if k != "windows"},
                         "centre_x": d.centre[0], "centre_y": d.centre[1],
                         **dict(zip(("map_x", "map_y", "lon", "lat"),
                                    (None if v is None else float(v) for v in where), strict=True)),
                         "windows": d.windows})
    return rows


def _fmt(key: str, value: object) -> str:
    if value is None:
        return ""
    if key == "probability":
        return f"{value:.4f}"
    if key == "typicality":
        return f"{value:.3f}"
    if key in ("lon", "lat"):
        return f"{value:.6f}"
    if key in ("centre_x", "centre_y", "map_x", "map_y"):
        return f"{value:.1f}"
    return str(value)


#: A cell starting with one of these is a formula to a spreadsheet (CSV injection: an image named '=HYPERLINK(...)');
#: such a text cell is written with a leading apostrophe, which spreadsheets show as text and `csv_text` removes.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(text: str) -> str:
    """A text cell as written to detections.csv: a leading apostrophe before anything a spreadsheet would run."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_text(cell: str) -> str:
    """The text a detections.csv cell holds (the inverse of `csv_cell`)."""
    return cell[1:] if cell.startswith("'") else cell


TEXT_COLUMNS = ("image", "label")


def write_csv(path: Path, scans: list[ImageScan]) -> None:
    """detections.csv: one row per detection of every image scanned; the text cells (the image's name, the class)
    escaped against CSV injection."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for row in rows_of(scans):
            out.writerow([csv_cell(_fmt(k, row[k])) if k in TEXT_COLUMNS else _fmt(k, row[k]) for k in COLUMNS])


def write_geojson(path: Path, scans: list[ImageScan]) -> None:
    """detections.geojson: one feature per detection; its geometry is the window's outline in east longitude and
    latitude on Mars when the image is georeferenced, and null when it is not (its pixels are in the properties).
    The map projection of each image is named in `images`, a foreign member GIS readers ignore."""
    features = []
    for scan, row in ((s, row) for s in scans for row in rows_of([s])):  # two images may share a name
        geometry = None
        if scan.georef is not None:
            xs = np.array([row["x0"], row["x1"], row["x1"], row["x0"], row["x0"]], float)
            ys = np.array([row["y0"], row["y0"], row["y1"], row["y1"], row["y0"]], float)
            lon, lat = scan.georef.lonlat(*scan.georef.map_xy(xs, ys))
            geometry = {"type": "Polygon", "coordinates": [[[round(float(a), 7), round(float(b), 7)]
                                                             for a, b in zip(lon, lat, strict=True)]]}
        features.append({"type": "Feature", "geometry": geometry,
                         "properties": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                        for k, v in row.items()}})
    doc = {"type": "FeatureCollection", "features": features,
           "images": {s.name: {"width": s.width, "height": s.height,
                               "crs": None if s.georef is None else s.georef.crs.to_wkt(),
                               "georeferenced_by": None if s.georef is None else s.georef.source}
                      for s in scans}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def write_window_grid(path: Path, scan: ImageScan, grid: WindowGrid) -> None:
    """A GeoTIFF of one window size: a pixel per window, band 1 its likeliest class (the index into the class
    names in the tags; 255: not classified), band 2 that class's calibrated probability (NaN: not classified).
    Pixel (r, c) sits at the centre of the window starting at (cols[c], rows[r]); the last row and column hold the
    windows flush with the image's edge. Georeferenced when the image is."""
    import rasterio
    from rasterio.transform import Affine

    h, w = len(grid.rows), len(grid.cols)
    probs = grid.probabilities
    missing = np.isnan(probs[:, 0])
    best = np.where(missing, 255, np.nan_to_num(probs, nan=0).argmax(1)).astype(np.float32)
    sure = np.where(missing, np.nan, np.nan_to_num(probs, nan=0).max(1)).astype(np.float32)
    step_x = grid.cols[1] - grid.cols[0] if w > 1 else grid.size
    step_y = grid.rows[1] - grid.rows[0] if h > 1 else grid.size
    # window centres are at start + size/2; each pixel spans one step around its centre
    pixels = Affine(step_x, 0, grid.size / 2 - step_x / 2, 0, step_y, grid.size / 2 - step_y / 2)
    georef = scan.georef
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 2, "dtype": "float32", "nodata": None,
               "compress": "deflate",
               "transform": (georef.transform if georef else Affine.identity()) @ pixels,
               "crs": georef.crs if georef else None}
    with atomic_path(path) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(tmp, "w", **profile) as dst:
        dst.write(best.reshape(h, w), 1)
        dst.write(sure.reshape(h, w), 2)
        dst.set_band_description(1, "class")
        dst.set_band_description(2, "probability")
        dst.update_tags(window_px=grid.size, image=scan.name,
                        **{f"class_{i}": n for i, n in enumerate(scan.class_names)})


def overlay_image(preview: np.ndarray, scan: ImageScan, scale: float) -> np.ndarray:
    """RGB uint8: the image (a `preview` at `scale` of its pixels) with each detection's window outlined in its
    class colour and labelled with its class and probability."""
    from PIL import Image, ImageDraw, ImageFont

    from core.classes import CLASS_COLORS

    img = Image.fromarray(preview).convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, min(16, int(14 * max(scale, 0.6)))))
    for d in reversed(scan.detections):  # the surest drawn last, on top
        box = [d.x0 * scale, d.y0 * scale, d.x1 * scale - 1, d.y1 * scale - 1]
        colour = CLASS_COLORS.get(d.label, (255, 255, 255))
        draw.rectangle(box, outline=colour, width=max(2, int(3 * scale)))
        text = f"{d.label} {d.probability:.3f}"  # as the table shows it (0.996 at .2f read 1.00: certainty)
        draw.rectangle([box[0], box[1], box[0] + font.getlength(text) + 4, box[1] + font.size + 4], fill=colour)
        draw.text((box[0] + 2, box[1] + 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
