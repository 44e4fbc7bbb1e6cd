"""The data options every CLI shares (merge policy, split), so the same split is rebuilt everywhere."""
from __future__ import annotations

import argparse
from dataclasses import fields

from core.progress import ProgressCallback

from .dataset import HiriseData, load_dataset
from .spec import DataSpec

#: The DataSpec fields every data CLI takes as flags (the paths are each CLI's own; folds are set by core.experiment.cv).
DATA_FLAGS = tuple(f.name for f in fields(DataSpec) if f.name not in ("paths", "cv_folds", "cv_fold"))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The merge and split flags: `DataSpec`'s fields, with their defaults, and the help, choices and bounds the
    option registry (`core.training.config.RunConfig`) declares for them, so that the form, `python -m core.train` and
    these flags say and check the same."""
    from core.training.config import add_option_flag, field_specs
    specs = {s["name"]: s for s in field_specs()}
    defaults = DataSpec()
    for name in DATA_FLAGS:
        add_option_flag(parser, specs[name], getattr(defaults, name))


def load_from_args(paths: list[str], args: argparse.Namespace,
                   on_progress: ProgressCallback | None = None) -> HiriseData:
    return load_dataset(DataSpec.from_args(paths, args), on_progress=on_progress)
