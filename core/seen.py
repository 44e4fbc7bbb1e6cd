"""Which tiles a model trained on, so that it is scored only on tiles it never saw (Evaluate, Compare and
`python -m core.evaluate` apply the same rule).

A checkpoint names the data it trained on (its config's data paths) and records the original files and the
observations of its validation and test splits (`core.data.split_manifest`). A tile counts as one it trained on
when:

- its data held the tile (matched by file name, its augmented copies with it, whenever that data can be listed
  here; by the name of its folder or zip otherwise) and the checkpoint does not name it as a validation or test
  tile. A refit (no validation or test split) trained on every tile of its data, and so did, as far as anyone can
  tell, a checkpoint that records no split at all. The extra train tiles without an observation id never go to
  validation or test: any model whose data held them trained on them.
- or, where its data can be listed here, it is another tile of an observation the model trained on: the tiles of
  one observation are alike, which is why splits are grouped by observation.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.data import DataError, Record, read_source
from core.data.records import HELD_OUT, parse_name

if TYPE_CHECKING:
    from core.checkpoint import LoadedModel

#: Compare says nothing about models scored on fewer tiles than this (their intervals span most of [0, 1]).
MIN_COMMON_TILES = 30


class NothingUnseen(DataError):
    """Every tile offered is one that a model trained on: nothing is left to score it on; the message says why."""


@dataclass(frozen=True)
class TrainingSet:
    """What one checkpoint trained on, as far as its record and the files here tell (`training_set`)."""

    model: str  # how sentences name the model
    basis: str  # why its tiles count as training tiles ("every tile of its data outside ...")
    landmarks: frozenset[str]  # every tile of its data that could be listed here (originals' landmarks)
    unlisted: frozenset[str]  # its sources that are not here, by folder or zip name
    held_out: frozenset[str]  # the landmarks of its recorded validation and test originals
    observations: frozenset[str]  # the observations it trained on (of the tiles listed here)
    unknown: bool = False  # it names no data at all: which tiles it trained on cannot be told

    def trained_on(self, record: Record) -> bool:
        """Whether the model trained on this tile, or on other tiles of its observation."""
        if record.landmark in self.held_out:  # named in its validation or test split
            return False
        if record.landmark in self.landmarks or record.source.split("#")[0] in self.unlisted:
            return True  # its data held the tile, and did not hold it out
        return record.observation is not None and record.observation in self.observations


def training_set(model: LoadedModel, label: str | None = None) -> TrainingSet:
    """Which tiles `model` trained on: its data's tiles, read here (file names
    only: nothing is decoded), less the validation and test files its checkpoint records."""
    label = label or (Path(model.path).name if model.path else model.arch)
    paths = [str(p) for p in (model.config.get("data") or ())]
    recorded = {split: model.splits[split] for split in HELD_OUT if split in model.splits}
    files = [f for split in recorded.values() for f in split.get("files") or ()]
    held_out = frozenset(parse_name(f).landmark for f in files)
    held_obs = {o for split in recorded.values() for o in split.get("observations") or ()} | \
        ({parse_name(f).observation for f in files} - {None})
    if model.refit or (recorded and not files):
        basis = "it was refit on every tile of its data, with no validation or test split"
    elif not recorded:
        basis = ("its checkpoint does not list the files of its validation and test splits, only how they were "
                 "drawn, so any tile of its data may be one it trained on")
    else:
        basis = "every tile of its data outside the validation and test splits its checkpoint records"
    landmarks: set[str] = set()
    observations: set[str] = set()
    unlisted: set[str] = set()
    for path in paths:
        try:
            records = read_source(path).records
        except (DataError, OSError, ValueError):
            unlisted.add(Path(path).name)
            continue
        for r in records:
            if r.landmark not in held_out:
                landmarks.add(r.landmark)
                if r.observation:
                    observations.add(r.observation)
    if unlisted:
        basis += (f"; {', '.join(sorted(unlisted))} {'is' if len(unlisted) == 1 else 'are'} not here, so "
                  f"{'its' if len(unlisted) == 1 else 'their'} tiles are matched by that name")
    return TrainingSet(model=label, basis=basis, landmarks=frozenset(landmarks), unlisted=frozenset(unlisted),
                       held_out=held_out, observations=frozenset(observations - held_obs), unknown=not paths)


@dataclass(frozen=True)
class Exclusion:
    """What `unseen` left out of some tiles, and why, in words."""

    total: int  # the tiles offered
    kept: int  # those no model trained on
    by_model: dict[str, int]  # model -> how many of the offered tiles it trained on
    why: dict[str, str]  # model -> its `TrainingSet.basis`, for the models that trained on some
    unknown: tuple[str, ...] = ()  # models that name no training data

    @property
    def excluded(self) -> int:
        return self.total - self.kept

    def sentence(self, what: str = "tiles") -> str:
        """'Scored on 91 of 176 val tiles: 85 excluded because hirise-resnet18.pt trained on them (...).'"""
        if self.excluded:
            out = (f"Scored on {self.kept:,} of {self.total:,} {what}: {self.excluded:,} excluded because "
                   f"{self.because()}.")
        else:
            out = f"Scored on all {self.total:,} {what}: none is one that a model scored here trained on."
        if self.unknown:
            out += (f" {', '.join(self.unknown)} {'names' if len(self.unknown) == 1 else 'name'} no training data: "
                    "which of these tiles trained it cannot be told.")
        return out

    def because(self) -> str:
        """Who trained on the excluded tiles: 'X trained on them (its basis)', each model with its count."""
        seen = {m: n for m, n in self.by_model.items() if n}
        if len(seen) == 1:
            (model, _), = seen.items()
            return f"{model} {self._verb(model)} them ({self.why[model]})"
        parts = "; ".join(f"{model} {self._verb(model)} {n:,} of them ({self.why[model]})" for model, n in seen.items())
        return parts + (" (a tile can count for more than one)" if sum(seen.values()) > self.excluded else "")

    def _verb(self, model: str) -> str:
        return "may have trained on" if "may be one it trained on" in self.why.get(model, "") else "trained on"

    def to_dict(self, what: str = "tiles") -> dict:
        """JSON-able, with the sentence (an evaluation report's `excluded`)."""
        return {"total": self.total, "kept": self.kept, "excluded": self.excluded, "by_model": dict(self.by_model),
                "why": dict(self.why), "unknown": list(self.unknown), "sentence": self.sentence(what)}


def unseen(records: Sequence[Record], sets: Iterable[TrainingSet], what: str = "tiles",
           minimum: int = 1) -> tuple[list[Record], Exclusion]:
    """The records that none of these models trained on, in order, and what was left out. NothingUnseen (a
    DataError, its message in words) when fewer than `minimum` are left."""
    sets = list(sets)
    seen = {s.model: [s.trained_on(r) for r in records] for s in sets}
    kept = [r for i, r in enumerate(records) if not any(flags[i] for flags in seen.values())]
    by_model = {model: sum(flags) for model, flags in seen.items()}
    exclusion = Exclusion(total=len(records), kept=len(kept), by_model=by_model,
                          why={s.model: s.basis for s in sets if by_model[s.model]},
                          unknown=tuple(s.model for s in sets if s.unknown))
    if len(kept) < minimum:
        raise NothingUnseen(refusal(exclusion, what, minimum))
    return kept, exclusion


def refusal(exclusion: Exclusion, what: str = "tiles", minimum: int = 1) -> str:
    """Why no figure is given: every tile was trained on, or too few are left to say anything."""
    total = f"{exclusion.total:,} {what}"
    if not exclusion.total:
        return f"there are no {what} to score"
    if not exclusion.excluded:
        return (f"only {total}: too few to say anything (at least {minimum} are needed). Compare them on more "
                "data")
    if not exclusion.kept:
        every = "the only one" if exclusion.total == 1 else f"all {total}"
        return (f"nothing is left to score: {every} excluded because {exclusion.because()}. Figures on tiles a "
                "model trained on flatter it: score it on data it never saw")
    return (f"only {exclusion.kept:,} of the {total} are tiles none of these models trained on "
            f"({exclusion.excluded:,} excluded because {exclusion.because()}): too few to say anything (at least "
            f"{minimum} are needed). Compare them on data none of them trained on")
