"""Where an image's pixels are on Mars: map coordinates and latitude/longitude, from a PDS3 label beside the image
(HiRISE RDRs and their browse images) or from the georeferencing a GeoTIFF or GeoJP2 carries.

A HiRISE label describes the full-resolution product. Its browse image is the same map reduced by a factor, so
the label's pixel grid is scaled to the image's size (and refused when the two do not have one shape). The label
is read with `pdr` (it reads attached and detached PDS3 labels); the projection is built from its keywords as a
PROJ definition, and PROJ (through rasterio) turns map metres into latitude/longitude.

The pixel convention is the HiRISE RDR SIS's and GDAL's PDS driver's: for 1-based LINE and SAMPLE,
x = (SAMPLE - SAMPLE_PROJECTION_OFFSET - 1) * MAP_SCALE and y = (LINE_PROJECTION_OFFSET - LINE + 1) * MAP_SCALE.
Longitudes are given east-positive in 0..360, as HiRISE labels give them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.transform import Affine
from rasterio.crs import CRS

#: Browse and annotated-browse names of a HiRISE product (ESP_011277_1825_RED.browse.jpg -> ESP_011277_1825_RED.LBL)
BROWSE_SUFFIXES = (".browse", ".abrowse", ".thumb", ".QLOOK")
PROJECTIONS = ("EQUIRECTANGULAR", "POLAR STEREOGRAPHIC")
REQUIRED = ("MAP_PROJECTION_TYPE", "MAP_SCALE", "LINE_PROJECTION_OFFSET", "SAMPLE_PROJECTION_OFFSET",
            "CENTER_LATITUDE", "CENTER_LONGITUDE", "A_AXIS_RADIUS", "LINES", "LINE_SAMPLES")


class LabelError(ValueError):
    """A label that cannot georeference its image; the message says why in one line."""


@dataclass(frozen=True)
class Georef:
    """Pixel -> map metres (an affine transform of the image as scanned) and the map's projection."""

    transform: Affine  # (column, row) of a pixel corner -> (x, y) in map units
    crs: CRS
    source: str  # where it came from, for the report: "PDS3 label X.LBL" or "GeoTIFF"

    def map_xy(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of image positions (continuous pixel coordinates: the first pixel's centre is 0.5)."""
        a = self.transform
        cols, rows = np.asarray(cols, float), np.asarray(rows, float)
        return a.a * cols + a.b * rows + a.c, a.d * cols + a.e * rows + a.f

    def lonlat(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """East longitude (0..360) and latitude, in degrees, of map coordinates."""
        from rasterio.warp import transform

        if self.crs.is_geographic:
            lon, lat = np.asarray(xs, float), np.asarray(ys, float)
        else:
            lon, lat = (np.asarray(v) for v in transform(self.crs, geographic_of(self.crs), list(map(float, xs)),
                                                         list(map(float, ys))))
        return np.mod(lon, 360.0), lat


def geographic_of(crs: CRS) -> CRS:
    """The latitude/longitude system on the same body (sphere or ellipsoid) as a projected `crs`."""
    params = crs.to_dict()
    body = {k: params[k] for k in ("R", "a", "b", "rf", "ellps", "datum") if k in params}
    if not body:
        raise LabelError(f"the projection {crs.to_string()[:80]} names no body radius; cannot give latitudes")
    return CRS.from_dict({"proj": "longlat", **body, "no_defs": True})


def find_label(image: Path) -> Path | None:
    """The PDS3 label beside `image`: same name with .LBL/.lbl, also for HiRISE browse names
    (X_RED.browse.jpg -> X_RED.LBL). A NOMAP browse image is not map-projected, so it never takes a label."""
    if "NOMAP" in image.name.upper():
        return None
    stems = {image.stem}
    for suffix in BROWSE_SUFFIXES:
        if image.stem.lower().endswith(suffix.lower()):
            stems.add(image.stem[: -len(suffix)])
    for stem in sorted(stems):
        for ext in (".LBL", ".lbl"):
            candidate = image.with_name(stem + ext)
            if candidate.is_file() and candidate != image:
                return candidate
    return None


def _value(meta, key: str) -> float | str:  # noqa: ANN001 - pdr's Metadata
    raw = meta.metaget(key)
    if isinstance(raw, dict):  # a quantity with units: {'value': 0.25, 'units': 'METERS/PIXEL'}
        unit = str(raw.get("units", "")).upper()
        value = raw.get("value")
        if key == "MAP_SCALE" and unit.startswith("KM"):
            value = float(value) * 1000.0
        return value
    return raw


def from_pds_label(label: Path, width: int, height: int) -> Georef:
    """The georeferencing of a `width` x `height` image from the PDS3 label of its full-resolution product (or of
    itself): the label's grid scaled by LINE_SAMPLES / width. LabelError when a keyword is missing, the projection
    is one this does not handle, or the image is not the label's image at some scale."""
    import pdr

    try:
        meta = pdr.read(str(label)).metadata
    except Exception as exc:  # pdr raises many kinds on a malformed label
        raise LabelError(f"{label.name}: not a readable PDS3 label ({type(exc).__name__}: {exc})") from None
    values = {key: _value(meta, key) for key in REQUIRED}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise LabelError(f"{label.name}: no {', '.join(missing)} in the label; cannot georeference")
    kind = str(values["MAP_PROJECTION_TYPE"]).strip().upper()
    if kind not in PROJECTIONS:
        raise LabelError(f"{label.name}: projection {kind!r} is not one of {', '.join(PROJECTIONS)}")
    try:
        scale, lpo, spo, clat, clon, radius_km, lines, samples = (float(values[k]) for k in REQUIRED[1:])
    except (TypeError, ValueError) as exc:
        raise LabelError(f"{label.name}: a projection keyword is not a number ({exc})") from None
    if not all(np.isfinite([scale, lpo, spo, clat, clon, radius_km, lines, samples])) or min(
            scale, radius_km, lines, samples) <= 0:
        raise LabelError(f"{label.name}: MAP_SCALE, A_AXIS_RADIUS, LINES and LINE_SAMPLES must be positive numbers")
    kx, ky = samples / width, lines / height
    # a browse image is the product reduced by one factor, rounded to whole pixels on each side
    if abs(kx - ky) > max(kx, ky) * (0.01 + 1.0 / min(width, height)):
        raise LabelError(f"{label.name}: its image is {int(samples)}x{int(lines)} px, which no one scale turns into "
                         f"this {width}x{height} image; is it the label of another image?")
    radius = radius_km * 1000.0
    if kind == "EQUIRECTANGULAR":
        proj = f"+proj=eqc +lat_ts={clat} +lat_0=0 +lon_0={clon} +x_0=0 +y_0=0 +R={radius} +units=m +no_defs"
    else:
        if abs(abs(clat) - 90.0) > 1e-6:
            raise LabelError(f"{label.name}: POLAR STEREOGRAPHIC with CENTER_LATITUDE {clat}, not a pole")
        proj = f"+proj=stere +lat_0={clat:+.0f} +lon_0={clon} +k=1 +x_0=0 +y_0=0 +R={radius} +units=m +no_defs"
    full = Affine(scale, 0.0, -(spo + 0.5) * scale, 0.0, -scale, (lpo + 0.5) * scale)
    return Georef(full @ Affine.scale(kx, ky), CRS.from_proj4(proj), f"PDS3 label {label.name}")


def from_dataset(dataset) -> Georef | None:  # noqa: ANN001 - a rasterio dataset
    """The georeferencing a GeoTIFF (or GeoJP2) carries, or None when it carries none."""
    if dataset.crs is None or dataset.transform == Affine.identity():
        return None
    return Georef(dataset.transform, dataset.crs, f"{dataset.driver} georeferencing")
