"""Argument types the command-line tools share (core's CLIs, tools/ and bench/)."""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.experiment.runs import RunLock


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type` for counts: an integer of at least `minimum`, or a one-line usage error."""
    return number_in(int, minimum)


def number_in(kind: type, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse `type` for a bounded int or float: NaN, infinities and values out of [minimum, maximum] are a
    one-line usage error, not a value passed on."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {maximum}")
        return value

    return parse


def single_run_flag(args: argparse.Namespace) -> str | None:
    """The first flag given that names one run (`--run-dir`, `--resume`, `--lr-find`), which a grid or a
    cross-validation, making a run folder per run under --runs-dir, cannot take; None when there is none."""
    given = (("--run-dir", args.run_dir), ("--resume", args.resume), ("--lr-find", args.lr_find),
             ("--lock-fd", args.lock_fd is not None))
    return next((flag for flag, on in given if on), None)


def refuse(message: str, lock: RunLock | None = None) -> int:
    """Say why in one line and return 2. A job the app launched (it holds the run's `lock`) also records it
    as failed, so the app shows the reason rather than a lost job; otherwise the run folder is left as it was."""
    print(f"error: {message}", file=sys.stderr)
    if lock is not None:
        with lock, contextlib.suppress(OSError):
            from core.experiment.runs import now_iso
            lock.run.update_status(state="failed", ended_at=now_iso(), error=message)
    return 2



def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """`--engine auto|onnx|torch`, one spelling for every command that runs forward passes (core.settings.ENGINES:
    auto serves from the checkpoint's verified ONNX twin when it has one; HIRISE_ENGINE sets the default)."""
    from core.settings import ENGINE, ENGINES

    parser.add_argument("--engine", choices=ENGINES, default=ENGINE,
                        help="what runs the forward passes: the checkpoint's verified ONNX twin when there is one "
                             "(auto), only the twin (onnx), or torch; Grad-CAM is always torch's")

