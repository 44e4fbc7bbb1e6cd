"""The 8 flips and 90-degree turns of a square tile (the dihedral group D4), in one order for every engine: torch
(`core.inference.DIHEDRAL`) and numpy (`view`, for ONNX Runtime without torch). Mars has no 'up': a model's
prediction averaged over them is the TTA prediction."""
from __future__ import annotations

import numpy as np

#: (mirrored, quarter turns) of each view, the identity first.
VIEWS: tuple[tuple[bool, int], ...] = tuple((flip, k) for flip in (False, True) for k in range(4))

#: What each view does to a tile, in VIEWS' order.
VIEW_NAMES = ("as sent", "turned 90°", "turned 180°", "turned 270°", "mirrored", "mirrored, turned 90°",
              "mirrored, turned 180°", "mirrored, turned 270°")


def view(x: np.ndarray, index: int) -> np.ndarray:
    """View `index` of a (..., H, W) array: mirrored left-right first, then turned, as torch.rot90(dims=(-2, -1))
    turns (counter-clockwise)."""
    flip, k = VIEWS[index]
    return np.rot90(x[..., ::-1] if flip else x, k, axes=(-2, -1))
