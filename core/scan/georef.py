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

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine

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


def _value(meta, key: str) -> float | str:
    raw = meta.metaget(key)
    if isinstance(raw, dict):  # a quantity with units: {'value': 0.25, 'units': 'METERS/PIXEL'}
        unit = str(raw.get("units", "")).upper()
        value = raw.get("value")
        if key == "MAP_SCALE" and unit.startswith("KM"):
            value = float(value) * 1000.0
        if key == "A_AXIS_RADIUS" and unit in ("M", "METER", "METERS", "METRE", "METRES"):
            value = float(value) / 1000.0  # the standard unit is km
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
    numbers = {}
    for key in REQUIRED[1:]:
        try:
            numbers[key] = float(values[key])
        except (TypeError, ValueError):
            raise LabelError(f"{label.name}: {key} = {str(values[key])[:40]!r} is not a number; cannot "
                             "georeference") from None
    check_keywords(label.name, numbers)
    scale, lpo, spo, clat, clon, radius_km, lines, samples = (numbers[k] for k in REQUIRED[1:])
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
    georef = Georef(full @ Affine.scale(kx, ky), CRS.from_proj4(proj), f"PDS3 label {label.name}")
    # the image's corners must be places on Mars: offsets that pass their own bounds may still, together, put
    # the image off the map
    lon, lat = georef.lonlat(*georef.map_xy([0, width, 0, width], [0, 0, height, height]))
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat)) and np.all(np.abs(lat) <= 90.0)):
        raise LabelError(f"{label.name}: LINE_PROJECTION_OFFSET {lpo:g} and SAMPLE_PROJECTION_OFFSET {spo:g} put "
                         f"the image's corners off the map (latitudes {', '.join(f'{v:g}' for v in lat)}); "
                         "cannot georeference")
    return georef


#: What a keyword of a HiRISE (or any Mars) map label can be: (least, most, what it means). MAP_SCALE is the label's
#: own (a browse image's grid is the label's scaled), so it is held to the range of Mars map products, HiRISE's
#: 0.25 to 1 m/pixel well inside it.
BOUNDS = {
    "MAP_SCALE": (0.05, 100.0, "m/pixel, the range of Mars map products (HiRISE: 0.25 to 1)"),
    "CENTER_LATITUDE": (-90.0, 90.0, "degrees"),
    "CENTER_LONGITUDE": (-360.0, 360.0, "degrees"),
    "A_AXIS_RADIUS": (3300.0, 3500.0, "km, about Mars' radius of 3,390 km"),
    "LINES": (1.0, 1e6, "pixels"),
    "LINE_SAMPLES": (1.0, 1e6, "pixels"),
}


def check_keywords(name: str, numbers: dict[str, float]) -> None:
    """LabelError naming the keyword and the label `name` when a projection keyword is not a finite number within
    what a Mars map can have: every keyword is checked before the label is used, so an absurd one stops the scan
    before any work instead of placing detections at latitude 8e300."""
    for key, value in numbers.items():
        if not np.isfinite(value):
            raise LabelError(f"{name}: {key} is {value}, not a finite number; cannot georeference")
        if key in BOUNDS:
            least, most, unit = BOUNDS[key]
            if not least <= value <= most:
                raise LabelError(f"{name}: {key} = {value:g} is outside {least:g} to {most:g} ({unit}); cannot "
                                 "georeference")
        if key in ("LINES", "LINE_SAMPLES") and value != int(value):
            raise LabelError(f"{name}: {key} = {value:g} is not a whole number of pixels; cannot georeference")
    reach = math.pi * numbers["A_AXIS_RADIUS"] * 1000.0  # half way round Mars, in metres
    for key in ("LINE_PROJECTION_OFFSET", "SAMPLE_PROJECTION_OFFSET"):
        if abs(numbers[key] * numbers["MAP_SCALE"]) > reach:
            raise LabelError(f"{name}: {key} = {numbers[key]:g} pixels of {numbers['MAP_SCALE']:g} m is "
                             f"{abs(numbers[key] * numbers['MAP_SCALE']) / 1000:,.0f} km from the projection's "
                             f"centre, further than half way round Mars; cannot georeference")


def from_dataset(dataset) -> Georef | None:
    """The georeferencing a GeoTIFF (or GeoJP2) carries, or None when it carries none."""
    if dataset.crs is None or dataset.transform == Affine.identity():
        return None
    return Georef(dataset.transform, dataset.crs, f"{dataset.driver} georeferencing")
