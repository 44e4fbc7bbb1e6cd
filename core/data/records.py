"""A labelled tile and what its file name tells about it (observation, landmark, augmentation)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: Suffixes the data set's authors used for their augmented copies.
AUG_SUFFIXES: tuple[str, ...] = ("r90", "r180", "r270", "fh", "fv", "brt")
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: The splits a model is scored on and never trains on (a checkpoint records their files and observations).
HELD_OUT: tuple[str, ...] = SPLITS[1:]

_NAME_RE = re.compile(
    r"^(?P<obs>[A-Z]{3}_\d{6}_\d{4}(?:_[A-Z0-9]+)?)"  # ESP_011283_2265_RED
    r"-(?P<idx>\d+)"  # -0030
    r"(?:-(?P<aug>" + "|".join(AUG_SUFFIXES) + r"))?"  # -r90 ...
    r"\.(?:jpe?g|png|tiff?)$",
    re.IGNORECASE,
)


class DataError(Exception):
    """A problem with a data set that the user can fix; the message says what and where."""


@dataclass(frozen=True)
class NameParts:
    observation: str | None
    landmark: str  # the file's stem without the augmentation suffix
    aug: str  # "" for an original


def parse_name(file_name: str) -> NameParts:
    """Split `ESP_011283_2265_RED-0030-r90.jpg` into observation, base landmark and suffix.

    Names that do not follow the HiRISE pattern have no observation: such tiles can only train.
    """
    base = file_name.rsplit("/", 1)[-1]
    match = _NAME_RE.match(base)
    if match is None:
        return NameParts(observation=None, landmark=base.rsplit(".", 1)[0], aug="")
    obs, idx, aug = match.group("obs"), match.group("idx"), (match.group("aug") or "").lower()
    return NameParts(observation=obs, landmark=f"{obs}-{idx}", aug=aug)


@dataclass(frozen=True)
class Record:
    """One labelled tile of one source."""

    source: str  # the source's display name (see `Source.name`)
    path: str  # where the bytes are, relative to the source's root (folder or zip)
    name: str  # file name alone: the identity used to de-duplicate across versions
    label: int
    split: str | None = None  # the official split, when the source gives one
    observation: str | None = None
    landmark: str = ""
    aug: str = ""
    version: str = ""  # data set version of the source: "3", "3.2", or "" for plain tiles
    added: bool = False  # labelled in the studio (the Label page's store): never moves the folds of the others

    @property
    def is_original(self) -> bool:
        return self.aug == ""

    @property
    def trainable_only(self) -> bool:
        """Tiles without an observation id may never go to validation or test."""
        return self.observation is None

    def with_split(self, split: str | None) -> Record:
        return replace(self, split=split)
