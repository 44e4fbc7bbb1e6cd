"""Decode any image a researcher may hand us into the model's 8-bit grayscale input, safely."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

TILE_SIZE = 227  # the HiRISE landmark tiles are 227x227 grayscale
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000  # a decompression bomb is refused before its pixels are decoded


class ImageError(ValueError):
    """The bytes are not an image we can use; the message says why."""


def decode_gray(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS,
                max_bytes: int = MAX_FILE_BYTES) -> tuple[np.ndarray, list[str]]:
    """Return an HxW uint8 array and notes on any conversion (colour, 16-bit, EXIF rotation).

    JPEG, PNG, TIFF (8/16-bit, float), RGB, RGBA, palette and EXIF-rotated files are accepted.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data) / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is over the {max_pixels:,}-pixel limit")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses these while reading the header, before the limit above is checked
        raise ImageError(f"{name}: refused as a possible decompression bomb: its header claims far more than "
                         f"the {max_pixels:,}-pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image (expected JPEG, PNG, TIFF, BMP, GIF or WebP)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged or truncated image ({exc})") from exc
    notes: list[str] = []
    if _has_rotation(img):
        notes.append("rotated upright from its EXIF orientation")
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            # 10-, 12- and 14-bit sensor data (HiRISE is 10-14 bit) often sits in 16-bit files: scale by
            # the smallest bit depth that holds the maximum, so such images are not nearly black.
            bits = next(b for b in (8, 10, 12, 14, 16) if float(arr.max()) < 2**b)
            arr = arr * (255.0 / (2**bits - 1))
            notes.append(f"scaled from {mode} ({bits}-bit values) to 8-bit")
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
            notes.append(f"scaled from {mode} (values {lo:g} to {hi:g}) to 8-bit")
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8), notes
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
        notes.append("transparency flattened onto black")
    if img.mode != "L":
        notes.append(f"converted from {mode} to grayscale")
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8).copy(), notes


def _has_rotation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) not in (1, None)
    except Exception:
        return False


def to_tile(gray: np.ndarray, size: int = TILE_SIZE) -> tuple[np.ndarray, list[str]]:
    """Resize an HxW uint8 array to size x size (bilinear), noting it when it changes."""
    if gray.shape == (size, size):
        return gray, []
    note = f"resized from {gray.shape[1]}x{gray.shape[0]} to {size}x{size}"
    img = Image.fromarray(gray).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy(), [note]


def decode_tile(data: bytes, name: str = "tile", size: int = TILE_SIZE) -> tuple[np.ndarray, list[str]]:
    """Decode bytes into one size x size grayscale tile, with notes on what was converted."""
    gray, notes = decode_gray(data, name)
    tile, more = to_tile(gray, size)
    return tile, notes + more


#: The image files this project reads: tiles in a data folder or zip, and the images `core.predict` picks up
#: from a folder it is given.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
