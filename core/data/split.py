"""Train/val/test splits: the official one where the files carry it, else grouped by observation."""
from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .records import SPLITS, DataError, Record

SPLIT_MODES = ("auto", "official", "grouped")


def has_official_split(records: Sequence[Record]) -> bool:
    return {"val", "test"} <= {r.split for r in records}


def assign_splits(records: Sequence[Record], mode: str = "auto", val_fraction: float = 0.15,
                  test_fraction: float = 0.15, seed: int = 0, cv_folds: int = 0,
                  cv_fold: int = 0) -> tuple[list[Record], str]:
    """Return the records with `split` set, and a sentence saying how it was made.

    Tiles without an observation id always go to train. The grouped split keeps every observation
    (and so every augmented copy of a landmark) on one side, stratified by class as well as the
    groups allow, and is the same for the same seed. With `cv_folds` K > 0 the split is fold `cv_fold` of a
    K-fold cross-validation grouped by observation (`fold_of_observation`): that fold validates, the rest
    trains, and there is no test split (`mode` and the shares do not apply).
    """
    if cv_folds:
        if not 0 <= cv_fold < cv_folds:
            raise DataError(f"cv_fold {cv_fold} is not a fold of {cv_folds} (0 to {cv_folds - 1})")
        folds = fold_of_observation(records, cv_folds, seed)
        out = [r.with_split("val" if r.observation and folds.get(r.observation) == cv_fold else "train")
               for r in records]
        return out, (f"fold {cv_fold + 1} of a {cv_folds}-fold cross-validation grouped by observation "
                     f"(seed {seed}): it validates, the other folds and the tiles without an observation train")
    if mode not in SPLIT_MODES:
        raise DataError(f"unknown split mode {mode!r} (expected one of {', '.join(SPLIT_MODES)})")
    if mode != "official" and val_fraction == 0 and test_fraction == 0:  # DataSpec.refit
        return [r.with_split("train") for r in records], ("no validation or test split (val_fraction 0, "
                                                          "test_fraction 0): every tile trains")
    if mode == "auto":
        mode = "official" if has_official_split(records) else "grouped"
    if mode == "official":
        if not has_official_split(records):
            raise DataError("the data has no official val and test rows; use the grouped split instead")
        by_obs = {r.observation: r.split for r in records if r.split and r.observation}
        out = [r if r.split else r.with_split(by_obs.get(r.observation, "train") if r.observation else "train")
               for r in records]
        return out, "official split from the label file (rows without one follow their observation, else train)"
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                        "and sum to less than 1")
    obs_split = grouped_observation_split(records, val_fraction, test_fraction, seed)
    out = [r.with_split(obs_split[r.observation] if r.observation else "train") for r in records]
    return out, (f"grouped by observation, stratified by class (val {val_fraction:.0%}, "
                 f"test {test_fraction:.0%}, seed {seed})")


