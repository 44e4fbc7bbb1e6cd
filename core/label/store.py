"""The labelled-tiles source the Label page writes: `labels.csv` + `tiles/`, a data source like any other (the
plain-tiles reader of `core.data` reads it), and `history.jsonl`, every decision in the order it was made.

One writer at a time: every change takes an exclusive `flock` on `.lock`, writes the tile (atomically), appends
its event to the history (flushed to disk), then rewrites `labels.csv` from the history (atomically). A crash
between two steps loses nothing: the history is the record, and labels.csv is rebuilt from it on the next write.
The same tile labelled twice keeps the last label in labels.csv and both in the history. A labels.csv changed by
hand (its digest no longer the one written last) or a damaged history is left exactly as it is, and every write
is refused with the reason until a person sorts it out."""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_path
from core.classes import CLASS_NAMES
from core.data.sources import STUDIO_STORE_MARK
from core.experiment.runs import now_iso
from core.scan.detections import csv_cell

LABELS = "labels.csv"
HISTORY = STUDIO_STORE_MARK  # its presence makes the folder read as studio-labelled tiles (core.data)
DIGEST = ".labels.csv.sha256"
TILES = "tiles"
COLUMNS = ("file", "label", "observation", "image", "x", "y", "size", "queue", "time")
MAX_ORIGINAL_BYTES = 8 * 2**20  # a tile's own file is kept up to this size (a 227 px JPEG is ~20 KB)
#: The classes a page counts as "rare so far": the thinnest in the training data (42, 37 and 167 originals).
RARE_CLASSES = ("impact ejecta", "spider", "dark dune")


class StoreError(OSError):
    """The store cannot take a label (read-only, changed by hand, damaged history): the message says why and
    nothing was changed."""


@dataclass(frozen=True)
class Decision:
    """One person's answer about one candidate of one queue: a class, or a skip."""

    queue: str
    candidate: int
    label: str | None  # a class name; None for a skip
    file: str | None  # tiles/<name>.png for a label
    event: int  # its line in the history (1-based)


