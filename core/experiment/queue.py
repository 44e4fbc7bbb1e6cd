"""The device queue: jobs for one device run one at a time, oldest first: training runs (CV folds and grid
cells are runs) and scans alike.

A job the app launches waits for its turn here, `python -m core.experiment.queue RUN_DIR DEVICE -- TRAIN_ARGS...`, in a
process that imports neither torch nor the data layer (about 14 MiB resident instead of about 450 MiB), so a
queued ablation grid costs little memory while it waits. When its turn comes it becomes the trainer by
`os.execv` into `python -m core.train TRAIN_ARGS --device-lock-fd N`: the same process, so the run lock it
inherited from the launcher and the device lock it took are held with no gap.
"""
from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from core.experiment.pids import pid_alive
from core.experiment.runs import Run, list_runs, now_iso, read_json

DEVICES = ("cpu", "cuda")  # what `core.experiment.jobs.device_key` answers: one queue (and lock file) each


class Cancelled(Exception):
    """The job was asked to stop (its CANCEL file, or SIGTERM)."""


def _turn(status: dict) -> str:
    """When a job joined the queue: its last resume, else when it was first queued (which the jobs table shows)."""
    return status.get("resumed_at") or status.get("queued_at", "")


def waiting(root: Path, device: str) -> list[tuple[tuple[str, str], str]]:
    """Every live job queued for `device` under the runs folder `root`: ((queue time, name), name), training runs
    and scans (`core.scan.job`) together."""
    found = []
    for other in list_runs(root):
        s = other.status()
        if s.get("state") == "queued" and s.get("device") == device and other.trainer_alive():
            found.append(((_turn(s), other.name), other.name))
    return found + [((when, f"scans/{name}"), f"scans/{name}") for when, name in queued_scans(root, device)]


def queued_scans(root: Path, device: str) -> list[tuple[str, str]]:
    """(queue time, name) of every scan under `root`/scans (core.scan.job) waiting, alive, for `device`."""
    found = []
    for folder in sorted((root / "scans").glob("*/status.json")):
        status = read_json(folder, {}) or {}
        if status.get("state") == "queued" and status.get("device") == device and \
                pid_alive(status.get("pid"), status.get("pid_start")):
            found.append((status.get("queued_at", ""), folder.parent.name))
    return found


def queued_before(run: Run, device: str) -> list[str]:
    """The live jobs (runs, and scans as `scans/NAME`) queued for `device` before `run`: they go first."""
    mine = (_turn(run.status()), run.name)
    return [name for key, name in waiting(run.path.parent, device) if key < mine and name != run.name]


@contextmanager
def device_turn(run: Run, device: str, poll_seconds: float = 1.0,
                stop: Callable[[], bool] = lambda: False) -> Iterator[IO[str]]:
    """A training run's turn on `device` (`turn`, with the run's queue time and CANCEL file)."""
    with turn(run.path.parent, device, lambda: queued_before(run, device),
              lambda: run.cancel_requested() or stop(), poll_seconds) as lock:
        yield lock


@contextmanager
def turn(root: Path, device: str, ahead: Callable[[], list[str]], cancelled: Callable[[], bool],
         poll_seconds: float = 1.0) -> Iterator[IO[str]]:
    """Wait until no older job wants the device (`ahead()` is empty) and its lock under `root` is free; hold it
    meanwhile (the open, locked file is yielded). `cancelled()` ends the wait with Cancelled."""
    lock_dir = root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{device}.lock", "w") as lock:
        while True:
            if cancelled():
                raise Cancelled()
            if not ahead():
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
            time.sleep(poll_seconds)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """Wait for RUN_DIR's turn on DEVICE, then become `python -m core.train TRAIN_ARGS` holding it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[2] != "--":
        print("usage: python -m core.experiment.queue RUN_DIR DEVICE -- TRAIN_ARGS...", file=sys.stderr)
        return 2
    run, device, train_args = Run(Path(argv[0]).resolve()), argv[1], argv[3:]
    if device not in DEVICES:
        print(f"error: device {device!r}: one of {', '.join(DEVICES)}", file=sys.stderr)
        return 2
    if not run.config_file.is_file() or run.status().get("state") != "queued":
        print(f"error: {run.path} is not a queued run (jobs.launch writes its config and status first)",
              file=sys.stderr)
        return 2
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    try:
        with device_turn(run, device, stop=lambda: bool(stopped)) as lock:
            os.set_inheritable(lock.fileno(), True)
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-m", "core.train", *train_args,
                                      "--device-lock-fd", str(lock.fileno())])
    except Cancelled:
        # this process holds the run lock the launcher handed over: it is the run's one writer until it exits
        print(f"[{time.strftime('%H:%M:%S')}] cancelled while queued", flush=True)
        run.update_status(state="cancelled", ended_at=now_iso())
        return 0
    return 1  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