def grouped_observation_split(records: Sequence[Record], val_fraction: float, test_fraction: float,
                              seed: int) -> dict[str, str]:
    """Map each observation id to 'train', 'val' or 'test', stratified by class as well as groups allow.

    HiRISE classes cluster by observation (most swiss-cheese tiles come from one image), which
    defeats k-fold stratification (sklearn's StratifiedGroupKFold leaves whole classes out of val
    here). So: a seeded greedy pass puts each observation, largest first, on the side where it
    brings every class's share closest to its target, each class weighing the same however rare.
    """
    base = [r for r in records if not r.added] or list(records)
    named = [r for r in base if r.observation and r.is_original] or [r for r in base if r.observation]
    split_of: dict[str, str] = {r.observation: "train" for r in records if r.observation}  # type: ignore[misc]
    if not named:
        return split_of
    groups = sorted({r.observation for r in named})
    g_index = {g: i for i, g in enumerate(groups)}
    n_classes = max(r.label for r in named) + 1
    counts = np.zeros((len(groups), n_classes + 1))  # last column: all tiles, to keep split sizes right
    for r in named:
        counts[g_index[r.observation], r.label] += 1
        counts[g_index[r.observation], -1] += 1
    totals = counts.sum(0)
    weights = np.where(totals > 0, 1.0 / np.maximum(totals, 1), 0.0)
    fractions = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    targets = fractions[:, None] * totals[None, :]
    rng = np.random.default_rng(seed)
    size = (counts[:, :-1] * weights[:-1]).sum(1)
    order = np.argsort(-size * rng.uniform(0.5, 1.5, len(groups)), kind="stable")
    filled = np.zeros_like(targets)
    names = SPLITS
    for gi in order:
        best, best_cost = 0, np.inf
        for si in range(3):
            if fractions[si] <= 0:
                continue
            trial = filled.copy()
            trial[si] += counts[gi]
            cost = float(np.square((trial - targets) * weights).sum())
            if cost < best_cost:
                best, best_cost = si, cost
        filled[best] += counts[gi]
        split_of[groups[gi]] = names[best]
    side = np.array([names.index(split_of[g]) for g in groups])
    _place_every_class(counts[:, :-1] > 0, side, [si for si in range(3) if fractions[si] > 0], rng)
    return {**split_of, **{g: names[side[gi]] for gi, g in enumerate(groups)}}


def fold_of_observation(records: Sequence[Record], folds: int, seed: int) -> dict[str, int]:
    """Map each observation id to one of `folds` cross-validation folds (0 .. folds-1).

    scikit-learn's StratifiedGroupKFold on the original tiles (label, observation), shuffled by `seed`, so every
    observation and with it every augmented copy of its landmarks sits in exactly one fold; then the same
    placement pass as the grouped split moves observations so that every class with at least `folds`
    observations is in every fold (StratifiedGroupKFold alone can leave a rare class out of a fold). A class with
    fewer observations than folds cannot be validated in every fold: `fold_coverage` names it.

    Tiles labelled in the studio (`Record.added`) never move the others: the folds are made without them, and
    they join their observation's fold (a new observation follows a fixed hash into one). So a cross-validation
    with new labels keeps the champion's folds on the champion's files, and the promotion gate can pair them."""
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, not {folds}")
    base = [r for r in records if not r.added] or list(records)
    named = [r for r in base if r.observation and r.is_original] or [r for r in base if r.observation]
    groups = sorted({r.observation for r in named})  # type: ignore[misc]
    if len(groups) < folds:
        raise DataError(f"{folds}-fold cross-validation needs at least {folds} observations; the data has "
                        f"{len(groups)}")
    y = np.array([r.label for r in named])
    g = np.array([r.observation for r in named])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    fold_of: dict[str, int] = {}
    with warnings.catch_warnings():  # "least populated class has only n members": fold_coverage says it
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y, g)):
            fold_of.update({obs: i for obs in set(g[held].tolist())})
    g_index = {obs: i for i, obs in enumerate(groups)}
    has = np.zeros((len(groups), int(y.max()) + 1), dtype=bool)
    has[[g_index[o] for o in g], y] = True
    side = np.array([fold_of[obs] for obs in groups])
    _place_every_class(has, side, list(range(folds)), np.random.default_rng(seed))
    out = {obs: int(side[i]) for i, obs in enumerate(groups)}
    # observations seen only through augmented copies follow a fixed hash into a fold
    for r in records:
        if r.observation and r.observation not in out:
            out[r.observation] = int(hashlib.sha1(f"{seed}:{r.observation}".encode()).hexdigest(), 16) % folds
    return out


