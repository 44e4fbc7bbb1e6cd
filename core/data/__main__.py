"""`python -m core.data summary PATH [PATH ...]`: what a data set (or a merge of several) holds."""
from __future__ import annotations

import argparse
import json
import sys

from .dataset import load_dataset
from .merge import CONFLICT_POLICIES
from .records import DataError
from .split import SPLIT_MODES
from .summary import format_summary, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="print counts, baselines and problems of one or more data sources")
    p.add_argument("paths", nargs="+", help="folders or zips (official v3.2/v3 layout, or plain labelled tiles)")
    p.add_argument("--conflict-policy", choices=CONFLICT_POLICIES, default="newest")
    p.add_argument("--split-mode", choices=SPLIT_MODES, default="auto")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--keep-split-repeats", action="store_true", help="keep the split file's repeated rows")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        data = load_dataset(args.paths, args.conflict_policy, args.split_mode, args.val_fraction,
                            args.test_fraction, args.split_seed, args.keep_split_repeats)
        summary = summarize(data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
