"""Which windows a person should label next: the query strategies, in one registry that the CLI, the Label page
and the simulation benchmark (`bench/bench_active.py`) all read.

The scores and the k-center greedy selection are scikit-activeml's (`uncertainty_scores`, `CoreSet`,
`RandomSampling`); what is ours is the pool they run on (calibrated probabilities, penultimate features and
typicality of every window) and the mix."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pool:
    """What the model says about every unlabelled window: the input of every strategy."""

    probabilities: np.ndarray  # (N, C) calibrated class probabilities
    features: np.ndarray  # (N, D) penultimate features (diversity is measured there)
    typicality: np.ndarray | None = None  # (N,) share of reference tiles farther out; low = unlike training
    labelled_features: np.ndarray | None = None  # (M, D) tiles already labelled: diversity counts them as covered

    def __len__(self) -> int:
        return len(self.probabilities)


class StrategyError(ValueError):
    """A strategy that cannot run on this pool (said in one line)."""


Pick = Callable[[Pool, int, int], np.ndarray]


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    pick: Pick  # (pool, budget, seed) -> indices into the pool, best first, at most `budget`, no repeats
    needs_typicality: bool = False


def _uncertainty(method: str) -> Callable[[Pool], np.ndarray]:
    def scores(pool: Pool) -> np.ndarray:
        from skactiveml.pool._uncertainty_sampling import uncertainty_scores

        probs = np.nan_to_num(np.asarray(pool.probabilities, np.float64), nan=0.0)
        return np.asarray(uncertainty_scores(probs, method=method), np.float64)
    return scores


margin_scores = _uncertainty("margin_sampling")  # 1 - (p1 - p2): 1 where the two likeliest classes tie
entropy_scores = _uncertainty("entropy")


def _top(scores: np.ndarray, budget: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `budget` highest scores, highest first (ties by index: the same pool gives the same picks)."""
    scores = np.asarray(scores, np.float64).copy()
    if exclude is not None and len(exclude):
        scores[exclude] = -np.inf
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])]
    return order[:budget]


def _by_margin(pool: Pool, budget: int, seed: int) -> np.ndarray:
    return _top(margin_scores(pool), budget)


def _by_entropy(pool: Pool, budget: int, seed: int) -> np.ndarray:
    return _top(entropy_scores(pool), budget)


def _random(pool: Pool, budget: int, seed: int) -> np.ndarray:
    from skactiveml.pool import RandomSampling

    budget = min(budget, len(pool))
    if budget == 0:
        return np.empty(0, np.int64)
    return np.asarray(RandomSampling(random_state=seed).query(
        np.zeros((len(pool), 1)), np.full(len(pool), np.nan), batch_size=budget), np.int64)


def k_center(features: np.ndarray, budget: int, seed: int, among: np.ndarray | None = None,
             covered: np.ndarray | None = None) -> np.ndarray:
    """k-center greedy (scikit-activeml's CoreSet): each pick the window farthest from everything labelled or
    picked, so 50 picks are not 50 neighbours. `among`: the pool indices it may pick; `covered`: features of
    tiles already labelled."""
    from skactiveml.pool import CoreSet

    among = np.arange(len(features)) if among is None else np.asarray(among, np.int64)
    budget = min(budget, len(among))
    if budget == 0:
        return np.empty(0, np.int64)
    covered = np.empty((0, features.shape[1]), features.dtype) if covered is None else covered
    x = np.concatenate([covered, features]).astype(np.float32)
    y = np.full(len(x), np.nan)
    y[:len(covered)] = 0  # any label: CoreSet only reads which samples are labelled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its note that the labels are all missing when nothing is covered yet
        picked = CoreSet(random_state=seed).query(x, y, candidates=among + len(covered), batch_size=budget)
    return np.asarray(picked, np.int64) - len(covered)


def _diverse(pool: Pool, budget: int, seed: int) -> np.ndarray:
    return k_center(pool.features, budget, seed, covered=pool.labelled_features)


def _least_typical(pool: Pool, budget: int, seed: int) -> np.ndarray:
    if pool.typicality is None:
        raise StrategyError("the model has no out-of-distribution reference, so windows cannot be ranked by how "
                            "unlike the training tiles they are; choose another strategy")
    return _top(-np.nan_to_num(np.asarray(pool.typicality, np.float64), nan=1.0), budget)


#: The mix's shares of the budget: uncertain and diverse, then the least typical, then random (the part that keeps
#: the queue an unbiased sample of the source, so its labels also measure the model).
MIX_SHARES = {"uncertain and diverse": 0.6, "least typical": 0.2, "random": 0.2}
#: The uncertain part chooses by k-center among this many times its share of the most uncertain windows.
MIX_POOL_FACTOR = 4


def _mix(pool: Pool, budget: int, seed: int) -> np.ndarray:
    budget = min(budget, len(pool))
    n_uncertain = round(budget * MIX_SHARES["uncertain and diverse"])
    n_typical = round(budget * MIX_SHARES["least typical"]) if pool.typicality is not None else 0
    uncertain = _top(margin_scores(pool), max(n_uncertain * MIX_POOL_FACTOR, n_uncertain))
    picked = list(k_center(pool.features, n_uncertain, seed, among=uncertain, covered=pool.labelled_features))
    if n_typical:
        picked += list(_top(-np.nan_to_num(pool.typicality, nan=1.0), n_typical, exclude=np.asarray(picked)))
    rest = np.setdiff1d(np.arange(len(pool)), picked)
    rng = np.random.default_rng(seed)
    picked += list(rng.permutation(rest)[:budget - len(picked)])
    return np.asarray(picked, np.int64)


#: The strategies, by name: the CLI's choices, the page's menu and the benchmark's curves come from here.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("margin", "uncertainty: the windows whose two likeliest classes are closest", _by_margin),
    Strategy("entropy", "uncertainty: the windows whose class probabilities are most spread", _by_entropy),
    Strategy("diversity", "k-center greedy on the model's features: picks spread over what the source holds",
             _diverse),
    Strategy("ood", "out-of-distribution: the windows least like the training tiles", _least_typical,
             needs_typicality=True),
    Strategy("random", "a uniform sample: the baseline every other strategy must beat", _random),
    Strategy("mix", "60% uncertain and diverse (k-center among the most uncertain), 20% least typical, 20% "
             "random", _mix),
)}
#: The default, chosen by the simulation (bench/bench_active.py, docs/labelling.md): the only strategy that reached
#: random's final macro-F1 in every seed, with about half of random's labels.
DEFAULT_STRATEGY = "margin"


def rank(pool: Pool, strategy: str, budget: int, seed: int = 0) -> np.ndarray:
    """The pool indices to label, in the order to ask them; at most `budget`, never a window twice."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if budget < 1:
        raise StrategyError(f"a budget of {budget} asks for nothing; give at least 1")
    picked = np.asarray(STRATEGIES[strategy].pick(pool, int(budget), int(seed)), np.int64)
    _, first = np.unique(picked, return_index=True)
    return picked[np.sort(first)][:budget]
