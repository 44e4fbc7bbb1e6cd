"""The one preprocessing of tiles into model input, shared by training, evaluation and prediction."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def to_model_input(tiles: torch.Tensor, mean: float, std: float, image_size: int,
                   augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(B, 1, H, W) uint8 (any device) -> (B, 1, S, S) float, scaled to [0, 1] then standardised.

    `augment` (training only) sees the [0, 1] batch before resizing. Resizing (bilinear,
    antialiased) happens only when the model's input size differs from the tile's.
    """
    x = tiles.float().div_(255.0)
    if augment is not None:
        x = augment(x)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.sub_(mean).div_(std)

