"""A run is a folder. This module is the one place that knows its files and reads and writes them.

    config.json     the RunConfig, as given
    status.json     state, pid, times, epoch, step, error (rewritten atomically)
    metrics.jsonl   one JSON object a line: {"kind": "step", ...} every few steps, {"kind": "epoch", ...}
    train.log       everything the training process printed
    best.pt         checkpoint of the best epoch (by the run's early-stopping metric)
    last.pt         checkpoint of the last finished epoch, with optimizer state for resuming
    eval_val.json   evaluation of best.pt on the validation split, written when the run completes
    oof_files.json  a cross-validation fold's predictions on every file of its held-out observations, as sent and
                    averaged over the 8 flips and turns (core.experiment.cv_files)
    splits.json     the files and observations of its validation and test splits (also in each checkpoint)
    label_overrides.json  the label corrections (core.data.overrides) applied to its data, when there were any
    lr_find.json    the learning-rate range test, for runs launched as an LR finder
    CANCEL          present when a cancel was requested
    run.lock        locked (flock) by the run's one trainer for its whole life, queued time included
    notes.json      the researcher's note and tags (the app writes it; training never reads it)
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.atomic import atomic_path
from core.settings import RUNS_DIR

ACTIVE_STATES = ("queued", "running")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write through a temporary file of a unique name (threads of one process write side by side), then
    rename it over `path`: readers see the old file or the new one, never half of either. Strict JSON: numpy
    values become plain ones, NaN and infinities None (`jsonable`)."""
    text = json.dumps(jsonable(data), indent=indent, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def jsonable(obj: Any) -> Any:
    """Plain Python types, with NaN/inf as None: strict JSON that every reader (and the app) accepts."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # a numpy array or scalar
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


_UPDATE_LOCKS: dict[Path, threading.Lock] = {}
_UPDATE_LOCKS_GUARD = threading.Lock()


def update_json(path: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Read, change and rewrite a JSON object file, one thread of this process at a time (Streamlit sessions
    are threads: two unguarded read-modify-writes lose each other's keys). Returns the object written."""
    with _UPDATE_LOCKS_GUARD:
        lock = _UPDATE_LOCKS.setdefault(Path(path).absolute(), threading.Lock())
    with lock:
        data = read_json(path, {})
        data = data if isinstance(data, dict) else {}
        data.update(changes)
        write_json_atomic(path, data)
        return data


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


@dataclass(frozen=True)
class Run:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    config_file = property(lambda self: self.path / "config.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    log_file = property(lambda self: self.path / "train.log")
    best_checkpoint = property(lambda self: self.path / "best.pt")
    last_checkpoint = property(lambda self: self.path / "last.pt")
    eval_file = property(lambda self: self.path / "eval_val.json")
    oof_files_file = property(lambda self: self.path / "oof_files.json")  # a CV fold's every held-out file
    lr_find_file = property(lambda self: self.path / "lr_find.json")
    splits_file = property(lambda self: self.path / "splits.json")
    label_overrides_file = property(lambda self: self.path / "label_overrides.json")
    cancel_file = property(lambda self: self.path / "CANCEL")
    lock_file = property(lambda self: self.path / "run.lock")
    notes_file = property(lambda self: self.path / "notes.json")

    def notes(self) -> dict[str, Any]:
        """The researcher's note and tags: {"note": str, "tags": [str]} (empty when none were given)."""
        data = read_json(self.notes_file, {})
        data = data if isinstance(data, dict) else {}
        tags = data.get("tags") if isinstance(data.get("tags"), list) else []
        return {"note": str(data.get("note") or ""), "tags": [str(t) for t in tags]}

    def save_notes(self, note: str, tags: list[str]) -> dict[str, Any]:
        """Keep a note and tags in notes.json, a file of their own: status.json is the trainer's, config.json
        says what was trained, and both stay as they were."""
        return update_json(self.notes_file, {"note": note.strip(), "tags": parse_tags(",".join(tags))})

    def add_tag(self, tag: str, note: str = "") -> dict[str, Any]:
        """Tag the run as part of something (a grid, a cross-validation), and give it `note` when it has none."""
        notes = self.notes()
        return self.save_notes(notes["note"] or note, notes["tags"] + [tag])

    def status(self) -> dict[str, Any]:
        return read_json(self.status_file, {}) or {}

    def update_status(self, **changes: Any) -> dict[str, Any]:
        """Change some fields of status.json. Its owner is the run's trainer while one lives (see RunLock);
        readers never write it."""
        return update_json(self.status_file, {**changes, "updated_at": now_iso()})

    def begin(self, config: dict[str, Any] | None = None, kind: str = "train", resume: bool = False,
              **status: Any) -> dict[str, Any]:
        """The one way a run is queued: its config (when given), then `queued` in status.json with when and what,
        clearing what an earlier attempt left (error, end, trainer). A resume keeps when the run was first queued
        (`queued_at`) and notes `resumed_at`; the queue orders jobs by the later of the two."""
        if config is not None:
            self.save_config(config)
        stamp = "resumed_at" if resume and self.status().get("queued_at") else "queued_at"
        return self.update_status(state="queued", **{stamp: now_iso()}, kind=kind, error=None, ended_at=None,
                                  **{"pid": None, **status})

    def config(self) -> dict[str, Any]:
        return read_json(self.config_file, {}) or {}

    def save_config(self, values: dict[str, Any]) -> None:
        """Write config.json atomically: the app, and a trainer refused by the run lock, read it at any time."""
        write_json_atomic(self.config_file, values)

    def append_metrics(self, row: dict[str, Any]) -> dict[str, Any]:
        """Append `row`, time-stamped; returns the row as written."""
        row = {"time": round(time.time(), 3), **row}
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def keep_metrics_through(self, epoch: int) -> None:
        """On resume, forget the rows after `epoch` (those of the epoch that was interrupted: it is trained
        again), atomically: a reader sees the old rows or the new, never a half-written file."""
        rows = [r for r in self.metrics() if r.get("epoch", 0) <= epoch]
        with atomic_path(self.metrics_file) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def save_splits(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.splits_file, manifest)

    def save_lr_find(self, result: dict[str, Any]) -> None:
        write_json_atomic(self.lr_find_file, result)

    def save_label_overrides(self, applied: dict[str, Any]) -> None:
        """The label corrections this run trained with (issue 16)."""
        write_json_atomic(self.label_overrides_file, applied)

    def save_checkpoint(self, which: str, payload: dict[str, Any]) -> Path:
        """best.pt (the kept epoch, later calibrated by the lifecycle) or last.pt (every epoch, to resume), written
        atomically (core.checkpoint_file.save_checkpoint)."""
        from core.checkpoint_file import save_checkpoint  # torch, imported there: only a trainer writes checkpoints

        path = {"best": self.best_checkpoint, "last": self.last_checkpoint}[which]
        return save_checkpoint(path, payload)

    def save_evaluation(self, report: dict[str, Any]) -> None:
        """eval_val.json: the kept model's evaluation on the validation split (core.evaluate's report)."""
        write_json_atomic(self.eval_file, report, indent=None)

    def save_oof_files(self, payload: dict[str, Any]) -> Path:
        """oof_files.json: a cross-validation fold's predictions on every file of its held-out observations."""
        write_json_atomic(self.oof_files_file, payload)
        return self.oof_files_file

    def request_cancel(self) -> None:
        """CANCEL: every trainer checks it (a queued job while it waits, a starting one before its first step)."""
        self.cancel_file.touch()

    def metrics(self) -> list[dict[str, Any]]:
        """All rows; a half-written last line (the trainer is mid-write) is skipped."""
        rows = []
        try:
            with open(self.metrics_file) as f:
                for line in f:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        continue
        except OSError:
            pass
        return rows

    def best_epoch(self, status: dict[str, Any] | None = None) -> dict[str, Any]:
        """The epoch row the run selected (its best, else its last; {} before the first epoch).

        The trainer keeps it in status.json, so listing many runs never reads every metrics file;
        runs from before that fall back to scanning metrics.jsonl. Pass `status` if already read."""
        status = self.status() if status is None else status
        return status.get("best") or best_epoch_row(self.metrics())

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        text = text.replace("\r", "\n")  # tqdm redraws become lines
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])

    def evaluation(self) -> dict[str, Any] | None:
        return read_json(self.eval_file)

    def cancel_requested(self) -> bool:
        return self.cancel_file.exists()

    def trainer_alive(self) -> bool:
        """Whether a trainer (queued or running) holds this run's lock. The OS drops the lock when its holder
        dies, however it dies, so this never mistakes a reused pid or a stale status for a live trainer."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return False  # no lock file: no trainer ever took this run
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock this test may have taken

    def remove_stale_temps(self) -> None:
        """Delete temporary files a killed writer left behind (`last.pt.tmp`, `.status.json.*.tmp`). Only
        the run's trainer calls this, holding the run lock, so no writer of this run is alive to own them."""
        for tmp in self.path.glob("*.tmp"):  # pathlib's `*` matches dot-files too
            tmp.unlink(missing_ok=True)


