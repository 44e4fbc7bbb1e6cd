"""Label review: tiles whose given label the data itself argues against, found with cleanlab.

Out-of-sample class probabilities come from a logistic-regression head on the cached penultimate features,
fitted K times on folds grouped by observation (StratifiedGroupKFold): a tile is scored by a head that saw
neither it nor any tile of its observation (so none of its augmented copies). Tiles with no observation
(the name-less extra train tiles) each form their own group: an augmented twin of one may sit in another
fold, which makes its label look more credible than it is (fewer findings there, never false ones).
`cleanlab.filter.find_label_issues` then flags the tiles, ranked by self-confidence (the out-of-sample
probability of the given label: lowest first = surest finding).

A class whose tiles all come from fewer observations than there are folds cannot be judged that way: the head
scoring the fold that holds its observation never saw the class, so every tile of it looks mislabelled. Such
tiles (given a class their head never saw) are left out of the suspects and of the judges' score, and the
review names the class and why (`Review.unjudged`), rather than blaming the features.

Caveat, also in docs/explore.md: the features come from a checkpoint trained on (some of) these labels, so a
wrong training label may have pulled its tile's features towards it; the review finds fewer such errors
than a model trained elsewhere would.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.classes import CLASS_NAMES
from core.data import Record
from core.progress import ProgressCallback, track

FOLDS = 5
SEED = 0


#: Below this out-of-sample macro-F1 of the judging heads, the review says its suspects are mostly noise.
TRUST_MACRO_F1 = 0.5


@dataclass
class Review:
    suspects: pd.DataFrame  # ranked: rank, file, path, source, given, suggested, p_suggested, p_given, ...
    issues: np.ndarray  # indices of flagged records, surest first
    folds: int
    judge_macro_f1: float = float("nan")  # how well the out-of-sample heads themselves classify (given labels)
    #: class name -> (tiles left out because their head never saw the class, the class's observations)
    unjudged: dict[str, tuple[int, int]] = field(default_factory=dict)
    judge_interval: list[float] | None = None  # its 95% interval (bootstrap over observations)

    def unjudged_text(self) -> str:
        """One sentence naming the classes the review could not judge, or '' when it judged every class."""
        if not self.unjudged:
            return ""
        parts = [f"{name} ({tiles} tile{'s' * (tiles != 1)}, {obs} observation{'s' * (obs != 1)})"
                 for name, (tiles, obs) in self.unjudged.items()]
        return (f"Not judged: {', '.join(parts)}. With folds grouped by observation, a class seen in fewer "
                f"observations than the {self.folds} folds is missing from the training part of the fold that "
                "holds it, so its tiles there cannot be judged; they are left out of the suspects. Add data with "
                "more observations of these classes to review them.")

    @property
    def trustworthy(self) -> bool:
        """Whether the heads judging the labels classify well enough for their doubts to mean much: features
        that cannot tell the classes apart contradict good labels everywhere."""
        return self.judge_macro_f1 >= TRUST_MACRO_F1


def groups_of(records: list[Record]) -> np.ndarray:
    """One group per observation; a tile without one is its own group."""
    keys = [r.observation or f"nogroup:{r.source}:{r.path}" for r in records]
    _, groups = np.unique(keys, return_inverse=True)
    return groups


def out_of_sample_probs(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = FOLDS,
                        seed: int = SEED, on_progress: ProgressCallback | None = None
                        ) -> tuple[np.ndarray, int, np.ndarray]:
    """(N, C) probabilities, each row from a head fitted without the row's observation; the folds used; and a
    mask of the rows whose given label their head never saw (no tile of that class in its training part)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_groups = len(np.unique(groups))
    folds = min(folds, n_groups)
    if folds < 2:
        raise ValueError(f"{n_groups} observation group(s): out-of-sample probabilities need at least 2")
    k = len(CLASS_NAMES)
    probs = np.zeros((len(labels), k), dtype=np.float64)
    unseen = np.zeros(len(labels), dtype=bool)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has only n members": the rare classes, known
        splits = list(splitter.split(features, labels, groups))
    for train, test in track(splits, len(splits), f"label review: {folds}-fold linear heads", on_progress):
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence notices: the probabilities are what matters
            head.fit(features[train], labels[train])
        p = head.predict_proba(features[test])
        present = head.classes_
        unseen[test] = ~np.isin(labels[test], present)
        if len(present) == k:
            probs[test] = p
        else:  # a class absent from this fold's training part: it gets a floor probability
            probs[np.ix_(test, present)] = p
    probs = np.clip(probs, 1e-6, None)
    return probs / probs.sum(axis=1, keepdims=True), folds, unseen


def review_labels(records: list[Record], features: np.ndarray, folds: int = FOLDS, seed: int = SEED,
                  on_progress: ProgressCallback | None = None) -> Review:
    """Flag likely label errors among `records` (features in the same order), surest first."""
    from cleanlab.filter import find_label_issues

    if len(records) != len(features):
        raise ValueError(f"{len(records)} records but {len(features)} feature rows")
    labels = np.fromiter((r.label for r in records), dtype=np.int64, count=len(records))
    if len(np.unique(labels)) < 2:
        raise ValueError("the tiles hold one class only: nothing to compare labels against")
    groups = groups_of(records)
    probs, used, unseen = out_of_sample_probs(features.astype(np.float32), labels, groups, folds, seed, on_progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issues = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence",
                                   filter_by="prune_by_noise_rate", min_examples_per_class=1,
                                   n_jobs=1)  # its default forks a Pool: a forked torch process can deadlock (seen)
    issues = np.asarray(issues, dtype=np.int64)
    issues = issues[~unseen[issues]]
    from sklearn.metrics import f1_score

    from core.bootstrap import intervals
    judged = ~unseen
    judge = float(f1_score(labels[judged], probs[judged].argmax(1), average="macro",
                           labels=np.unique(labels[judged]))) if judged.any() else float("nan")
    judge_iv = intervals(labels[judged], probs[judged].argmax(1), [str(g) for g in groups[judged]],
                         len(CLASS_NAMES))["macro_f1"] if judged.any() else None
    unjudged = {CLASS_NAMES[c]: (int((unseen & (labels == c)).sum()), len(np.unique(groups[labels == c])))
                for c in np.unique(labels[unseen])}
    return Review(suspects_table(records, labels, probs, issues), issues, used, judge, unjudged, judge_iv)


def suspects_table(records: list[Record], labels: np.ndarray, probs: np.ndarray, issues: np.ndarray) -> pd.DataFrame:
    names = np.asarray(CLASS_NAMES)
    sub = probs[issues]
    masked = sub.copy()
    masked[np.arange(len(issues)), labels[issues]] = -1  # the suggestion is the likeliest *other* class
    suggested = masked.argmax(1)
    return pd.DataFrame({
        "rank": np.arange(1, len(issues) + 1),
        "file": [records[i].name for i in issues],
        "landmark": [records[i].landmark for i in issues],  # an original and its augmented copies share it
        "given": names[labels[issues]],
        "suggested": names[suggested],
        "p_suggested": sub[np.arange(len(issues)), suggested].round(4),
        "p_given": sub[np.arange(len(issues)), labels[issues]].round(4),
        "source": [records[i].source for i in issues],
        "path": [records[i].path for i in issues],
        "observation": [records[i].observation or "" for i in issues],
        "split": [records[i].split or "" for i in issues],
    })
