"""The loaded data set: sources read, merged, split, leakage-checked and decoded into tile caches."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from core.classes import CLASS_NAMES
from core.imageio import TILE_SIZE
from core.progress import ProgressCallback

from .cache import TileCache, open_tile_cache
from .merge import MergeReport, merge_sources
from .overrides import Applied, apply_overrides, read_overrides
from .overrides import default_file as default_overrides_file
from .records import HELD_OUT, DataError, Record
from .sources import Source, read_source
from .spec import DataSpec
from .split import assign_splits, coverage_warnings, find_leakage


@dataclass
class HiriseData:
    sources: list[Source]
    records: list[Record]  # merged, split, readable
    merge_report: MergeReport
    split_method: str
    leakage: list[str]
    caches: dict[str, TileCache]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (source:path, reason)
    overrides: Applied | None = None  # label overrides applied while loading (issue 16), None when no file

    @property
    def coverage(self) -> list[str]:
        """One sentence per class that a split has no tile of (the Train page and the CLI repeat these)."""
        return coverage_warnings(self.records, CLASS_NAMES)

    @property
    def warnings(self) -> list[str]:
        """Every warning about the data: its sources' and its split's (`coverage`)."""
        return self.source_warnings + self.coverage

    @property
    def source_warnings(self) -> list[str]:
        """The warnings about the files themselves (sources, unreadable or converted tiles, overrides), not about
        how they were split."""
        out = [f"{s.name}: {w}" for s in self.sources for w in s.warnings]
        if self.unreadable:
            out.append(f"{len(self.unreadable)} unreadable tiles were skipped (e.g. {self.unreadable[0][0]}: "
                       f"{self.unreadable[0][1]})")
        if self.overrides is not None and self.overrides.unmatched:  # issue 16: label overrides
            out.append(self.overrides.describe())
        converted = sum(len(c.notes) for c in self.caches.values())
        if converted:
            example = next((f"{p}: {', '.join(n)}" for c in self.caches.values() for p, n in c.notes.items()), "")
            out.append(f"{converted} tiles were not 227x227 grayscale and were converted (e.g. {example})")
        return out

    def select(self, split: str | None = None, originals_only: bool = False) -> list[Record]:
        """Records of one split ('train', 'val', 'test'; None or 'all' for every split)."""
        return [r for r in self.records
                if (split in (None, "all") or r.split == split) and (r.is_original or not originals_only)]

    def recorded(self, manifest: dict, split: str) -> list[Record] | None:
        """The original tiles of a split as a checkpoint recorded it (`split_manifest`), in data order; None when
        the manifest names none, or when not every one of them is in this data (a recorded split is used whole
        or not at all)."""
        names = set((manifest.get(split) or {}).get("files") or ())
        found = [r for r in self.records if r.is_original and r.name in names]
        return found if names and len({r.name for r in found}) == len(names) else None

    def tiles(self, records: Sequence[Record]) -> np.ndarray:
        """An in-memory (N, H, W) uint8 array of the records' decoded tiles, in order."""
        size = next(iter(self.caches.values())).tiles.shape[-1]
        out = np.empty((len(records), size, size), dtype=np.uint8)
        by_source: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_source.setdefault(r.source, []).append(i)
        for name, idx in by_source.items():
            cache = self.caches[name]
            rows = cache.rows([records[i].path for i in idx])
            order = np.argsort(rows, kind="stable")  # read the memmap front to back
            out[np.asarray(idx)[order]] = cache.tiles[rows[order]]
        return out

    def labels(self, records: Sequence[Record]) -> np.ndarray:
        return np.fromiter((r.label for r in records), dtype=np.int64, count=len(records))

    def pixel_stats(self, records: Sequence[Record] | None = None) -> tuple[float, float]:
        """Mean and standard deviation of the pixels (in [0, 1]) of `records` (default: training tiles)."""
        records = self.select("train") if records is None else records
        if not records:
            raise DataError("no training tiles to compute pixel statistics from")
        # A 256-bin histogram of the uint8 pixels gives the exact mean and std without float copies.
        counts = np.zeros(256, dtype=np.int64)
        for start in range(0, len(records), 2048):
            counts += np.bincount(self.tiles(records[start:start + 2048]).ravel(), minlength=256)
        values = np.arange(256, dtype=np.float64) / 255.0
        count = counts.sum()
        mean = float((counts * values).sum() / count)
        total_sq = float((counts * values**2).sum())
        return mean, float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


