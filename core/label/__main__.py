"""`python -m core.label`: make a labelling queue from a source, or say how far one is."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.settings import LABEL_QUEUES_DIR, LABEL_STORE_DIR

from .queue import MAX_BUDGET, MAX_WINDOWS, QueueError, load, make_queue, parse_budget
from .store import LabelStore, StoreError, progress_line
from .strategies import DEFAULT_STRATEGY, STRATEGIES


def _budget(text: str) -> int:
    try:
        return parse_budget(text)
    except QueueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.label", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("candidates", help="rank a source's windows for labelling and write them as a queue")
    c.add_argument("source", type=Path, help="an image, a folder of images or observations, or a scan's folder")
    c.add_argument("--strategy", choices=list(STRATEGIES), default=DEFAULT_STRATEGY,
                   help="; ".join(f"{s.name}: {s.description}" for s in STRATEGIES.values()))
    c.add_argument("--budget", type=_budget, default=100, help=f"windows to ask about (1-{MAX_BUDGET})")
    c.add_argument("--out", type=Path, required=True,
                   help=f"the queue's folder (new); the Label page lists those in {LABEL_QUEUES_DIR}")
    c.add_argument("--checkpoint", type=Path, default=None, help="the model that ranks (default: the default)")
    c.add_argument("--max-windows", type=int, default=MAX_WINDOWS,
                   help="read at most this many windows of the source (a uniform sample beyond it)")
    c.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("status", help="how far a queue is labelled")
    s.add_argument("queue", type=Path)
    s.add_argument("--store", type=Path, default=LABEL_STORE_DIR, help="the labelled-tiles folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "candidates":
            if args.max_windows < 1:
                raise QueueError(f"--max-windows {args.max_windows}: give at least 1")
            queue = make_queue(args.source, args.out, args.strategy, args.budget, args.checkpoint,
                               max_windows=args.max_windows, seed=args.seed)
            for note in queue.meta["notes"]:
                print(f"note: {note}")
            print(f"{len(queue.candidates)} candidates of {queue.meta['windows_read']:,} windows, ranked by "
                  f"{args.strategy}, written to {queue.path}")
            return 0
        queue = load(args.queue)
        print(progress_line(queue, LabelStore(args.store)))
        return 0
    except (QueueError, StoreError, OSError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
