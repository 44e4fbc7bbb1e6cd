"""Label overrides: corrections a researcher accepted in the label review, kept apart from the data.

The original label files are never edited. Accepted changes live in one CSV (default
`label_overrides.csv` in the project folder, beside the app's state file; `HIRISE_LABEL_OVERRIDES` moves
it), with the columns `file,label[,previous,note]`: `file` is a tile's file name (the identity the data
layer de-duplicates by), `label` a class name or id. The data layer applies it when loading
(`core.data.load_dataset`), the data summary shows how many labels it changed and training logs it.
"""
from __future__ import annotations

import csv
import fcntl
import io
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.atomic import atomic_path
from core.classes import CLASS_NAMES

from .records import DataError, Record

COLUMNS = ("file", "label", "previous", "note")
_LOCK = threading.Lock()  # Streamlit sessions are threads of one process; flock guards other processes


class OverridesError(DataError):
    """A malformed overrides file; the message names the file and the line."""


@dataclass(frozen=True)
class Override:
    file: str
    label: int
    previous: str = ""  # the label the researcher saw (for the record; not checked)
    note: str = ""


def default_file() -> Path:
    from core.settings import LABEL_OVERRIDES_FILE
    return LABEL_OVERRIDES_FILE


def parse_label(value: str, where: str) -> int:
    text = value.strip()
    if text.isdigit() and int(text) < len(CLASS_NAMES):
        return int(text)
    lowered = [c.lower() for c in CLASS_NAMES]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise OverridesError(f"{where}: unknown label {value!r} (expected a class id 0-{len(CLASS_NAMES) - 1} or one of "
                         f"{', '.join(CLASS_NAMES)})")


def parse_overrides(text: str, name: str = "label_overrides.csv") -> dict[str, Override]:
    """file name -> Override. Raises OverridesError naming the line for anything malformed."""
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return {}
    header = [c.strip().lower() for c in rows[0]]
    if "file" not in header or "label" not in header:
        raise OverridesError(f"{name}: line 1 must be a header with the columns file,label (optionally previous,note); "
                             f"found {','.join(rows[0])!r}")
    col = {c: header.index(c) for c in COLUMNS if c in header}
    out: dict[str, Override] = {}
    for line, row in enumerate(rows[1:], 2):
        where = f"{name} line {line}"
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        file = row[col["file"]].strip()
        if not file:
            raise OverridesError(f"{where}: empty file name")
        if "/" in file or "\\" in file or file in (".", ".."):
            raise OverridesError(f"{where}: {file!r} is not a plain file name (overrides name tiles by file name only)")
        label = parse_label(row[col["label"]], where)
        if file in out and out[file].label != label:
            raise OverridesError(f"{where}: {file} is overridden twice, to {CLASS_NAMES[out[file].label]} and "
                                 f"{CLASS_NAMES[label]}")
        out[file] = Override(file, label, row[col["previous"]].strip() if "previous" in col else "",
                             row[col["note"]].strip() if "note" in col else "")
    return out


def read_overrides(path: Path | None = None) -> dict[str, Override]:
    """The overrides in `path` (default file); {} when there is no file."""
    path = Path(path) if path else default_file()
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OverridesError(f"{path}: cannot be read as UTF-8 text ({exc})") from exc
    return parse_overrides(text, str(path))


def format_overrides(overrides: Iterable[Override]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for o in sorted(overrides, key=lambda o: o.file):
        w.writerow([o.file, CLASS_NAMES[o.label], o.previous, o.note])
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def update_overrides(add: Iterable[Override] = (), remove: Iterable[str] = (), path: Path | None = None) -> dict[str, Override]:
    """Add (or replace) and remove overrides in one locked read-modify-write; returns what the file now holds.
    A malformed existing file is an OverridesError: it is never overwritten (nothing the researcher wrote is lost)."""
    path = Path(path) if path else default_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = read_overrides(path)
            for o in add:
                if not 0 <= o.label < len(CLASS_NAMES):
                    raise OverridesError(f"label id {o.label} out of range for {o.file}")
                current[o.file] = o
            for f in remove:
                current.pop(f, None)
            _write_atomic(path, format_overrides(current.values()))
            return current
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class Applied:
    """What applying overrides did: for the data summary and the run's record."""

    file: str  # the overrides file
    changed: dict[str, tuple[int, int]]  # file name -> (label in the data, label now)
    unchanged: int  # overrides that matched a tile already holding that label
    unmatched: list[str]  # overrides naming no tile of this data

    def describe(self) -> str:
        parts = [f"{len(self.changed)} label(s) changed by {self.file}"]
        if self.unchanged:
            parts.append(f"{self.unchanged} already matched")
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} name no tile here (e.g. {self.unmatched[0]})")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"file": self.file, "changed": {f: [CLASS_NAMES[a], CLASS_NAMES[b]] for f, (a, b) in self.changed.items()},
                "unchanged": self.unchanged, "unmatched": self.unmatched}


def apply_overrides(records: list[Record], overrides: dict[str, Override], file: str) -> tuple[list[Record], Applied]:
    """The records with overridden labels (by file name), and what changed. Records are never edited in place."""
    from dataclasses import replace
    out, changed, unchanged, seen = [], {}, 0, set()
    for r in records:
        o = overrides.get(r.name)
        if o is None:
            out.append(r)
            continue
        seen.add(r.name)
        if o.label == r.label:
            unchanged += 1
            out.append(r)
        else:
            changed[r.name] = (r.label, o.label)
            out.append(replace(r, label=o.label))
    return out, Applied(file, changed, unchanged, sorted(set(overrides) - seen))
