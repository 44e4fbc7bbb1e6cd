"""Read one data source: the official v3.2 or v3 layout (folder or zip), or plain labelled tiles."""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from core.classes import CLASS_NAMES, class_index
from core.imageio import IMAGE_SUFFIXES

from .records import SPLITS, DataError, Record, parse_name
from .storage import Storage, safe_relpath


@dataclass(frozen=True)
class Layout:
    """File names of one official version of the data set."""

    version: str
    image_dir: str
    labels: str
    split_file: str | None
    classmap: str


LAYOUTS = (
    Layout("3.2", "map-proj-v3_2", "labels-map-proj_v3_2.txt", "labels-map-proj_v3_2_train_val_test.txt",
           "landmarks_map-proj-v3_2_classmap.csv"),
    Layout("3", "map-proj-v3", "labels-map-proj-v3.txt", None, "landmarks_map-proj-v3_classmap.csv"),
)


#: The file that marks a folder as the Label page's labelled-tiles store (`core.label.store`, its history).
STUDIO_STORE_MARK = "history.jsonl"


@dataclass
class Source:
    """The records of one folder or zip, and everything odd found while reading it."""

    name: str
    location: str
    kind: str  # "official v3.2", "official v3", "plain tiles", "labelled in the studio"
    version: str
    storage: Storage
    records: list[Record]
    missing: list[str] = field(default_factory=list)  # listed in a label file, file absent
    repeats: Counter = field(default_factory=Counter)  # split-file repeats per class id, dropped or kept
    unlabelled: int = 0  # image files present that no label file names
    warnings: list[str] = field(default_factory=list)


def read_source(path: str | Path, keep_split_repeats: bool = False) -> Source:
    """Open a folder or zip and read it with whichever layout it has."""
    storage = Storage.open(path)
    for layout in LAYOUTS:
        for marker in filter(None, (layout.split_file, layout.labels)):
            root = storage.find(marker)
            if root is not None:
                return _read_official(storage.at(_join(storage.root, root)), Path(path), layout, keep_split_repeats)
    root = storage.find("labels.csv", max_depth=1)
    if root is not None:
        return _read_plain_csv(storage.at(_join(storage.root, root)), Path(path))
    class_dirs = _class_dirs(storage)
    if class_dirs:
        return _read_class_folders(storage, Path(path), class_dirs)
    raise DataError(
        f"{path}: no HiRISE data found. Expected the official layout "
        f"({LAYOUTS[0].labels} and {LAYOUTS[0].image_dir}/, or the v3 names), a labels.csv "
        f"(file,label), or sub-folders named after the classes ({', '.join(CLASS_NAMES)})."
    )


def _join(a: str, b: str) -> str:
    return "/".join(p for p in (a, b) if p)


def _text(storage: Storage, rel: str) -> str:
    try:
        return storage.read(rel).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{storage.describe()}/{rel}: not a text file ({exc})") from exc


def _check_classmap(storage: Storage, layout: Layout, warnings: list[str]) -> None:
    if not storage.exists(layout.classmap):
        warnings.append(f"{layout.classmap} not found; assuming the standard 8 classes")
        return
    for lineno, row in enumerate(csv.reader(io.StringIO(_text(storage, layout.classmap))), 1):
        if not row or not "".join(row).strip():
            continue
        where = f"{storage.describe()}/{layout.classmap} line {lineno}"
        if len(row) != 2:
            raise DataError(f"{where}: expected 'id,name', got {','.join(row)!r}")
        idx, name = row[0].strip(), row[1].strip()
        if not idx.isdigit() or int(idx) >= len(CLASS_NAMES) or CLASS_NAMES[int(idx)] != name.lower():
            raise DataError(f"{where}: class {idx},{name} does not match the HiRISE class list {list(CLASS_NAMES)}")


