"""What the pages say about class imbalance: accuracy alone misleads, and the rare classes' figures are noisy."""
from __future__ import annotations

IMBALANCE_NOTE = ("Most HiRISE tiles are `other` (about 81% of the v3.2 set), so a model that always answers `other` "
                  "looks accurate: the Dataset page gives its accuracy on the data loaded. Read macro-F1, balanced "
                  "accuracy and per-class recall, not accuracy alone.")

RARE_NOTE = ("Rare classes (impact ejecta, spider, dark dune) have few tiles: their per-class figures move a lot "
             "with one tile more or less.")


def imbalance_note(baseline: dict | None = None, where: str = "") -> str:
    """The warning against reading accuracy alone, quoting the always-majority accuracy of the tiles in question
    (a report's `majority_baseline`) when there are any: a fixed figure would contradict the page's own."""
    if not baseline:
        return IMBALANCE_NOTE
    return (f"A model that always answers `{baseline['class']}` scores {baseline['accuracy']:.1%} accuracy{where}. "
            "Read macro-F1, balanced accuracy and per-class recall, not accuracy alone.")
