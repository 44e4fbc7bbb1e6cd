"""Torch Dataset and DataLoader over decoded tiles: all training needs from the files."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from .dataset import HiriseData
from .records import DataError

Transform = Callable[[torch.Tensor], torch.Tensor]


class TileDataset(Dataset):
    """(1, H, W) uint8 tiles and their labels, held in memory.

    `transform` is applied to every item (online augmentation). `copies` implements the expand
    mode: the set becomes the originals plus one copy per transform, each copy seeing only its own
    transform, so an epoch is (len(copies) + 1) times longer.
    """

    def __init__(self, tiles: np.ndarray, labels: np.ndarray, transform: Transform | None = None,
                 copies: Sequence[Transform] = ()):
        if len(tiles) != len(labels):
            raise ValueError("tiles and labels differ in length")
        self.tiles = torch.from_numpy(np.ascontiguousarray(tiles)).unsqueeze(1)  # N,1,H,W uint8
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        self.copies = list(copies)

    def __len__(self) -> int:
        return len(self.labels) * (len(self.copies) + 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        copy, i = divmod(index, len(self.labels))
        tile = self.tiles[i]
        if copy:
            tile = self.copies[copy - 1](tile)
        elif self.transform is not None:
            tile = self.transform(tile)
        return tile, self.labels[i]

    def item_labels(self) -> torch.Tensor:
        """The label of every item, copies included (for samplers)."""
        return self.labels.repeat(len(self.copies) + 1)


def split_dataset(data: HiriseData, split: str, originals_only: bool, transform: Transform | None = None,
                  copies: Sequence[Transform] = ()) -> TileDataset:
    records = data.select(split, originals_only=originals_only)
    if not records:
        raise DataError(f"the {split} split is empty")
    return TileDataset(data.tiles(records), data.labels(records), transform, copies)


def balanced_sampler(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
                     ) -> WeightedRandomSampler:
    """Draw every class equally often (with replacement): one answer to the 81% `other`."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).double()
    weights = (1.0 / counts)[labels]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)


def make_loader(dataset: TileDataset, batch_size: int, train: bool, balanced: bool = False, num_workers: int = 0,
                seed: int = 0, pin_memory: bool = False, num_classes: int = 8) -> DataLoader:
    """Shuffle (or class-balance) for training; keep order for evaluation."""
    generator = torch.Generator().manual_seed(seed)
    sampler = balanced_sampler(dataset.item_labels(), num_classes, generator) if train and balanced else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      drop_last=train and len(dataset) > batch_size, num_workers=num_workers,
                      pin_memory=pin_memory, generator=generator, persistent_workers=num_workers > 0)
