"""Registries of the run choices that are not code of their own: augmentation modes, class-imbalance policies, the
headline metrics. (Split names live in core.data.records.)

Models, optimizers, schedulers and transforms have registries beside their code (core.models, core.training.optim,
core.training.augment). These choices are behaviours of the batch loader and the loss, so each is declared here once, with
what the code needs to know about it; RunConfig's options, the Train form, the CLI's flags, validation, the reports
and Compare all derive from these tables. Standard library only: importing it costs nothing (app cold start).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentMode:
    """How the training set is built from the data set's files."""
    name: str
    help: str
    official_copies: bool = False  # trains on the data set's own -r90 ... -brt copies as well as the originals
    online: bool = False  # a random draw of the chosen transforms on every tile, every epoch
    expand: bool = False  # one fixed copy per chosen transform, every epoch

    @property
    def uses_transforms(self) -> bool:
        return self.online or self.expand


AUGMENT_MODES: dict[str, AugmentMode] = {m.name: m for m in (
    AugmentMode("none", "the originals as they are"),
    AugmentMode("online", "random per tile, every epoch", online=True),
    AugmentMode("expand", "one copy per transform", expand=True),
    AugmentMode("official", "the data set's own -r90 ... -brt copies", official_copies=True),
    AugmentMode("official_online", "those copies, and the online transforms on top", official_copies=True,
                online=True),
)}


@dataclass(frozen=True)
class ImbalancePolicy:
    """How training answers the class imbalance (about 81% `other`)."""
    name: str
    help: str
    weight_power: float = 0.0  # cross-entropy weights (n / (k n_c)) ** power; 0: unweighted
    balanced_sampler: bool = False  # draw every class equally often instead


IMBALANCE_POLICIES: dict[str, ImbalancePolicy] = {p.name: p for p in (
    ImbalancePolicy("none", "plain cross-entropy"),
    ImbalancePolicy("weighted_loss", "loss weights n/(k n_c)", weight_power=1.0),
    ImbalancePolicy("sqrt_weighted_loss", "their square root (milder)", weight_power=0.5),
    ImbalancePolicy("balanced_sampler", "a sampler that draws every class equally often", balanced_sampler=True),
)}


@dataclass(frozen=True)
class Metric:
    """A figure a run is judged or selected by."""
    key: str
    label: str
    higher_is_better: bool = True


HEADLINE_METRICS: tuple[Metric, ...] = (
    Metric("macro_f1", "macro-F1"),
    Metric("balanced_accuracy", "balanced accuracy"),
    Metric("accuracy", "accuracy"),
)
"""What every report leads with, in this order: macro-F1 and balanced accuracy show a model that always answers
`other`; accuracy alone hides it, so it always comes last and beside the always-`other` figure."""
HEADLINE: tuple[str, ...] = tuple(m.key for m in HEADLINE_METRICS)
METRIC_LABELS: dict[str, str] = {m.key: m.label for m in (*HEADLINE_METRICS, Metric("weighted_f1", "weighted F1"))}
SELECTION_METRICS: tuple[str, ...] = (*HEADLINE, "weighted_f1")
"""What a run may early-stop and pick its best epoch on (higher is better for all)."""
