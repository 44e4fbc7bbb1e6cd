"""Explore a data set through a model's eyes (issue 16).

    python -m core.explore embed  --data PATH [--data PATH ...] [--checkpoint F] [--method umap|tsne|pca]
                                  [--size PX] --out map.csv
    python -m core.explore labels --data PATH [--data PATH ...] [--checkpoint F] [--size PX] [--folds 5]
                                  --out suspects.csv

`embed` writes one row per tile (x, y, file, label, predicted, confidence, split, observation, ...);
`labels` writes the tiles whose label looks wrong, surest first (file, given, suggested, p_suggested, ...).
Both reuse the cached features (CACHE_DIR/explore). Exit status 0 on success, 2 for a usage or data error.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.checkpoint import CheckpointError, load_checkpoint
from core.cliargs import at_least
from core.data import DataError, DataSpec, load_dataset
from core.data.cli import add_data_arguments
from core.settings import DEFAULT_CHECKPOINT
from core.training.config import MIN_INPUT_SIZE

from .embed import DEFAULT_METHOD, METHODS, embed, write_table
from .features import DEFAULT_EMBED_SIZE, get_features
from .labels import FOLDS, review_labels

MAX_SIZE = 512


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value != 0 and not MIN_INPUT_SIZE <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{value} is outside {MIN_INPUT_SIZE}-{MAX_SIZE} px (or 0: the model's own)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.explore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("embed", "a 2-D map of every tile's features"),
                           ("labels", "tiles whose given label looks wrong (cleanlab)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--data", action="append", required=True, metavar="PATH",
                       help="data folder or zip (repeat for several)")
        p.add_argument("--checkpoint", help=f"checkpoint (default: {DEFAULT_CHECKPOINT.name})")
        p.add_argument("--size", type=_size, default=DEFAULT_EMBED_SIZE,
                       help="input size of the feature pass in px (default 0: the checkpoint's own, e.g. 260; smaller is "
                            "faster but loses quality, see docs/explore.md)")
        p.add_argument("--out", required=True, metavar="FILE", help="CSV to write")
        add_data_arguments(p)
        p.add_argument("--no-label-overrides", action="store_true",
                       help="the labels as published, without label_overrides.csv (see docs/explore.md)")
        if name == "embed":
            p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD)
        else:
            p.add_argument("--folds", type=at_least(2), default=FOLDS, help="folds grouped by observation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.is_dir():
        print(f"error: --out {out} is a folder; give a file name", file=sys.stderr)
        return 2
    try:
        loaded = load_checkpoint(args.checkpoint)
        data = load_dataset(DataSpec.from_args(args.data, args),
                            label_overrides=False if args.no_label_overrides else None)
        if data.overrides is not None:
            print(f"label overrides: {data.overrides.describe()}", file=sys.stderr)
        t0 = time.perf_counter()
        if args.command == "embed":
            result = embed(loaded, data, args.method, args.size)
            write_table(result.table, out)
            feats = result.features
            print(f"{len(result.table):,} tiles mapped ({args.method}, features at {feats.size}px) in "
                  f"{time.perf_counter() - t0:.1f} s: features "
                  f"{'cached' if feats.from_cache else f'{feats.seconds:.1f} s'}, "
                  f"map {'cached' if result.from_cache else f'{result.seconds:.1f} s'} -> {out}")
        else:
            feats = get_features(loaded, data, None, args.size)
            review = review_labels(feats.records, feats.features, args.folds)
            write_table(review.suspects, out)
            print(f"{len(review.suspects):,} suspect label(s) among {len(feats.records):,} tiles "
                  f"({review.folds} folds by observation) in {time.perf_counter() - t0:.1f} s -> {out}")
            print(f"the judging heads score macro-F1 {review.judge_macro_f1:.3f} out of sample" +
                  ("" if review.trustworthy else ": too weak for their doubts to mean much (a better model's "
                   "features, --checkpoint, give a review worth reading)"))
            if review.unjudged:
                print(review.unjudged_text())
        if feats.note:
            print(f"note: {feats.note}", file=sys.stderr)
    except (CheckpointError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
