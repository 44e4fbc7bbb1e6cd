"""Which data, merged and split how: the seven options that decide every tile's split, as one value.

A `DataSpec` travels whole from the CLIs, the run's config and a checkpoint's config to `load_dataset`, and the
app caches loaded data by it (it is frozen and hashable). Stored configs keep these options as flat fields
(`data`, `conflict_policy`, ...): `from_mapping` reads them, so every config.json and checkpoint written
before this class existed still loads the same data.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

#: The validation and test shares are in [0, FRACTION_LIMIT) and sum to less than it; the app's sliders step by
#: FRACTION_STEP up to the largest value below the limit.
FRACTION_LIMIT = 1.0
FRACTION_STEP = 0.05
#: Cross-validation folds: fewer than 3 validate too few observations each time; more than 10 cost more CPU than
#: the narrower intervals are worth on data of a few hundred observations.
MIN_FOLDS, MAX_FOLDS = 3, 10


@dataclass(frozen=True)
class DataSpec:
    """Data sources (folders or zips, merged in this order) and how they are merged and split."""

    paths: tuple[str, ...] = ()
    conflict_policy: str = "newest"
    split_mode: str = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    keep_split_repeats: bool = False
    cv_folds: int = 0  # K > 0: the split is fold `cv_fold` of a K-fold cross-validation (core.data.split)
    cv_fold: int = 0

    def __post_init__(self) -> None:  # paths as strings, numbers as numbers: equal specs hash equal
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        object.__setattr__(self, "test_fraction", float(self.test_fraction))
        object.__setattr__(self, "split_seed", int(self.split_seed))
        object.__setattr__(self, "keep_split_repeats", bool(self.keep_split_repeats))
        object.__setattr__(self, "cv_folds", int(self.cv_folds))
        object.__setattr__(self, "cv_fold", int(self.cv_fold))

    #: The flat field that holds `paths` in a RunConfig, a config.json and a checkpoint's config.
    PATHS_KEY = "data"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DataSpec:
        """From flat fields (a config.json, a checkpoint's config, `RunConfig.to_dict()`); absent ones default."""
        given = {f.name: values[f.name] for f in fields(cls) if f.name != "paths" and f.name in values}
        return cls(paths=tuple(values.get(cls.PATHS_KEY) or ()), **given)

    @classmethod
    def from_args(cls, paths: Sequence[str | Path], args: argparse.Namespace) -> DataSpec:
        """From the flags `add_data_arguments` adds."""
        return cls.from_mapping({cls.PATHS_KEY: list(paths), **vars(args)})

    def flat(self) -> dict[str, Any]:
        """The flat fields `from_mapping` reads back."""
        out = asdict(self)
        out[self.PATHS_KEY] = list(out.pop("paths"))
        return out

    def problem(self) -> str | None:
        """What makes the shares unusable, starting with the field's name; None when they are fine. (The
        choices, CONFLICT_POLICIES and SPLIT_MODES, are checked where they are offered: RunConfig, the flags.)"""
        if not 0 <= self.val_fraction < FRACTION_LIMIT or not 0 <= self.test_fraction < FRACTION_LIMIT or \
                self.val_fraction + self.test_fraction >= FRACTION_LIMIT:
            return (f"val_fraction and test_fraction must be in [0, 1) and sum to less than 1 (given "
                    f"{self.val_fraction:g} and {self.test_fraction:g}): some tiles must be left to train on")
        if self.cv_folds:
            if not MIN_FOLDS <= self.cv_folds <= MAX_FOLDS:
                return f"cv_folds: {self.cv_folds} folds; cross-validation takes {MIN_FOLDS} to {MAX_FOLDS}"
            if not 0 <= self.cv_fold < self.cv_folds:
                return f"cv_fold: {self.cv_fold} is not a fold of {self.cv_folds} (0 to {self.cv_folds - 1})"
            return None
        if self.val_fraction == 0 and self.test_fraction != 0 and self.split_mode != "official":
            return ("val_fraction 0 trains on everything with no validation split (a refit): set test_fraction 0 "
                    "as well, or give validation a share")
        return None

    @property
    def refit(self) -> bool:
        """No validation split: a fixed number of epochs on all the data, no best-epoch choice."""
        return not self.cv_folds and self.split_mode != "official" and self.val_fraction == 0
