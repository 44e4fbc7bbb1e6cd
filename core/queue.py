"""The device queue: jobs for one device run one at a time, oldest first.

A job the app launches waits for its turn here, `python -m core.queue RUN_DIR DEVICE -- TRAIN_ARGS...`, in a
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

from .runs import Run, list_runs, now_iso

DEVICES = ("cpu", "cuda")  # what `core.jobs.device_key` answers: one queue (and lock file) each


class Cancelled(Exception):
    """The job was asked to stop (its CANCEL file, or SIGTERM)."""


def _turn(status: dict) -> str:
    """When a job joined the queue: its last resume, else when it was first queued (which the jobs table shows)."""
    return status.get("resumed_at") or status.get("queued_at", "")


def queued_before(run: Run, device: str) -> list[Run]:
    """Live queued jobs for `device` that were queued before `run` (they go first)."""
    mine = (_turn(run.status()), run.name)
    ahead = []
    for other in list_runs(run.path.parent):
        if other.path == run.path:
            continue
        s = other.status()
        if s.get("state") == "queued" and s.get("device") == device and \
                (_turn(s), other.name) < mine and other.trainer_alive():
            ahead.append(other)
    return ahead


@contextmanager
def device_turn(run: Run, device: str, poll_seconds: float = 1.0,
                stop: Callable[[], bool] = lambda: False) -> Iterator[IO[str]]:
    """Wait, queued, until no older job wants the device and its lock is free; hold it meanwhile (the open,
    locked file is yielded). A cancel (the CANCEL file, or `stop()`: SIGTERM) ends the wait."""
    lock_dir = run.path.parent / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{device}.lock", "w") as lock:
        while True:
            if run.cancel_requested() or stop():
                raise Cancelled()
            if not queued_before(run, device):
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
        print("usage: python -m core.queue RUN_DIR DEVICE -- TRAIN_ARGS...", file=sys.stderr)
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
