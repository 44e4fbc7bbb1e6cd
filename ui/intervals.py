"""How the pages write a figure's 95% interval (`0.87–0.94`) and say what the intervals are."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.checkpoint import LoadedModel


def interval_text(interval: list[float] | None) -> str:
    """`0.87–0.94`, a 95% interval as the tables show it beside its figure; "" when there is none."""
    return f"{interval[0]:.2f}–{interval[1]:.2f}" if interval else ""


def refit_warning(model: LoadedModel) -> str:
    """What a refit model can be scored on here (no tile of its own data: it trained on every one), and its honest
    figures (out-of-fold, with their intervals): Evaluate and Compare say the same."""
    m, iv = model.metrics, model.metrics.get("intervals") or {}
    return ("This model was refit on every tile of its data, with no validation or test split: every tile of that "
            "data is one it trained on, so none of them is scored here (where nothing else is left, it is not "
            "scored at all). Its honest figures are its cross-validation's, out-of-fold over the "
            f"{m.get('n')} originals: macro-F1 {m['macro_f1']:.3f} ({interval_text(iv.get('macro_f1'))}), balanced "
            f"accuracy {m['balanced_accuracy']:.3f} ({interval_text(iv.get('balanced_accuracy'))}), accuracy "
            f"{m['accuracy']:.3f} ({interval_text(iv.get('accuracy'))}); the default's figures on every file a user "
            "could send (the official turned, flipped and brightened copies too) are on Home. Score it on data it "
            "never saw.")


def interval_caption(intervals: dict | None) -> str:
    """One line saying what the intervals are, under the figures that carry them."""
    if not intervals:
        return ("No intervals: this report was saved before they were computed (evaluate again to get them).")
    return (f"In brackets and beside each figure: its 95% interval, from a {intervals['method']}: the tiles of one "
            "observation are alike, so whole observations are resampled. A wide interval means this split cannot "
            "pin the figure down.")
