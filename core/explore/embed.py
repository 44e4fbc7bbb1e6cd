"""A 2-D map of a checkpoint's features: one point per tile, with its label, prediction, split, observation.

The reduction (UMAP by default; t-SNE or PCA on request) is cached beside the features, keyed by the
features' key and the method, so a warm map costs one file read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import atomic_path
from core.checkpoint import LoadedModel
from core.classes import CLASS_NAMES
from core.data import HiriseData, Record
from core.data.storage import content_digest
from core.progress import ProgressCallback

from .features import (
    DEFAULT_EMBED_SIZE,
    Features,
    cache_dir,
    features_key,
    get_features,
    kept_tiles,
    load_npz,
    save_npz_atomic,
)

METHODS = ("umap", "tsne", "pca")
#: Chosen by measurement on the shared tiles (docs/explore.md): UMAP keeps neighbourhoods as well as
#: t-SNE at a fraction of its time; PCA is instant but mixes the classes.
DEFAULT_METHOD = "umap"
EMBED_FORMAT = "explore-embedding-v1"
PCA_FIRST = 50  # UMAP and t-SNE run on the first 50 principal components: faster, and denoised
SEED = 0


@dataclass
class Embedding:
    table: pd.DataFrame  # one row per tile: x, y, file, path, source, label, predicted, confidence, split, ...
    features: Features
    method: str
    from_cache: bool
    seconds: float  # reduction time (0 for a cache hit)


def reduce(features: np.ndarray, method: str = DEFAULT_METHOD, seed: int = SEED) -> np.ndarray:
    """(N, D) features -> (N, 2) float32 coordinates."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    x = StandardScaler().fit_transform(features.astype(np.float32))
    n = len(x)
    if n < 3:
        raise ValueError(f"{n} tile(s): a map needs at least 3")
    if method == "pca" or n <= 5:
        return PCA(2, random_state=seed).fit_transform(x).astype(np.float32)
    x = PCA(min(PCA_FIRST, n - 1, x.shape[1]), random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE
        return TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(x).astype(
            np.float32)
    import warnings

    import umap  # imported here: numba's start-up costs seconds that a warm map never pays
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" and numba's notices
        return umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.1, random_state=seed).fit_transform(x).astype(
            np.float32)


def embed(loaded: LoadedModel, data: HiriseData, method: str = DEFAULT_METHOD, size: int = DEFAULT_EMBED_SIZE,
          records: list[Record] | None = None, cache_root: Path | None = None,
          on_progress: ProgressCallback | None = None) -> Embedding:
    """The map of `records` (default: all tiles), from the cache or computed (features first) and cached."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    feats = get_features(loaded, data, records, size, cache_root, on_progress)
    key = content_digest([EMBED_FORMAT, feats.key, method, str(SEED)])
    path = cache_dir(cache_root) / f"embedding-{key}.npz"
    cached = load_npz(path, ("xy",))
    if cached is not None and cached["xy"].shape == (len(feats.records), 2):
        return Embedding(table(feats, cached["xy"]), feats, method, True, 0.0)
    if on_progress:
        on_progress(0, 1, f"reducing {len(feats.records):,} tiles to 2-D ({method})")
    t0 = time.perf_counter()
    xy = reduce(feats.features, method)
    seconds = time.perf_counter() - t0
    # kept before anything else is said: a reduction cannot be interrupted, and a page left meanwhile stops at its
    # next progress call; the map it paid for is then read from the cache when the page is opened again
    save_npz_atomic(path, xy=xy)
    if on_progress:
        on_progress(1, 1, f"reducing {len(feats.records):,} tiles to 2-D ({method})")
    return Embedding(table(feats, xy), feats, method, False, seconds)


def is_cached(loaded: LoadedModel, data: HiriseData, method: str = DEFAULT_METHOD, size: int = DEFAULT_EMBED_SIZE,
              records: list[Record] | None = None, cache_root: Path | None = None) -> bool:
    """Whether `embed` would only read files (the page then draws the map without being asked)."""
    records = list(data.records if records is None else records)
    return _files_there(features_key(loaded, data, records, size), method, cache_root)


def cache_state(loaded: LoadedModel, data: HiriseData, method: str = DEFAULT_METHOD, size: int = DEFAULT_EMBED_SIZE,
                cache_root: Path | None = None) -> tuple[bool, int]:
    """(`is_cached` for every tile of `data`, how many tiles an unfinished feature pass kept), keyed once."""
    fkey = features_key(loaded, data, list(data.records), size)
    if _files_there(fkey, method, cache_root):
        return True, len(data.records)
    return False, kept_tiles(loaded, data, size, cache_root, key=fkey)


def _files_there(fkey: str, method: str, cache_root: Path | None) -> bool:
    key = content_digest([EMBED_FORMAT, fkey, method, str(SEED)])
    return (cache_dir(cache_root) / f"features-{fkey}.npz").is_file() and \
        (cache_dir(cache_root) / f"embedding-{key}.npz").is_file()


def table(feats: Features, xy: np.ndarray) -> pd.DataFrame:
    """One row per tile: what the page colours by and shows on hover."""
    recs = feats.records
    pred = feats.probs.argmax(1)
    names = np.asarray(CLASS_NAMES)
    labels = np.fromiter((r.label for r in recs), dtype=np.int64, count=len(recs))
    return pd.DataFrame({
        "x": xy[:, 0], "y": xy[:, 1],
        "file": [r.name for r in recs], "path": [r.path for r in recs], "source": [r.source for r in recs],
        "label": names[labels], "predicted": names[pred],
        "confidence": feats.probs.max(1).round(4), "correct": labels == pred,
        "split": [r.split or "none" for r in recs],
        "observation": [r.observation or "(unknown)" for r in recs],
        "augmented": [r.aug or "original" for r in recs],
    })


def write_table(df: pd.DataFrame, out: Path) -> None:
    """CSV (or Parquet by extension) of the map, written atomically."""
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