def _parse_label_lines(storage: Storage, rel: str, with_split: bool) -> list[tuple[str, int, str | None, int]]:
    """Parse `filename label [split]` lines; raise on the first malformed one, naming file and line."""
    rows = []
    expected = "'filename label split'" if with_split else "'filename label'"
    for lineno, line in enumerate(_text(storage, rel).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        where = f"{storage.describe()}/{rel} line {lineno}"
        if len(parts) != (3 if with_split else 2):
            raise DataError(f"{where}: malformed line {line.strip()!r}; expected {expected}")
        name, label = parts[0], parts[1]
        if not label.lstrip("-").isdigit():
            raise DataError(f"{where}: label {label!r} is not a class id")
        if not 0 <= int(label) < len(CLASS_NAMES):
            raise DataError(f"{where}: unknown class id {label} (expected 0..{len(CLASS_NAMES) - 1})")
        split = parts[2] if with_split else None
        if split is not None and split not in SPLITS:
            raise DataError(f"{where}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        rows.append((safe_relpath(name, where), int(label), split, lineno))
    return rows


def _read_official(storage: Storage, path: Path, layout: Layout, keep_repeats: bool) -> Source:
    warnings: list[str] = []
    _check_classmap(storage, layout, warnings)
    labels: dict[str, int] = {}
    if storage.exists(layout.labels):
        for name, label, _, lineno in _parse_label_lines(storage, layout.labels, with_split=False):
            if name in labels and labels[name] != label:
                raise DataError(f"{storage.describe()}/{layout.labels} line {lineno}: {name} labelled twice, differently")
            labels[name] = label
    split_rows: list[tuple[str, int, str | None, int]] = []
    if layout.split_file and storage.exists(layout.split_file):
        split_rows = _parse_label_lines(storage, layout.split_file, with_split=True)
    elif not labels:
        raise DataError(f"{storage.describe()}: found no label file ({layout.labels})")

    present = set(storage.list_dir(layout.image_dir))
    if not present:
        raise DataError(f"{storage.describe()}: image folder {layout.image_dir}/ is missing or empty")

    rows: list[tuple[str, int, str | None]] = []
    repeats: Counter = Counter()
    if split_rows:
        seen: dict[str, tuple[int, str | None]] = {}
        for name, label, split, lineno in split_rows:
            if name in seen:
                if seen[name] != (label, split):
                    raise DataError(f"{storage.describe()}/{layout.split_file} line {lineno}: {name} repeated with "
                                    f"another label or split")
                repeats[label] += 1
                if keep_repeats:
                    rows.append((name, label, split))
                continue
            seen[name] = (label, split)
            rows.append((name, label, split))
        disagree = [n for n, (lab, _) in seen.items() if n in labels and labels[n] != lab]
        if disagree:
            warnings.append(f"{len(disagree)} files have different labels in {layout.labels} and "
                            f"{layout.split_file}; the split file wins (e.g. {disagree[0]})")
        rows += [(n, lab, None) for n, lab in labels.items() if n not in seen]
    else:
        rows = [(n, lab, None) for n, lab in labels.items()]
    if repeats:
        warnings.append(f"the split file repeats {sum(repeats.values())} rows (minority-class up-sampling); "
                        + ("kept" if keep_repeats else "dropped (to keep them: tick \"Keep the split file's repeated rows\" "
                                                       "under Merge and split on the Dataset page, or "
                                                       "--keep-split-repeats)"))

    records, missing = [], []
    listed = set()
    for name, label, split in rows:
        listed.add(name)
        if name not in present:
            missing.append(name)
            continue
        parts = parse_name(name)
        records.append(Record(source=path.name, path=f"{layout.image_dir}/{name}", name=name, label=label,
                              split=split, observation=parts.observation, landmark=parts.landmark, aug=parts.aug,
                              version=layout.version))
    missing = sorted(set(missing))
    if missing:
        warnings.append(f"{len(missing)} labelled files are missing from {layout.image_dir}/ and were skipped "
                        f"(e.g. {missing[0]})")
    unlabelled = len({p for p in present if p.lower().endswith(IMAGE_SUFFIXES)} - listed)
    if not records:
        raise DataError(f"{storage.describe()}: no labelled tile was found (the data set is empty)")
    return Source(name=path.name, location=str(path), kind=f"official v{layout.version}", version=layout.version,
                  storage=storage, records=records, missing=missing, repeats=repeats, unlabelled=unlabelled,
                  warnings=warnings)


def _plain_record(path: Path, rel: str, label: int, observation: str | None = None, added: bool = False) -> Record:
    """A plain tile; its observation from the labels.csv column when given, else from a HiRISE-style name."""
    parts = parse_name(rel)
    return Record(source=path.name, path=rel, name=rel.rsplit("/", 1)[-1], label=label,
                  observation=observation or parts.observation, landmark=parts.landmark, aug=parts.aug, added=added)


def _read_plain_csv(storage: Storage, path: Path) -> Source:
    """A researcher's own tiles: `labels.csv` with `file,label` (label as id or class name), and optionally more
    columns after them: `observation` groups the tile with its observation (the Label page's store writes it);
    the others are kept for people and ignored here."""
    text = _text(storage, "labels.csv")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    where0 = f"{storage.describe()}/labels.csv"
    if header is None or [h.strip().lower() for h in header[:2]] != ["file", "label"]:
        raise DataError(f"{where0} line 1: expected the header 'file,label', got {','.join(header or [])!r}")
    columns = [h.strip().lower() for h in header]
    obs_column = columns.index("observation") if "observation" in columns else None
    studio = storage.exists(STUDIO_STORE_MARK)  # the Label page's store: its tiles never move the others' folds
    records, missing, warnings = [], [], []
    first_row: dict[str, tuple[int, int]] = {}  # file -> (label, line) where it was first named
    repeated = 0
    for lineno, row in enumerate(reader, 2):
        if not row or not "".join(row).strip():
            continue
        where = f"{where0} line {lineno}"
        if len(row) != len(columns):
            raise DataError(f"{where}: malformed line {','.join(row)!r}; expected {len(columns)} fields "
                            f"({','.join(columns)})")
        rel = safe_relpath(row[0], where)
        try:
            label = class_index(row[1])
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from exc
        if rel in first_row:  # as in the official layout: one file, one label
            first_label, first_line = first_row[rel]
            if first_label != label:
                raise DataError(f"{where}: {rel} is labelled {CLASS_NAMES[label]} here and {CLASS_NAMES[first_label]} "
                                f"on line {first_line}; a file takes one label")
            repeated += 1
            continue
        first_row[rel] = (label, lineno)
        if not storage.exists(rel):
            missing.append(rel)
            continue
        observation = row[obs_column].strip() if obs_column is not None else ""
        if observation and (len(observation) > 64 or not all(ch.isalnum() or ch in "_-." for ch in observation)):
            raise DataError(f"{where}: observation {observation[:40]!r} is not an observation id (letters, digits, "
                            "'_', '-' and '.', at most 64)")
        records.append(_plain_record(path, rel, label, observation or None, added=studio))
    if missing:
        warnings.append(f"{len(missing)} files named in labels.csv are missing and were skipped (e.g. {missing[0]})")
    if repeated:
        warnings.append(f"labels.csv names {repeated} files again with the same label; the repeats were dropped")
    if not records:
        raise DataError(f"{where0}: no labelled tile was found (the data set is empty)")
    return Source(name=path.name, location=str(path), kind="labelled in the studio" if studio else "plain tiles",
                  version="", storage=storage, records=records, missing=sorted(missing), warnings=warnings)


def _class_dirs(storage: Storage) -> dict[str, int]:
    found = {}
    for d in storage.subdirs(""):
        try:
            found[d] = class_index(d)
        except ValueError:
            continue
    return found


def _read_class_folders(storage: Storage, path: Path, class_dirs: dict[str, int]) -> Source:
    records = [
        _plain_record(path, f"{d}/{f}", label)
        for d, label in class_dirs.items()
        for f in storage.list_dir(d)
        if f.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not records:
        raise DataError(f"{storage.describe()}: the class folders hold no image (the data set is empty)")
    return Source(name=path.name, location=str(path), kind="plain tiles", version="", storage=storage, records=records)
