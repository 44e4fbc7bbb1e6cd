"""Merge several sources into one record list: de-duplicate by name and content, resolve label conflicts."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.atomic import atomic_path
from core.classes import CLASS_NAMES
from core.progress import ProgressCallback, track
from core.settings import CACHE_DIR

from .records import DataError, Record
from .sources import Source
from .storage import UnreadableFile, content_digest

#: How a label conflict between two copies of the same tile is settled.
CONFLICT_POLICIES = ("newest", "first", "drop")


@dataclass
class MergeReport:
    """Every duplicate dropped and every label conflict, so nothing disappears silently."""

    duplicates_by_name: list[tuple[str, str, str]] = field(default_factory=list)  # (name, kept source, dropped source)
    duplicates_by_content: list[tuple[str, str]] = field(default_factory=list)  # (kept, dropped) as source:path
    conflicts: list[dict] = field(default_factory=list)  # {name, labels: {source: label}, kept: label | None}

    def lines(self) -> list[str]:
        out = [f"duplicates dropped by file name: {len(self.duplicates_by_name)}",
               f"duplicates dropped by content: {len(self.duplicates_by_content)}",
               f"label conflicts: {len(self.conflicts)}"]
        for c in self.conflicts:
            labels = ", ".join(f"{s}={CLASS_NAMES[lab]}" for s, lab in c["labels"].items())
            kept = "dropped" if c["kept"] is None else f"kept {CLASS_NAMES[c['kept']]}"
            out.append(f"  conflict {c['name']}: {labels} -> {kept}")
        return out


def _version_rank(version: str) -> tuple[int, ...]:
    """'3.2' > '3' > '' (plain tiles rank lowest: a named official file beats an unnamed copy)."""
    parts = [int(p) for p in version.split(".")] if version else [-1]
    return tuple(parts + [0] * (3 - len(parts)))


def content_hashes(source: Source, on_progress: ProgressCallback | None = None) -> dict[str, str]:
    """sha1 of every record's bytes, memoised on disk by the files' size and mtime (or zip CRC)."""
    paths = sorted({r.path for r in source.records})
    key = content_digest([source.storage.describe()] + [f"{p}={source.storage.stat_key(p)}" for p in paths])
    memo = CACHE_DIR / "hashes" / f"{key}.json"
    if memo.is_file():
        try:
            return json.loads(memo.read_text())
        except (OSError, ValueError):
            pass
    hashes = {p: _digest(source, p) for p in track(paths, len(paths), f"hashing {source.name}", on_progress)}
    try:
        with atomic_path(memo) as tmp:
            tmp.write_text(json.dumps(hashes))
    except OSError:
        pass  # a read-only cache only costs time
    return hashes


def _digest(source: Source, path: str) -> str:
    """The file's sha1, read in chunks. A file that cannot be read gets a key of its own (it is a copy of
    nothing); the tile cache skips it and records why."""
    try:
        return source.storage.digest(path)
    except UnreadableFile:
        return "unreadable:" + hashlib.sha1(f"{source.storage.describe()}/{path}".encode()).hexdigest()


def merge_sources(sources: Sequence[Source], policy: str = "newest",
                  on_progress: ProgressCallback | None = None) -> tuple[list[tuple[Source, Record]], MergeReport]:
    """Return (source, record) pairs with duplicates removed, and a report of what was dropped.

    Same file name in two sources = the same tile in two versions. Same bytes under two names = a copy
    (e.g. a renamed tile). Either way one copy is kept: by `policy`, the newest version (default),
    the first source listed, or neither when their labels disagree ("drop").
    """
    if policy not in CONFLICT_POLICIES:
        raise DataError(f"unknown conflict policy {policy!r} (expected one of {', '.join(CONFLICT_POLICIES)})")
    report = MergeReport()
    if len(sources) == 1:
        return [(sources[0], r) for r in sources[0].records], report

    order = {id(s): i for i, s in enumerate(sources)}

    def preference(item: tuple[Source, Record]) -> tuple:
        src, _ = item
        if policy == "newest":
            return (tuple(-v for v in _version_rank(src.version)), order[id(src)])
        return (order[id(src)],)

    hashes = {id(s): content_hashes(s, on_progress) for s in sources}
    # Group copies of the same tile: by file name for named tiles, and by content for all.
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(k):
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def union(a, b):
        parent[find(a)] = find(b)

    first_by_name: dict[str, tuple[int, str]] = {}
    first_by_hash: dict[str, tuple[int, str]] = {}
    items: dict[tuple[int, str], tuple[Source, Record]] = {}
    for src in sources:
        for rec in src.records:
            key = (id(src), rec.path)
            if key in items:
                continue  # a kept split-file repeat: not a duplicate across sources
            items[key] = (src, rec)
            find(key)
            if rec.observation is not None:
                union(key, first_by_name.setdefault(rec.name, key))
            union(key, first_by_hash.setdefault(hashes[id(src)][rec.path], key))

    groups: dict[tuple[int, str], list[tuple[Source, Record]]] = {}
    for key, item in items.items():
        groups.setdefault(find(key), []).append(item)

    kept_keys: set[tuple[int, str]] = set()
    for members in groups.values():
        members.sort(key=preference)
        winner = members[0]
        labels = {f"{s.name}:{r.name}": r.label for s, r in members}
        if len(set(labels.values())) > 1:
            drop_all = policy == "drop"
            report.conflicts.append({"name": winner[1].name, "labels": labels,
                                     "kept": None if drop_all else winner[1].label})
            if drop_all:
                continue
        kept_keys.add((id(winner[0]), winner[1].path))
        for src, rec in members[1:]:
            if rec.name == winner[1].name:
                report.duplicates_by_name.append((rec.name, winner[0].name, src.name))
            else:
                report.duplicates_by_content.append((f"{winner[0].name}:{winner[1].path}", f"{src.name}:{rec.path}"))

    merged = [(src, rec) for src in sources for rec in src.records if (id(src), rec.path) in kept_keys]
    return merged, report
