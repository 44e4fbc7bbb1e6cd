"""Decoded tiles as training batches: a Dataset, and the fastest way to serve it (on the device or by a DataLoader)."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

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


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-item draw weights that make every class equally likely: one answer to the 81% `other`."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).double()
    return (1.0 / counts)[labels]


class DeviceBatches:
    """Training batches indexed straight out of uint8 tiles held on the training device.

    airbench's data path: no worker processes, no per-item Python, no host-to-device copy after the
    first (on a GPU the whole set lives in its memory; on the CPU the tensor is used where it is). An
    epoch is one `randperm` (or, class-balanced, one `multinomial` draw) on the device, seeded by
    (seed, epoch) so that a resumed run sees the same order; a batch is one gather. With several
    ranks, each takes its own stride of the same order and every rank gets the same number of steps.
    Only for tiles with no per-tile transform: the online transforms run batched afterwards.
    """

    def __init__(self, dataset: TileDataset, batch_size: int, device: torch.device, balanced: bool = False,
                 num_classes: int = 8, seed: int = 0, rank: int = 0, world: int = 1):
        if dataset.transform is not None or dataset.copies:
            raise ValueError("DeviceBatches serves tiles without per-tile transforms; use a DataLoader")
        self.tiles = dataset.tiles.to(device)
        self.labels = dataset.labels.to(device)
        self.weights = balanced_weights(self.labels, num_classes) if balanced else None
        self.batch_size, self.device, self.seed, self.rank, self.world = batch_size, device, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per_rank = len(self.labels) // self.world
        return max(1, per_rank // self.batch_size)  # drop the last partial batch, unless it is the only one

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(n, device=self.device, generator=g)
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        order = order[self.rank:n - n % self.world:self.world]
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.tiles[idx], self.labels[idx]


def training_batches(dataset: TileDataset, batch_size: int, device: torch.device, balanced: bool = False,
                     num_classes: int = 8, seed: int = 0, rank: int = 0, world: int = 1, num_workers: int = 0
                     ) -> DeviceBatches | DataLoader:
    """The fastest way to serve `dataset` for training: `DeviceBatches` when no per-tile transform runs,
    else a DataLoader (per-tile transforms need per-item Python, which worker processes can spread)."""
    if dataset.transform is None and not dataset.copies:
        return DeviceBatches(dataset, batch_size, device, balanced, num_classes, seed, rank, world)
    g = torch.Generator().manual_seed(seed + rank)
    labels = dataset.item_labels()
    if balanced:
        sampler = WeightedRandomSampler(balanced_weights(labels, num_classes), math.ceil(len(labels) / world),
                                        replacement=True, generator=g)
    elif world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = None
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      drop_last=len(dataset) > batch_size * world, num_workers=num_workers,
                      pin_memory=device.type == "cuda", generator=g, persistent_workers=num_workers > 0)


def begin_epoch(batches: DeviceBatches | DataLoader, epoch: int) -> None:
    """Tell the batches which epoch starts (it seeds the order of DeviceBatches and of a DistributedSampler)."""
    target = batches if isinstance(batches, DeviceBatches) else batches.sampler
    if isinstance(target, (DeviceBatches, DistributedSampler)):
        target.set_epoch(epoch)
