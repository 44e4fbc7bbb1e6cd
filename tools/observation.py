"""Test observations made of real tiles, for core.scan's tests and benchmarks (no observation can be downloaded
here): a background of `other` tiles with landmark tiles pasted at known places and scales, written as a browse
JPEG, a JPEG 2000 at a higher resolution, or a GeoTIFF, with a PDS3 label modelled on real HiRISE RDR labels.

The two label models take their projection keywords from the PDS HiRISE RDR index:
- ESP_062586_1840_RED (equirectangular, 0.5 m/px, near 4 N 349.4 E);
- ESP_036809_2640_COLOR (polar stereographic, 0.25 m/px, near 83.7 N 237.5 E).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = {
    "EQUIRECTANGULAR": dict(product="ESP_062586_1840_RED", scale=0.5, lpo=493636.5, spo=-20081462.0, clat=0.0,
                            clon=180.0, radius=3396.19),
    "POLAR STEREOGRAPHIC": dict(product="ESP_036809_2640_COLOR", scale=0.25, lpo=801810.0, spo=1260530.0,
                                clat=90.0, clon=0.0, radius=3376.2),
}


@dataclass(frozen=True)
class Pasted:
    label: str
    x: int
    y: int
    size: int

    def holds(self, cx: float, cy: float) -> bool:
        return self.x <= cx <= self.x + self.size and self.y <= cy <= self.y + self.size


def landmarks_called_right(loaded, data, wanted: dict[str, int], split: str = "val") -> list:
    """Landmark tiles of `split` the model itself calls right at 0.9 or more on their own: a scan can only be asked
    to find what the model can see."""
    from core.inference import predict_proba

    names = list(loaded.class_names)
    originals = [r for r in data.records if r.is_original and r.split == split]
    chosen = []
    for label, count in wanted.items():
        pool = [r for r in originals if names[r.label] == label][:40]
        probs = predict_proba(loaded, data.tiles(pool)) if pool else []
        chosen += [r for r, p in zip(pool, probs, strict=True) if p.argmax() == r.label and p.max() >= 0.9][:count]
    return chosen


def build(data, landmarks: list, names: list[str], rows: int = 4, cols: int = 6, paste: int = 192,
          seed: int = 24, split: str = "val") -> tuple[np.ndarray, list[Pasted]]:
    """A rows x cols background of `other` tiles of `split` (227 px each) with `landmarks` pasted at `paste` px,
    two tiles apart: the canvas and where each landmark went."""
    originals = [r for r in data.records if r.is_original and r.split == split and names[r.label] == "other"]
    rng = np.random.default_rng(seed)
    background = [originals[i] for i in rng.permutation(len(originals))][:rows * cols]
    tiles = data.tiles(background)
    canvas = np.concatenate([np.concatenate(list(tiles[r * cols:(r + 1) * cols]), axis=1) for r in range(rows)])
    per_row = max(1, (canvas.shape[1] - paste) // (paste + 96))
    places = []
    for i, rec in enumerate(landmarks):
        x, y = 96 + (paste + 96) * (i % per_row), 96 + (paste + 192) * (i // per_row)
        if y + paste > canvas.shape[0]:
            break
        canvas[y:y + paste, x:x + paste] = np.asarray(Image.fromarray(data.tiles([rec])[0]).resize((paste, paste)))
        places.append(Pasted(names[rec.label], x, y, paste))
    return canvas, places


def write_label(path: Path, width: int, height: int, projection: str = "EQUIRECTANGULAR", factor: float = 4.0,
                image_name: str | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A detached PDS3 label, shaped as a HiRISE RDR label, for a product `factor` times the size of a `width` x
    `height` image (so the image is its browse); keywords in `drop` are left out (to test refusals)."""
    p = LABELS[projection]
    keys = {
        "MAP_PROJECTION_TYPE": f'"{projection}"', "A_AXIS_RADIUS": f"{p['radius']} <KM>",
        "B_AXIS_RADIUS": f"{p['radius']} <KM>", "C_AXIS_RADIUS": f"{p['radius']} <KM>",
        "CENTER_LATITUDE": f"{p['clat']} <DEG>", "CENTER_LONGITUDE": f"{p['clon']} <DEG>",
        "MAP_SCALE": f"{p['scale']} <METERS/PIXEL>", "LINE_PROJECTION_OFFSET": f"{p['lpo']} <PIXEL>",
        "SAMPLE_PROJECTION_OFFSET": f"{p['spo']} <PIXEL>",
    }
    proj = "\n".join(f"  {k} = {v}" for k, v in keys.items() if k not in drop)
    image = image_name or f"{p['product']}.JP2"
    lines = "" if "LINES" in drop else f"      LINES = {round(height * factor)}\n"
    text = f"""PDS_VERSION_ID = PDS3
RECORD_TYPE = UNDEFINED
^IMAGE = "{image}"
DATA_SET_ID = "MRO-M-HIRISE-5-RDR-V1.1"
OBSERVATION_ID = "{p['product'][:15]}"
PRODUCT_ID = "{p['product']}"
INSTRUMENT_HOST_ID = "MRO"
INSTRUMENT_ID = "HIRISE"
TARGET_NAME = MARS
OBJECT = IMAGE_MAP_PROJECTION
  ^DATA_SET_MAP_PROJECTION = "DSMAP.CAT"
{proj}
  POSITIVE_LONGITUDE_DIRECTION = EAST
  COORDINATE_SYSTEM_NAME = PLANETOCENTRIC
END_OBJECT = IMAGE_MAP_PROJECTION
OBJECT = COMPRESSED_FILE
  FILE_NAME = "{image}"
  RECORD_TYPE = UNDEFINED
  ENCODING_TYPE = "JP2"
  UNCOMPRESSED_FILE_NAME = "{Path(image).stem}.IMG"
END_OBJECT = COMPRESSED_FILE
OBJECT = UNCOMPRESSED_FILE
  FILE_NAME = "{Path(image).stem}.IMG"
  RECORD_TYPE = FIXED_LENGTH
  OBJECT = IMAGE
{lines}      LINE_SAMPLES = {round(width * factor)}
      BANDS = 1
      SAMPLE_TYPE = MSB_UNSIGNED_INTEGER
      SAMPLE_BITS = 16
  END_OBJECT = IMAGE
END_OBJECT = UNCOMPRESSED_FILE
END
"""
    path.write_text(text.replace("\n", "\r\n"))
    return path


