"""`python -m core.data summary PATH [PATH ...]`: what a data set (or a merge of several) holds."""
from __future__ import annotations

import argparse
import json
import sys

from .cli import add_data_arguments, load_from_args
from .records import DataError
from .summary import format_summary, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="print counts, baselines and problems of one or more data sources")
    p.add_argument("paths", nargs="+", help="folders or zips (official v3.2/v3 layout, or plain labelled tiles)")
    add_data_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        data = load_from_args(args.paths, args)
        summary = summarize(data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