class LabelStore:
    """A folder of tiles a person labelled, with the history of every decision."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def labels_path(self) -> Path:
        return self.folder / LABELS

    # ---- reading ---------------------------------------------------------------------------------------------
    def events(self) -> list[dict]:
        """Every event of the history, in order; StoreError naming the first damaged line."""
        path = self.folder / HISTORY
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: cannot be read ({exc}); nothing was changed") from None
        events = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict) or event.get("action") not in ("label", "skip", "undo"):
                    raise ValueError("not a label, skip or undo event")
            except ValueError as exc:
                raise StoreError(f"{path} line {lineno} is damaged ({exc}); the store was left as it is. Repair or "
                                 "remove that line to go on labelling") from None
            events.append(event)
        return events

    def problem(self) -> str | None:
        """Why the store cannot take labels now (None when it can): a damaged history, or a labels.csv edited by
        hand since the studio wrote it."""
        try:
            self.events()
        except StoreError as exc:
            return str(exc)
        return self._edited()

    def _edited(self) -> str | None:
        labels, digest = self.labels_path, self.folder / DIGEST
        if not labels.exists():
            return None
        try:
            written = digest.read_text().strip()
        except OSError:
            return (f"{labels} was not written by the studio's labelling (no record of it); the Label page writes "
                    "only into a store of its own. Choose another folder, or move that labels.csv away")
        if hashlib.sha256(labels.read_bytes()).hexdigest() != written:
            return (f"{labels} was changed outside the studio since it was last written; it was left as it is. "
                    f"Move it away to rebuild it from {HISTORY}, which keeps every label")
        return None

    def decisions(self, queue: str | None = None) -> dict[tuple[str, int], Decision]:
        """The standing decision for each (queue, candidate): the last label or skip that no undo took back."""
        return _replay(self.events(), queue)

    def labelled(self) -> dict[str, dict]:
        """file -> its labels.csv row (the last label of each tile)."""
        return _rows(self.events())

    # ---- writing ---------------------------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[list[dict]]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.folder / ".lock", "a+")  # noqa: SIM115 (held for the block)
        except OSError as exc:
            raise StoreError(f"cannot write labels into {self.folder}: {exc.strerror or exc}; nothing was "
                             "saved") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                events = self.events()  # StoreError naming a damaged line
                problem = self._edited()
                if problem:
                    raise StoreError(problem)
                yield events
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _append(self, events: list[dict], event: dict) -> None:
        """Record `event` (flushed to disk) and rebuild labels.csv from the history it ends."""
        line = json.dumps(event, sort_keys=True) + "\n"
        with open(self.folder / HISTORY, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        events.append(event)
        self._rewrite_labels(events)

    def _rewrite_labels(self, events: list[dict]) -> None:
        latest = _rows(events)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: csv_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in latest.values())
        data = buffer.getvalue().encode()
        with atomic_path(self.labels_path) as tmp:
            tmp.write_bytes(data)
        with atomic_path(self.folder / DIGEST) as tmp:
            tmp.write_text(hashlib.sha256(data).hexdigest() + "\n")

    def label(self, queue: str, candidate: int, label: str, tile: np.ndarray, *, image: str, x: int, y: int,
              size: int, observation: str | None, original: Path | None = None) -> Decision:
        """Save one label at once: the tile, its event, the rebuilt labels.csv. `original`: the image file when the
        window is all of it; its own bytes are kept (a data set holding the same file then meets it by content)."""
        if label not in CLASS_NAMES:
            raise ValueError(f"unknown class {label!r}")
        from PIL import Image

        keep = original is not None and original.is_file() and original.stat().st_size <= MAX_ORIGINAL_BYTES
        name = f"{TILES}/{tile_name(image, x, y, size)}"
        if keep:
            name = name.removesuffix(".png") + original.suffix.lower()
        try:
            with self._writing() as events:
                with atomic_path(self.folder / name) as tmp:
                    if keep:
                        tmp.write_bytes(original.read_bytes())
                    else:
                        Image.fromarray(np.asarray(tile, np.uint8)).save(tmp, format="PNG")
                self._append(events, {"action": "label", "queue": queue, "candidate": int(candidate),
                                      "label": label, "file": name, "observation": observation, "image": image,
                                      "x": int(x), "y": int(y), "size": int(size), "time": now_iso()})
                decision = Decision(queue, int(candidate), label, name, len(events))
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot save the label into {self.folder}: {exc.strerror or exc}") from None
        return decision

    def skip(self, queue: str, candidate: int) -> None:
        try:
            with self._writing() as events:
                self._append(events, {"action": "skip", "queue": queue, "candidate": int(candidate),
                                      "time": now_iso()})
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot save the skip into {self.folder}: {exc.strerror or exc}") from None

    def undo(self, queue: str) -> Decision | None:
        """Take back the last standing decision made in `queue` (None when there is none). The tile file stays
        (another queue may have labelled the same window); labels.csv no longer lists it unless another label
        stands for it."""
        try:
            with self._writing() as events:
                standing = sorted(_replay(events, queue).values(), key=lambda d: d.event)
                if not standing:
                    return None
                last = standing[-1]
                self._append(events, {"action": "undo", "queue": queue, "event": last.event, "time": now_iso()})
                return last
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot save the undo into {self.folder}: {exc.strerror or exc}") from None

def _rows(events: list[dict]) -> dict[str, dict]:
    """file -> its labels.csv row: the last standing label of each tile (a tile labelled from two queues: the
    last label wins)."""
    rows: dict[str, dict] = {}
    for d in sorted(_replay(events, None).values(), key=lambda d: d.event):
        if d.label is None:
            continue
        e = events[d.event - 1]
        rows[d.file] = {"file": d.file, "label": d.label, "observation": e.get("observation") or "",
                        "image": e.get("image", ""), "x": e.get("x", ""), "y": e.get("y", ""),
                        "size": e.get("size", ""), "queue": d.queue, "time": e.get("time", "")}
    return rows


def _replay(events: list[dict], queue: str | None) -> dict[tuple[str, int], Decision]:
    undone = {int(e.get("event", 0)) for e in events if e["action"] == "undo"}
    standing: dict[tuple[str, int], Decision] = {}
    for number, e in enumerate(events, 1):
        if e["action"] == "undo" or number in undone or (queue is not None and e.get("queue") != queue):
            continue
        key = (str(e.get("queue")), int(e.get("candidate", -1)))
        standing[key] = Decision(key[0], key[1], e.get("label") if e["action"] == "label" else None,
                                 e.get("file"), number)
    # an undo takes back one event; the decision before it (if any) stands again
    return standing


def tile_name(image: str, x: int, y: int, size: int) -> str:
    """A window's file name: the image's stem (made safe), a digest of its full path (two images may share a
    stem), and the window. The same window of the same image always gets the same name."""
    stem = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in Path(image).stem)[:60] or "image"
    digest = hashlib.sha1(str(image).encode()).hexdigest()[:6]
    return f"{stem}-{digest}-x{int(x)}-y{int(y)}-s{int(size)}.png"



def progress_line(queue, store: LabelStore) -> str:
    """"23 of 100 labelled, 4 rare so far (2 skipped)": how far a queue is, from the store's standing decisions."""
    decided = [d for (q, _), d in store.decisions(queue.name).items() if q == queue.name]
    labels = [d.label for d in decided if d.label is not None]
    rare = sum(label in RARE_CLASSES for label in labels)
    skipped = len(decided) - len(labels)
    return (f"{len(labels)} of {len(queue.candidates)} labelled, {rare} rare so far"
            + (f" ({skipped} skipped)" if skipped else ""))