def write_jp2(path: Path, gray: np.ndarray, factor: int = 1, quality: int = 40, block: int = 1024) -> Path:
    """`gray` enlarged `factor` times (each pixel repeated: reading level log2(factor) gives it back closely) and written as a tiled, lossy JPEG 2000 with resolution levels (as HiRISE RDRs
    are), through a temporary tiled GeoTIFF (GDAL writes JPEG 2000 only as a copy)."""
    import rasterio
    import rasterio.shutil

    big = gray if factor == 1 else np.asarray(
        Image.fromarray(gray).resize((gray.shape[1] * factor, gray.shape[0] * factor), Image.NEAREST))
    tmp = path.with_suffix(".src.tif")
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(tmp, "w", driver="GTiff", width=big.shape[1], height=big.shape[0], count=1,
                           dtype="uint8", tiled=True) as dst:
            dst.write(big, 1)
        with rasterio.open(tmp) as src:
            rasterio.shutil.copy(src, path, driver="JP2OpenJPEG", QUALITY=quality, REVERSIBLE="NO",
                                 BLOCKXSIZE=block, BLOCKYSIZE=block, RESOLUTIONS=6)
    tmp.unlink()
    return path


def write_geotiff(path: Path, gray: np.ndarray, georef) -> Path:
    """`gray` as a GeoTIFF carrying `georef` (its projection and transform)."""
    import rasterio

    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(
            path, "w", driver="GTiff", width=gray.shape[1], height=gray.shape[0], count=1, dtype="uint8",
            crs=georef.crs, transform=georef.transform, tiled=True) as dst:
        dst.write(gray, 1)
    return path
