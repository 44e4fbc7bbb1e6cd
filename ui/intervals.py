"""How the pages write a figure's 95% interval (`0.87–0.94`) and say what the intervals are."""
from __future__ import annotations


def interval_text(interval: list[float] | None) -> str:
    """`0.87–0.94`, a 95% interval as the tables show it beside its figure; "" when there is none."""
    return f"{interval[0]:.2f}–{interval[1]:.2f}" if interval else ""


def interval_caption(intervals: dict | None) -> str:
    """One line saying what the intervals are, under the figures that carry them."""
    if not intervals:
        return ("No intervals: this report was saved before they were computed (evaluate again to get them).")
    return (f"In brackets and beside each figure: its 95% interval, from a {intervals['method']}: the tiles of one "
            "observation are alike, so whole observations are resampled. A wide interval means this split cannot "
            "pin the figure down.")