class RunBusy(RuntimeError):
    """Another trainer holds the run: a run folder has exactly one."""


class RunLock:
    """The one-trainer lock of a run: an exclusive `flock` on `run.lock`, held for the trainer's whole life.

    The app's launcher takes it before it writes `queued` and hands the locked file to the job it starts
    (`--lock-fd`), so the lock is held from launch to exit with no gap; a CLI trainer takes it itself.
    """

    RETRY_SECONDS = 1.0  # readers hold a shared lock for microseconds (`Run.trainer_alive`): not a trainer

    def __init__(self, run: Run, fd: int):
        self.run, self.fd = run, fd

    @classmethod
    def acquire(cls, run: Run) -> RunLock:
        """Take the lock, or raise RunBusy when a trainer holds it."""
        fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + cls.RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(run, fd)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RunBusy(f"{run.path} already has a trainer (queued or running); cancel it or wait "
                                  "for it to end") from None
                time.sleep(0.05)

    @classmethod
    def adopt(cls, run: Run, fd: int | None) -> RunLock | None:
        """The lock handed over by the launcher as an open, locked descriptor; None if `fd` is not that."""
        if fd is None:
            return None
        try:
            held, lock_file = os.fstat(fd), os.stat(run.lock_file)
            if (held.st_dev, held.st_ino) != (lock_file.st_dev, lock_file.st_ino):
                return None
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op for the holder; fails for anyone else
        except OSError:
            return None
        return cls(run, fd)

    def hand_over(self) -> None:
        """Close this process's descriptor without unlocking: the job that inherited it keeps the lock."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """Unlock (for this process and any child that inherited the descriptor) and close; once is enough."""
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def parse_tags(text: str) -> list[str]:
    """Tags from "a, b c" (commas or spaces), stripped, without repeats, in the order given."""
    return list(dict.fromkeys(t for t in re.split(r"[,\s]+", text) if t))


def delete_run(run: Run) -> None:
    """Remove a run's folder, files and all. Refused (RunBusy) while a trainer holds the run, queued or
    running: the lock is taken first, so no trainer can start on it while its files go."""
    with RunLock.acquire(run):
        shutil.rmtree(run.path)


def best_epoch_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Of a run's metrics rows, the last epoch row flagged best, else the last epoch row."""
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    chosen = [r for r in epochs if r.get("best")]
    return (chosen or epochs or [{}])[-1]


def runs_root(runs_dir: Path | None = None) -> Path:
    """The folder runs live in: `runs_dir`, else the configured one (HIRISE_RUNS_DIR)."""
    return Path(runs_dir or RUNS_DIR)


def folder_hint(name_hint: str) -> str:
    """What a run's name becomes in its folder's name: letters, digits, '.', '_' and '-' only, 40 at most (a name
    is never a path)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name_hint).strip("-.")[:40]


def new_run_dir(name_hint: str = "", runs_dir: Path | None = None) -> Run:
    """A fresh, uniquely named run folder under the runs directory."""
    root = runs_root(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    hint = folder_hint(name_hint)
    base = f"{stamp}-{hint}" if hint else stamp
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()
            return Run(path)
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {root}")


def list_runs(runs_dir: Path | None = None) -> list[Run]:
    """Runs, newest first."""
    root = runs_root(runs_dir)
    if not root.is_dir():
        return []
    runs = [Run(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(runs, key=lambda r: r.name, reverse=True)
