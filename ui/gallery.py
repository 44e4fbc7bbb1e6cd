"""A gallery of tiles a researcher can cite: each with its full file name (copyable), true label,
prediction and probability, in a grid (Streamlit's image captions are cut to the image's width)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

PER_ROW = 6


def tile_caption(item: dict) -> str:
    """true → predicted · probability of the prediction."""
    prob = item["prob"] if "prob" in item else max(item["probs"])
    return f"true **{item['true']}** → predicted **{item['pred']}** · {prob:.0%}"


def tile_gallery(images: Sequence[np.ndarray], items: Sequence[dict], per_row: int = PER_ROW) -> None:
    """Each tile above its caption and its full name in a code box (click to copy)."""
    for start in range(0, len(items), per_row):
        cols = st.columns(per_row)
        for col, image, item in zip(cols, images[start:start + per_row], items[start:start + per_row], strict=False):  # the last row may be short
            with col:
                st.image(image, width="stretch")
                st.markdown(tile_caption(item))
                st.code(item["name"], language=None, wrap_lines=True)
