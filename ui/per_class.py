"""A report's per-class table: precision, recall, F1 and support, with what a class without tiles or never
predicted shows instead of a misleading 0."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ui.intervals import interval_text

if TYPE_CHECKING:
    import pandas as pd

NO_TILES = "no tiles"
NEVER_PREDICTED = "n/a"  # short: the table sits in a narrow column (never_predicted names the classes)


def _recall_colour(value: float | None) -> str:
    """Red to green, as background_gradient drew it; no colour where there is no recall."""
    if value is None or value != value:
        return "color: #888"
    from matplotlib import colormaps
    r, g, b, _ = colormaps["RdYlGn"](float(value))
    return f"background-color: rgb({r * 255:.0f}, {g * 255:.0f}, {b * 255:.0f}); color: black"


def never_predicted(per_class: list[dict], confusion: list[list[int]] | None = None) -> list[str]:
    """The classes a report's model never answered (their precision is undefined); a report saved before
    predictions were counted per class gives them through its confusion matrix's columns."""
    if per_class and "predicted" in per_class[0]:
        return [c["class"] for c in per_class if c["predicted"] == 0]
    if confusion is None:
        return []
    return [c["class"] for c, column in zip(per_class, zip(*confusion, strict=True), strict=True) if sum(column) == 0]


def per_class_table(per_class: list[dict], confusion: list[list[int]] | None = None,
                    intervals: dict | None = None) -> pd.io.formats.style.Styler:
    """Per-class precision, recall, F1 and support, recall coloured, each figure with its 95% interval (a
    report's `intervals`, when it has them). A class the split has no tile of shows "no tiles" as its recall and
    F1 (a red 0.000 read as total failure; Streamlit shows NaN as "None"); a class never predicted shows "n/a" as
    its precision, which is undefined, not 0."""
    import pandas as pd  # here, not at the top: the Explain page's first prediction does not wait for it
    table = pd.DataFrame(per_class).set_index("class")
    absent = table["support"] == 0
    unpredicted = table.index.isin(never_predicted(per_class, confusion))
    recall = table["recall"].astype(float).mask(absent)
    class_iv = (intervals or {}).get("per_class") or [{}] * len(table)
    for column in ("precision", "recall", "f1"):
        blank = unpredicted if column == "precision" else absent
        text = NEVER_PREDICTED if column == "precision" else NO_TILES
        table[column] = [text if b else f"{v:.3f}" + (f" ({interval_text(iv.get(column))})" if iv.get(column) else "")
                         for v, b, iv in zip(table[column].astype(float), blank, class_iv, strict=True)]
    table = table.drop(columns="predicted", errors="ignore")  # said through precision; the table keeps its width
    return table.style.apply(lambda col: [_recall_colour(recall[c]) for c in col.index], subset=["recall"])
