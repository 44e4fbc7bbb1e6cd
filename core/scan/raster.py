"""Read a whole observation a window at a time: HiRISE JPEG 2000 RDRs at a resolution level, GeoTIFFs and PDS
images through GDAL (rasterio), and plain pictures (a browse JPEG, a PNG) through the one image decoder.

Why rasterio (GDAL) and not glymur: one library reads JPEG 2000 at any resolution level and in windows (its
OpenJPEG driver exposes the levels as overviews and decodes only the code-blocks a window touches), GeoTIFF,
PDS .IMG, and the georeferencing they carry; glymur reads JPEG 2000 alone. GDAL's block cache is bounded here
(`CACHE_MB`), so memory stays flat however large the observation.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from core.imageio import ImageError, decode_gray
from core.scan.georef import Georef, LabelError, find_label, from_dataset, from_pds_label

#: Files read in windows through GDAL; anything else is decoded whole by core.imageio (and held to its limits).
GDAL_SUFFIXES = (".jp2", ".j2k", ".jpx", ".tif", ".tiff", ".img")
CACHE_MB = 256  # GDAL's block cache: enough for a row of JPEG 2000 tiles, a bound on the memory a scan holds
#: Pixels read and converted to 8-bit at a time: a window is read in blocks of rows, so 16-bit or colour data
#: never exists whole in its own type or as floats (a 8,192 px window of 16-bit data is 128 MiB as read, 512 MiB
#: as float64; in blocks, 8 and 32 MiB).
READ_PIXELS = 1 << 22
#: GDAL decodes in this process's one thread: with more, a damaged JPEG 2000 tile is logged but read as garbage.
GDAL_OPTIONS = {"GDAL_NUM_THREADS": "1", "GDAL_CACHEMAX": CACHE_MB, "GDAL_PAM_ENABLED": "NO",
                "CPL_LOG": "/dev/null"}


class RasterError(ImageError):
    """An observation that cannot be read (or not at the level asked for); the message says why in one line."""


class Raster:
    """An 8-bit grayscale image read a window at a time, with its georeferencing when it has one."""

    name: str
    width: int
    height: int
    georef: Georef | None = None
    notes: list[str]

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The pixels [y0:y1, x0:x1] as (y1 - y0, x1 - x0) uint8."""
        raise NotImplementedError

    def preview(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """The whole image reduced to at most `max_side` pixels a side (for an overview), and its scale."""
        scale = min(1.0, max_side / max(self.width, self.height))
        return self._reduced(max(1, round(self.width * scale)), max(1, round(self.height * scale))), scale

    def _reduced(self, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ArrayRaster(Raster):
    """An image already in memory (an upload, a decoded browse JPEG)."""

    def __init__(self, gray: np.ndarray, name: str = "image", georef: Georef | None = None,
                 notes: list[str] | None = None):
        self.gray, self.name, self.georef, self.notes = gray, name, georef, list(notes or [])
        self.height, self.width = gray.shape

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.gray[y0:y1, x0:x1]

    def _reduced(self, width: int, height: int) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.fromarray(self.gray).resize((width, height), Image.BILINEAR))


class GdalRaster(Raster):
    """A file GDAL reads in windows; `level` N reads it at 1/2**N of full resolution (a JPEG 2000 resolution
    level, or a GeoTIFF overview), never decoding the whole image."""

    def __init__(self, path: Path, level: int = 0):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError

        self.name, self.notes, self.ds = path.name, [], None
        try:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the report says "no georeferencing"
                    with _gdal(), rasterio.open(path) as probe:
                        factors = probe.overviews(1) if probe.count else []
                        kwargs = {}
                        if level:
                            if 2 ** level not in factors:
                                have = ", ".join(str(int(np.log2(f))) for f in factors) or "none"
                                raise RasterError(f"{path.name}: has no resolution level {level} "
                                                  f"(levels it has: {have})")
                            kwargs["overview_level"] = factors.index(2 ** level)
                    with _gdal():
                        self.ds = rasterio.open(path, **kwargs)
            except RasterioError as exc:
                raise RasterError(f"{path.name}: not an image GDAL can read, or damaged ({_first_line(exc)})") from None
            if not self.ds.count:
                raise RasterError(f"{path.name}: has no image bands")
            bh, bw = self.ds.block_shapes[0]
            block = bh * bw * np.dtype(self.ds.dtypes[0]).itemsize
            if self.ds.driver == "GTiff" and block > CACHE_MB << 20:  # GDAL decodes a TIFF a whole block at a time
                raise RasterError(f"{path.name}: stored in blocks of {bw}x{bh} px ({block / 2**20:,.0f} MiB each, over "
                                  f"the {CACHE_MB} MiB this reads at a time); rewrite it tiled "
                                  "(gdal_translate -co TILED=YES)")
            self.width, self.height = self.ds.width, self.ds.height
            if level:
                self.notes.append(f"read at resolution level {level} (1/{2 ** level} of full resolution)")
            self._bands = [1, 2, 3] if self.ds.count >= 3 else [1]
            with _gdal():
                self._stretch = self._find_stretch()
        except BaseException:
            self.close()
            raise

    def _find_stretch(self) -> tuple[float, float] | None:
        """For data deeper than 8 bits (HiRISE RDRs are 10-bit in 16-bit words), the range 0.1-99.9 percentiles of
        a reduced read map to 0..255; None when the data already is 8-bit."""
        if self.ds.dtypes[0] == "uint8":
            return None
        step = max(1, max(self.width, self.height) // 1024)
        sample = self.ds.read(1, out_shape=(max(1, self.height // step), max(1, self.width // step)),
                              masked=True).compressed().astype(np.float64)
        sample = sample[np.isfinite(sample)]
        lo, hi = (np.percentile(sample, [0.1, 99.9]) if sample.size else (0.0, 1.0))
        hi = hi if hi > lo else lo + 1.0
        self.notes.append(f"scaled from {self.ds.dtypes[0]} (values {lo:g} to {hi:g}) to 8-bit")
        return float(lo), float(hi)

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        width = x1 - x0
        rows = max(1, READ_PIXELS // max(1, width * len(self._bands)))
        if self._stretch is None and len(self._bands) == 1 and self.ds.dtypes[0] == "uint8":
            rows = y1 - y0  # already the 8-bit pixels asked for: read at once, nothing converted
        out = np.empty((y1 - y0, width), np.uint8)
        try:
            with _gdal():
                for top in range(y0, y1, rows):  # in blocks of rows: converted a block at a time
                    bottom = min(y1, top + rows)
                    out[top - y0:bottom - y0] = self._to_gray(
                        self.ds.read(self._bands, window=Window(x0, top, width, bottom - top)))
        except RasterioError as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            raise RasterError(f"{self.name}: damaged or truncated: pixels ({x0}, {y0})-({x1}, {y1}) could not be "
                              f"decoded ({_first_line(cause)})") from None
        return out

    def _to_gray(self, data: np.ndarray) -> np.ndarray:
        gray = data[0] if len(data) == 1 else 0.299 * data[0] + 0.587 * data[1] + 0.114 * data[2]  # as PIL's "L"
        if self._stretch is not None:
            lo, hi = self._stretch
            gray = (np.asarray(gray, np.float64) - lo) * (255.0 / (hi - lo))
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8) if gray.dtype != np.uint8 else gray

    def _reduced(self, width: int, height: int) -> np.ndarray:
        """Read through the file's resolution levels (overviews), never the full image."""
        from rasterio.enums import Resampling

        with _gdal():
            data = self.ds.read(self._bands, out_shape=(len(self._bands), height, width),
                                resampling=Resampling.average)
        return self._to_gray(data)

    def close(self) -> None:
        ds = getattr(self, "ds", None)
        if ds is not None:
            ds.close()
            self.ds = None


def _gdal():
    """GDAL's settings for every call here: one decoding thread, a bounded block cache."""
    import rasterio

    return rasterio.Env(**GDAL_OPTIONS)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def open_raster(path: Path, level: int = 0, label: Path | None = None) -> Raster:
    """The observation at `path`, georeferenced from `label` (or the PDS3 label found beside it, or the
    georeferencing the file carries). RasterError (or LabelError) says in one line what is wrong."""
    path = Path(path)
    if path.suffix.lower() == ".lbl":  # a detached label was given: scan the image it sits beside
        image = next((p for p in sorted(path.parent.glob(path.stem + ".*")) if p.suffix.lower() != ".lbl"), None)
        if image is None:
            raise RasterError(f"{path.name}: a label, and no image named {path.stem}.* beside it")
        path, label = image, label or path
    if not path.is_file():
        raise RasterError(f"{path}: no such file")
    if path.suffix.lower() in GDAL_SUFFIXES:
        raster: Raster = GdalRaster(path, level)
    else:
        if level:
            raise RasterError(f"{path.name}: resolution levels are read from JPEG 2000 and tiled TIFF files only")
        try:
            gray, notes = decode_gray(path.read_bytes(), path.name)
        except OSError as exc:
            raise RasterError(f"{path.name}: cannot read it ({exc.strerror or exc})") from None
        raster = ArrayRaster(gray, path.name, notes=notes)
    try:
        label = label or find_label(path)
        if label is None and path.suffix.lower() == ".img" and _starts_with(path, b"PDS_VERSION_ID"):
            label = path  # a PDS .IMG carries its label in front of the pixels
        if label is not None:
            raster.georef = from_pds_label(label, raster.width, raster.height)
        elif isinstance(raster, GdalRaster):
            raster.georef = from_dataset(raster.ds)
    except LabelError:
        raster.close()
        raise
    return raster
