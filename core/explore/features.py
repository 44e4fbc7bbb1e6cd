"""Penultimate features (and the head's logits) of a checkpoint for every tile of a data set, cached on disk.

The features are what the model's classifier head reads: the pooled vector before the last linear layer.
They come from `core.inference.predict_features`, the same pass as prediction's, which gives the logits too. The cache sits beside the tile cache (CACHE_DIR/explore) and is keyed by
the checkpoint's bytes, the tiles' content (the tile caches' own content keys), the record list and the
input size: any change to one of them is a miss, never a stale hit.
"""
from __future__ import annotations

import contextlib
import functools
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from core.atomic import atomic_path
from core.checkpoint import LoadedModel
from core.data import HiriseData, Record, RecordTiles
from core.data.storage import content_digest
from core.digest import file_digest
from core.inference import predict_features, probabilities
from core.progress import ProgressCallback
from core.settings import CACHE_DIR

FEATURE_FORMAT = "explore-features-v1"
#: The input size of the feature pass; 0 means the checkpoint's own (260 px for the shipped EfficientNet-Lite2).
#: A smaller size is faster but loses much of what the features know (docs/explore.md: measured trade-off),
#: so it is only ever chosen on purpose.
DEFAULT_EMBED_SIZE = 0


BATCH = 64
#: Tiles per saved part of a feature pass (about 35 s of the shipped model on a 2-core CPU): what a stopped
#: pass can lose at most.
PART_TILES = 1024


def resolve_size(loaded: LoadedModel, size: int) -> int:
    return int(size) or int(loaded.image_size)


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
    ckpt = _checkpoint_digest(loaded.path) if loaded.path and Path(loaded.path).is_file() else f"unsaved-{id(loaded)}"
    tile_keys = sorted(f"{name}={cache.directory.name}" for name, cache in data.caches.items())
    rows = [f"{r.source}:{r.path}" for r in records]
    return content_digest([FEATURE_FORMAT, ckpt, str(size), *tile_keys, *rows])


def _checkpoint_digest(path: Path) -> str:
    """The checkpoint file's SHA-1, hashed once per file version (the Explore page asks on every rerun)."""
    stat = Path(path).stat()
    return _digest_of_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _digest_of_version(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(path, "sha1")


def parts_dir(key: str, cache_root: Path | None = None) -> Path:
    """Where an unfinished feature pass keeps its finished parts (removed once the whole file is written)."""
    return cache_dir(cache_root) / f"features-{key}.parts"


def kept_tiles(loaded: LoadedModel, data: HiriseData, size: int = DEFAULT_EMBED_SIZE,
               cache_root: Path | None = None, key: str | None = None) -> int:
    """How many tiles of an unfinished feature pass over every tile of `data` are kept on disk (0: none);
    `key`: its `features_key`, when the caller has it."""
    key = key or features_key(loaded, data, list(data.records), size)
    done = 0
    for part in parts_dir(key, cache_root).glob("*.npz"):
        start, _, stop = part.stem.partition("-")
        if start.isdigit() and stop.isdigit():
            done += int(stop) - int(start)
    return done


def cache_dir(root: Path | None = None) -> Path:
    return Path(root or CACHE_DIR) / "explore"


def compute_features(loaded: LoadedModel, data: HiriseData, records: list[Record], size: int = DEFAULT_EMBED_SIZE,
                     on_progress: ProgressCallback | None = None, parts: Path | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of `records` at `size` px input, through the one inference path (one progress bar
    counts tiles). With `parts`, each finished run of PART_TILES tiles is kept in that folder as it is made, and
    parts already there are read instead of computed: a pass that was stopped (the page left, the app or the
    machine restarted) goes on from where it stood."""
    px = resolve_size(loaded, size)
    n = len(records)
    desc = f"features at {px}px"
    bar = None if on_progress is not None else tqdm(total=n, desc=desc, unit="tile", dynamic_ncols=True,
                                                     mininterval=0.5)

    def report(done: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)
        else:
            on_progress(done, n, desc)

    feats, logits = [], []
    try:
        for start in range(0, n, PART_TILES):
            stop = min(n, start + PART_TILES)
            part = parts / f"{start:08d}-{stop:08d}.npz" if parts is not None else None
            kept = load_npz(part, ("features", "logits")) if part is not None else None
            if kept is None or len(kept["features"]) != stop - start:
                f, lg = predict_features(loaded, RecordTiles(data, records[start:stop]), batch_size=BATCH, size=px,
                                         on_progress=lambda done, _n, _desc, offset=start: report(offset + done))
                kept = {"features": f, "logits": lg}
                if part is not None:
                    _keep_part(part, kept)
            report(stop)
            feats.append(kept["features"])
            logits.append(kept["logits"])
    finally:
        if bar is not None:
            bar.close()
    if not feats:
        return np.empty((0, 0), np.float32), np.empty((0, len(loaded.class_names)), np.float32)
    return np.concatenate(feats), np.concatenate(logits)


def _keep_part(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save one finished part; one that cannot be saved (a read-only or vanished folder) is only not kept."""
    with contextlib.suppress(OSError):
        save_npz_atomic(path, **arrays)


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


def measure_rate(loaded: LoadedModel, data: HiriseData, size: int = DEFAULT_EMBED_SIZE, tiles: int = 32) -> float:
    """Tiles per second of the feature pass on this machine now, measured on a few tiles (decoding included),
    after a short warm-up: what an estimate of a whole pass should rest on, not a figure from another machine
    or another model."""
    records = data.records[: tiles + 8]
    if len(records) < 9:
        raise ValueError("too few tiles to measure the feature pass on")
    silent = lambda done, total, desc: None  # noqa: E731 - no bar for a probe of a second or two
    compute_features(loaded, data, records[:8], size, silent)
    t0 = time.perf_counter()
    compute_features(loaded, data, records[8:], size, silent)
    return (len(records) - 8) / max(time.perf_counter() - t0, 1e-6)


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
    parts = parts_dir(key, cache_root)
    feats, logits = compute_features(loaded, data, records, size, on_progress, parts=parts)
    seconds = time.perf_counter() - t0
    save_npz_atomic(path, features=feats, logits=logits)
    shutil.rmtree(parts, ignore_errors=True)  # the whole file replaces them
    return Features(records, feats, logits, probabilities(logits, loaded.temperature), key, size, False, seconds, note)
