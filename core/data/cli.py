"""The data options every CLI shares (merge policy, split), so the same split is rebuilt everywhere."""
from __future__ import annotations

import argparse

from ..progress import ProgressCallback
from .dataset import HiriseData, load_dataset
from .merge import CONFLICT_POLICIES
from .spec import DataSpec
from .split import SPLIT_MODES


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The merge and split flags (`DataSpec`'s fields but the paths, with its defaults)."""
    d = DataSpec()
    parser.add_argument("--conflict-policy", choices=CONFLICT_POLICIES, default=d.conflict_policy,
                        help=f"which copy wins a label conflict when merging (default: {d.conflict_policy})")
    parser.add_argument("--split-mode", choices=SPLIT_MODES, default=d.split_mode,
                        help="official split when the files carry one, else grouped by observation "
                             f"(default: {d.split_mode})")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction)
    parser.add_argument("--split-seed", type=int, default=d.split_seed)
    parser.add_argument("--keep-split-repeats", action="store_true", help="keep the split file's repeated rows")


def load_from_args(paths: list[str], args: argparse.Namespace,
                   on_progress: ProgressCallback | None = None) -> HiriseData:
    return load_dataset(DataSpec.from_args(paths, args), on_progress=on_progress)
