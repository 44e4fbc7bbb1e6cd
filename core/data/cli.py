"""The data options every CLI shares (merge policy, split), so the same split is rebuilt everywhere."""
from __future__ import annotations

import argparse

from ..progress import ProgressCallback
from .dataset import HiriseData, load_dataset
from .merge import CONFLICT_POLICIES
from .split import SPLIT_MODES


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conflict-policy", choices=CONFLICT_POLICIES, default="newest",
                        help="which copy wins a label conflict when merging (default: newest)")
    parser.add_argument("--split-mode", choices=SPLIT_MODES, default="auto",
                        help="official split when the files carry one, else grouped by observation (default: auto)")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--keep-split-repeats", action="store_true", help="keep the split file's repeated rows")


def load_from_args(paths: list[str], args: argparse.Namespace,
                   on_progress: ProgressCallback | None = None) -> HiriseData:
    return load_dataset(paths, args.conflict_policy, args.split_mode, args.val_fraction, args.test_fraction,
                        args.split_seed, args.keep_split_repeats, on_progress=on_progress)
