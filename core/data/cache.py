"""Decoded-tile cache: every tile of a source decoded once into a memory-mapped uint8 array on disk.

Keyed by the content of the source's files (their sha1s) and the tile size, so it is shared by all
runs and processes, reused while the files stay the same and rebuilt when they change.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.imageio import TILE_SIZE, ImageError, decode_tile
from core.progress import ProgressCallback, track
from core.settings import CACHE_DIR

from .merge import content_hashes
from .sources import Source
from .storage import UnreadableFile, content_digest

CACHE_FORMAT = "tiles-v1"


@dataclass
class TileCache:
    """The decoded tiles of one source: `tiles[row]` is a size x size uint8 array."""

    directory: Path
    tiles: np.ndarray  # memory-mapped, read-only
    row_of: dict[str, int]  # record path -> row
    unreadable: dict[str, str]  # record path -> reason (its row is zeros)
    notes: dict[str, list[str]]  # record path -> conversions made (colour, size)

    def rows(self, paths: list[str]) -> np.ndarray:
        return np.fromiter((self.row_of[p] for p in paths), dtype=np.int64, count=len(paths))


def cache_key(source: Source, size: int = TILE_SIZE, on_progress: ProgressCallback | None = None) -> str:
    hashes = content_hashes(source, on_progress)
    return content_digest([CACHE_FORMAT, str(size)] + [f"{p}={h}" for p, h in sorted(hashes.items())])


def open_tile_cache(source: Source, size: int = TILE_SIZE, cache_dir: Path | None = None,
                    on_progress: ProgressCallback | None = None) -> TileCache:
    """Open the source's cache, building it first (with a progress bar) when it is missing or stale."""
    root = Path(cache_dir or CACHE_DIR) / "tiles"
    directory = root / cache_key(source, size, on_progress)
    if not (directory / "index.json").is_file():
        _build(source, size, directory, on_progress)
    index = json.loads((directory / "index.json").read_text())
    tiles = np.load(directory / "tiles.npy", mmap_mode="r")
    return TileCache(directory=directory, tiles=tiles, row_of={p: i for i, p in enumerate(index["paths"])},
                     unreadable=index["unreadable"], notes=index["notes"])


def _build(source: Source, size: int, directory: Path, on_progress: ProgressCallback | None) -> None:
    paths = sorted({r.path for r in source.records})
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        tiles = np.lib.format.open_memmap(tmp / "tiles.npy", mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
        unreadable: dict[str, str] = {}
        notes: dict[str, list[str]] = {}
        for row, path in enumerate(track(paths, len(paths), f"decoding {source.name}", on_progress)):
            try:
                tile, tile_notes = decode_tile(source.storage.read(path), path, size)
            except (ImageError, UnreadableFile, OSError) as exc:
                unreadable[path] = str(exc)
                continue
            tiles[row] = tile
            if tile_notes:
                notes[path] = tile_notes
        tiles.flush()
        del tiles
        (tmp / "index.json").write_text(json.dumps({"format": CACHE_FORMAT, "source": source.location, "size": size,
                                                    "paths": paths, "unreadable": unreadable, "notes": notes}))
        try:
            os.replace(tmp, directory)  # atomic: another process may have built it meanwhile
        except OSError:
            if not (directory / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
