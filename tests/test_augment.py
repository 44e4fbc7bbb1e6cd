"""Augmentation: the batched on-device path does what the per-tile transforms do."""
from __future__ import annotations

import pytest
import torch

from core.training.augment import BATCHED, BatchAugment, expand_copies, online_transform, split_online
from core.training.config import TRANSFORMS


def test_batched_symmetries_stay_in_the_dihedral_group():
    torch.manual_seed(0)
    tile = torch.zeros(1, 1, 5, 5)
    tile[0, 0, 0, 1] = 1.0  # no symmetry of its own: every flip/rotation gives a different image
    group = {tuple(torch.rot90(t, k, (-2, -1)).flatten().tolist()) for k in range(4) for t in (tile[0], tile[0].flip(-1))}
    out = BatchAugment(["hflip", "vflip", "rot90"])(tile.repeat(400, 1, 1, 1))
    seen = {tuple(o.flatten().tolist()) for o in out}
    assert seen <= group and len(seen) == 8  # all eight, and nothing else


def test_batched_jitter_and_erasing_are_per_tile_and_bounded():
    torch.manual_seed(1)
    x = torch.full((256, 1, 32, 32), 0.5)
    x[:, :, :16] = 0.25
    out = BatchAugment(["color_jitter", "erasing"])(x.clone())
    assert out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(1)
    assert 0.3 < changed.float().mean() < 0.9  # each tile draws its own chance
    erased = (out == 0).flatten(1).any(1)
    assert 0.1 < erased.float().mean() < 0.45


def test_split_and_every_transform_works_per_tile():
    batched, per_tile = split_online(list(TRANSFORMS))
    assert set(batched) == set(BATCHED) and set(per_tile) == set(TRANSFORMS) - set(BATCHED)
    x = torch.randint(0, 256, (1, 227, 227), dtype=torch.uint8)
    for t in [*expand_copies(list(TRANSFORMS)), online_transform(list(TRANSFORMS))]:
        y = t(x)
        assert y.shape == x.shape and y.dtype == torch.uint8
    with pytest.raises(ValueError, match="cannot batch"):
        BatchAugment(["perspective"])