class RecordTiles:
    """The tiles of some records, read from the tile cache one slice at a time, so that a pass over every tile
    of a large data set (evaluation, features) never holds them all in memory."""

    def __init__(self, data: HiriseData, records: Sequence[Record]):
        self.data, self.records = data, list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.data.tiles(self.records[index])


def load_dataset(spec: DataSpec | Sequence[str | Path], *, tile_size: int = TILE_SIZE,
                 on_progress: ProgressCallback | None = None,
                 label_overrides: str | Path | Literal[False] | None = None) -> HiriseData:
    """Read, merge, split and decode the folders or zips of `spec` (a bare list of paths: with the default
    merge and split) into `tile_size` tiles. Raises DataError with a clear message.

    `label_overrides`: a file of accepted label corrections (`core.data.overrides`), None for the default
    file (applied when it exists), False for none. They are applied after the split, so correcting a label
    never moves a tile between train, val and test."""
    if not isinstance(spec, DataSpec):
        spec = DataSpec(tuple(spec))
    paths = spec.paths
    if not paths:
        raise DataError("no data path given")
    sources: list[Source] = []
    for p in paths:
        src = read_source(p, keep_split_repeats=spec.keep_split_repeats)
        names = {s.name for s in sources}
        if src.name in names:  # two sources with one folder name: keep them apart
            i = 2
            while f"{src.name}#{i}" in names:
                i += 1
            src.name = f"{src.name}#{i}"
            src.records = [_renamed(r, src.name) for r in src.records]
        sources.append(src)
    merged, report = merge_sources(sources, spec.conflict_policy, on_progress)
    caches = {s.name: open_tile_cache(s, tile_size, on_progress=on_progress) for s in sources}
    readable, unreadable = [], []
    for src, rec in merged:
        reason = caches[src.name].unreadable.get(rec.path)
        if reason is None:
            readable.append(rec)
        else:
            unreadable.append((f"{src.name}:{rec.path}", reason))
    if not readable:
        raise DataError("no readable tile in " + ", ".join(str(p) for p in paths))
    records, method = assign_splits(readable, spec.split_mode, spec.val_fraction, spec.test_fraction, spec.split_seed,
                                    spec.cv_folds, spec.cv_fold)
    records, applied = _apply_label_overrides(records, label_overrides)
    return HiriseData(sources=sources, records=records, merge_report=report, split_method=method,
                      leakage=find_leakage(records), caches=caches, unreadable=unreadable, overrides=applied)


def _apply_label_overrides(records: list[Record], which: str | Path | Literal[False] | None
                           ) -> tuple[list[Record], Applied | None]:
    """Issue 16: the records with the overrides file's labels (OverridesError, a DataError, if it is malformed)."""
    if which is False:
        return records, None
    path = default_overrides_file() if which is None else Path(which)
    if which is None and not path.is_file():
        return records, None
    if not path.is_file():
        raise DataError(f"label overrides file not found: {path}")
    overrides = read_overrides(path)
    if not overrides and which is None:  # every override undone: the data is as published, and says so
        return records, None
    return apply_overrides(records, overrides, str(path))


def _renamed(record: Record, source_name: str) -> Record:
    return replace(record, source=source_name)


def split_manifest(data: HiriseData, splits: Sequence[str] = HELD_OUT) -> dict[str, dict[str, list[str]]]:
    """Which original files and observations are in each evaluation split: what a checkpoint records so
    that it is scored on exactly these tiles again (`HiriseData.recorded`)."""
    out = {}
    for split in splits:
        records = data.select(split, originals_only=True)
        out[split] = {"files": sorted(r.name for r in records),
                      "observations": sorted({r.observation for r in records if r.observation})}
    return out