def fold_coverage(records: Sequence[Record], folds: int, class_names: Sequence[str]) -> list[str]:
    """One sentence per class with fewer observations than folds: some folds cannot validate it, so its
    out-of-fold recall comes from the folds that hold it, and those folds' models trained with fewer of its
    observations."""
    out = []
    for label, name in enumerate(class_names):
        n_obs = len({r.observation for r in records if r.label == label and r.observation})
        if 0 < n_obs < folds:
            out.append(f"class {name} comes from {n_obs} observation{'s' if n_obs != 1 else ''}, fewer than the "
                       f"{folds} folds: it is validated in {n_obs} fold{'s' if n_obs != 1 else ''} only")
        elif n_obs == 0 and any(r.label == label for r in records):
            out.append(f"class {name} has no tile with an observation id: it trains in every fold and is "
                       "never validated")
    return out


def _place_every_class(has: np.ndarray, side: np.ndarray, sides: list[int], rng: np.random.Generator) -> None:
    """Move observations (in place in `side`) so that each class with at least as many observations as there
    are sides is on every side: the balance pass alone left rare classes out of val or test, and the best
    epoch was then chosen on a macro-F1 over fewer classes. A move takes, from the side holding the most
    observations of the class, its smallest such observation (seeded tie-break), and only if the donor keeps
    every class it must keep. Deterministic for a seed; classes it cannot place are reported by
    `coverage_warnings`."""
    n_groups, _n_classes = has.shape
    size = has.sum(1) + rng.uniform(0, 0.5, n_groups)  # fewer classes first; a seeded tie-break
    for c in np.argsort(has.sum(0), kind="stable"):  # rarest class first
        if has[:, c].sum() < len(sides):
            continue
        for target in sides:
            if has[side == target, c].any():
                continue
            donors = sorted(sides, key=lambda si: -has[side == si, c].sum())
            for donor in donors:
                if donor == target or has[side == donor, c].sum() < 2:
                    continue
                for gi in sorted(np.flatnonzero((side == donor) & has[:, c]), key=lambda g: size[g]):
                    rest = has[(side == donor) & (np.arange(n_groups) != gi)].any(0)
                    needed = has[side == donor].any(0) & (has.sum(0) >= len(sides))
                    if (rest | ~needed).all():
                        side[gi] = target
                        break
                if has[side == target, c].any():
                    break


def coverage_warnings(records: Sequence[Record], class_names: Sequence[str]) -> list[str]:
    """One sentence per class that a split (train, val or test, where it exists) has no tile of."""
    splits = [s for s in SPLITS if any(r.split == s for r in records)]
    out = []
    for label, name in enumerate(class_names):
        mine = [r for r in records if r.label == label]
        if not mine:
            continue
        lacking = [s for s in splits if not any(r.split == s for r in mine)]
        if lacking:
            n_obs = len({r.observation for r in mine if r.observation})
            why = (f"only {n_obs} observation{'s' if n_obs != 1 else ''}: a class needs one per split" if n_obs < 3
                   else "the split could not place it")
            out.append(f"class {name} has no tiles in {' or '.join(lacking)} ({why}); its recall there is "
                       "undefined and macro-F1 averages over the other classes")
    return out


def find_leakage(records: Sequence[Record]) -> list[str]:
    """Say which observations, landmarks or name-less tiles sit in more than one split (or outside train)."""
    problems = []
    for attr, what in (("observation", "observation"), ("landmark", "landmark")):
        sides: dict[str, set[str]] = defaultdict(set)
        for r in records:
            key = getattr(r, attr)
            if key and (attr != "landmark" or r.observation):
                sides[key].add(r.split or "none")
        leaks = sorted(k for k, s in sides.items() if len(s) > 1)
        if leaks:
            problems.append(f"{len(leaks)} {what}s fall on more than one side, e.g. {leaks[0]} "
                            f"({', '.join(sorted(sides[leaks[0]]))})")
    strays = [r for r in records if r.trainable_only and r.split not in ("train", None)]
    if strays:
        problems.append(f"{len(strays)} tiles without an observation id are in {strays[0].split} "
                        f"(e.g. {strays[0].path}); they may only train")
    return problems
