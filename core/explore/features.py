"""Penultimate features (and the head's logits) of a checkpoint for every tile of a data set, cached on disk.

The features are what the model's classifier head reads: the pooled vector before the last linear layer.
They come from `core.inference.predict_features`, the same pass as prediction's, which gives the logits too. The cache sits beside the tile cache (CACHE_DIR/explore) and is keyed by
the checkpoint's bytes, the tiles' content (the tile caches' own content keys), the record list and the
input size: any change to one of them is a miss, never a stale hit.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..checkpoint import LoadedModel
from ..data import HiriseData, Record, RecordTiles
from ..data.storage import content_digest
from ..download import file_digest
from ..inference import predict_features, probabilities
from ..progress import ProgressCallback
from ..settings import CACHE_DIR

FEATURE_FORMAT = "explore-features-v1"
#: The input size of the feature pass; 0 means the checkpoint's own (260 px for the shipped EfficientNet-Lite2).
#: A smaller size is faster but loses much of what the features know (README, "Explore": measured trade-off),
#: so it is only ever chosen on purpose.
DEFAULT_EMBED_SIZE = 0


def resolve_size(loaded: LoadedModel, size: int) -> int:
    return int(size) or int(loaded.image_size)
BATCH = 64


@dataclass
class Features:
    """Features, logits and probabilities for `records` (same order), and how they were made."""

    records: list[Record]
    features: np.ndarray  # (N, D) float32
    logits: np.ndarray  # (N, C) float32, uncalibrated
    probs: np.ndarray  # (N, C) float32, calibrated with the checkpoint's temperature
    key: str
    size: int
    from_cache: bool
    seconds: float  # time to compute them (0 for a cache hit)
    note: str = ""  # e.g. "the cache file was unreadable and was rebuilt"


def features_key(loaded: LoadedModel, data: HiriseData, records: list[Record], size: int) -> str:
    """Checkpoint content + tile content + which records, in which order + input size."""
    size = resolve_size(loaded, size)
    ckpt = file_digest(loaded.path, "sha1") if loaded.path and Path(loaded.path).is_file() else f"unsaved-{id(loaded)}"
    tile_keys = sorted(f"{name}={cache.directory.name}" for name, cache in data.caches.items())
    rows = [f"{r.source}:{r.path}" for r in records]
    return content_digest([FEATURE_FORMAT, ckpt, str(size), *tile_keys, *rows])


def cache_dir(root: Path | None = None) -> Path:
    return Path(root or CACHE_DIR) / "explore"


def compute_features(loaded: LoadedModel, data: HiriseData, records: list[Record], size: int = DEFAULT_EMBED_SIZE,
                     on_progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of `records` at `size` px input, through the one inference path (a progress bar
    counts tiles)."""
    tiles = RecordTiles(data, records)
    return predict_features(loaded, tiles, batch_size=BATCH, size=resolve_size(loaded, size), on_progress=on_progress)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write through a uniquely named temporary file, then rename: readers (other threads, other
    processes) see the old file or the whole new one, never half of one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named arrays of a cache file, or None when it is missing, truncated or lacks one of them."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def get_features(loaded: LoadedModel, data: HiriseData, records: list[Record] | None = None,
                 size: int = DEFAULT_EMBED_SIZE, cache_root: Path | None = None,
                 on_progress: ProgressCallback | None = None) -> Features:
    """Features of `records` (default: every tile of `data`), from the cache or computed and cached."""
    records = list(data.records if records is None else records)
    size = resolve_size(loaded, size)
    if not records:
        raise ValueError("no tiles to compute features for")
    key = features_key(loaded, data, records, size)
    path = cache_dir(cache_root) / f"features-{key}.npz"
    cached = load_npz(path, ("features", "logits"))
    note = ""
    if cached is not None and len(cached["features"]) == len(records):
        return Features(records, cached["features"], cached["logits"], probabilities(cached["logits"], loaded.temperature),
                        key, size, True, 0.0)
    if path.is_file():
        note = f"the feature cache {path.name} was unreadable and has been rebuilt"
    t0 = time.perf_counter()
    feats, logits = compute_features(loaded, data, records, size, on_progress)
    seconds = time.perf_counter() - t0
    save_npz_atomic(path, features=feats, logits=logits)
    return Features(records, feats, logits, probabilities(logits, loaded.temperature), key, size, False, seconds, note)
