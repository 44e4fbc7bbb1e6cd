"""What a training run trains on: its tiles and labels, the input normalisation, the online transforms, and
the batches (resident on the device, or through a DataLoader when per-tile transforms need workers), turned
into model input by `training_input`."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.checkpoint import CheckpointError, LoadedModel, load_checkpoint
from core.choices import AUGMENT_MODES, IMBALANCE_POLICIES
from core.classes import CLASS_NAMES, NUM_CLASSES
from core.data import DataError, HiriseData, load_dataset
from core.data.loader import DeviceBatches, TileDataset, begin_epoch, training_batches
from core.imageio import TILE_SIZE
from core.models import spec
from core.preprocess import to_model_input
from core.training import augment
from core.training.config import RunConfig


@dataclass
class TrainData:
    data: HiriseData
    train: TileDataset
    val: TileDataset
    mean: float
    std: float
    train_labels: np.ndarray
    batch_augment: nn.Module | None = None  # online transforms done on whole batches on the device
    init: LoadedModel | None = None  # the run an `init run` training starts from, read once (weights, scaling)
    val_groups: list[str | None] | None = None  # each validation tile's observation: the intervals resample them


def prepare_data(cfg: RunConfig, log) -> TrainData:
    data = load_dataset(cfg.data_spec)
    for w in data.warnings:
        log(f"warning: {w}")
    log(f"split: {data.split_method}")
    if data.overrides is not None:  # issue 16
        log(f"label overrides: {data.overrides.describe()}")
    if data.leakage:
        message = "the split leaks: " + "; ".join(data.leakage)
        if not cfg.allow_leakage:
            raise DataError(message + " (fix the data, or pass --allow-leakage to train anyway)")
        log(f"warning: {message} (allowed by --allow-leakage)")
    # the official modes train on the data set's own augmented copies; the others on originals only
    mode = AUGMENT_MODES[cfg.augment]
    train_records = data.select("train", originals_only=not mode.official_copies)
    val_records = data.select("val", originals_only=True)
    if not train_records:
        raise DataError("the training split is empty")
    if not val_records and not cfg.data_spec.refit:
        raise DataError("the validation split is empty: add data or raise val_fraction")
    if not val_records:
        log(f"no validation split (val_fraction 0, test_fraction 0): a refit on all the data for a fixed "
            f"{cfg.epochs} epochs; no early stopping and no best-epoch choice, the last epoch is the model"
            + (f"; calibration from cross-validation {cfg.calibrate_from}" if cfg.calibrate_from else
               "; no cross-validation named (calibrate_from), so it stays uncalibrated"))
    init = initial_model(cfg)
    mean, std = input_normalisation(cfg, data, train_records, init)
    log(f"input normalisation: mean {mean:.4f}, std {std:.4f}")
    batched, per_tile = augment.split_online(cfg.transforms) if mode.online else ([], [])
    transform = augment.online_transform(per_tile, TILE_SIZE) if per_tile else None  # on the tiles, before resizing
    copies = augment.expand_copies(cfg.transforms, TILE_SIZE) if mode.expand else []
    train = TileDataset(data.tiles(train_records), data.labels(train_records), transform, copies)
    val = TileDataset(data.tiles(val_records), data.labels(val_records))
    counts = np.bincount(data.labels(train_records), minlength=NUM_CLASSES)
    log(f"train {len(train_records)} tiles ({len(train)} per epoch, augment={cfg.augment}), val {len(val_records)} "
        f"originals; train per class: " + ", ".join(f"{c} {n}" for c, n in zip(CLASS_NAMES, counts, strict=True)))
    return TrainData(data, train, val, mean, std, data.labels(train_records),
                     augment.BatchAugment(batched) if batched else None, init, [r.observation for r in val_records])


def input_normalisation(cfg: RunConfig, data: HiriseData, train_records: list,
                        init: LoadedModel | None = None) -> tuple[float, float]:
    """The (mean, std) the model's input is standardised with, stored in every checkpoint.

    ImageNet weights keep the scaling they were trained with; weights from an earlier run keep that run's;
    a model from scratch gets the training tiles' own statistics."""
    if cfg.init == "imagenet":
        return spec(cfg.model).imagenet_norm or data.pixel_stats(train_records)
    if init is not None:
        return init.mean, init.std
    return data.pixel_stats(train_records)


def initial_model(cfg: RunConfig) -> LoadedModel | None:
    """The model an `init run` training starts from (a run folder means its best.pt), loaded once through the
    checkpoint reader every checkpoint goes through; None for any other start. CheckpointError when it is not
    the architecture this run trains."""
    if cfg.init != "run":
        return None
    path = Path(cfg.init_from)
    path = path / "best.pt" if path.is_dir() else path
    loaded = load_checkpoint(path)
    if loaded.arch != cfg.model:
        raise CheckpointError(f"{path} holds a {loaded.arch}, but this run trains a {cfg.model}")
    return loaded


def train_batches(cfg: RunConfig, td: TrainData, device: torch.device, rank: int = 0, world: int = 1
                  ) -> DeviceBatches | DataLoader:
    """This rank's training batches: tiles resident on the device unless per-tile transforms need a DataLoader."""
    return training_batches(td.train, cfg.batch_size, device, balanced=IMBALANCE_POLICIES[cfg.imbalance].balanced_sampler,
                            num_classes=NUM_CLASSES, seed=cfg.seed, rank=rank, world=world,
                            num_workers=cfg.num_workers)


def describe_batches(batches: DeviceBatches | DataLoader) -> str:
    """One log line saying which data path this run takes."""
    if isinstance(batches, DeviceBatches):
        mib = batches.tiles.numel() / 2**20
        return (f"data: {len(batches.labels)} tiles ({mib:,.0f} MiB uint8) resident on {batches.device}, "
                "batches drawn there")
    return f"data: DataLoader with {batches.num_workers} worker processes (per-tile transforms run per item)"


def training_input(cfg: RunConfig, td: TrainData, tiles: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of uint8 training tiles -> model input on `device` (batch augmentation included)."""
    x = to_model_input(tiles.to(device, non_blocking=True), td.mean, td.std, cfg.input_size, td.batch_augment)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


class ModelBatches:
    """The one loader training reads: this rank's batches as the model takes them, `(x, target, labels)`.

    Tiles come resident on the device (or through a DataLoader when per-tile transforms need workers); batch
    augmentation, resizing, normalisation and the memory layout are applied on the device (`training_input`), then
    MixUp/CutMix (`target` is then soft, `labels` stay the hard ones). An epoch is at most `max_steps` batches."""

    def __init__(self, cfg: RunConfig, td: TrainData, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.td, self.device = cfg, td, device
        self.source = train_batches(cfg, td, device, rank, world)
        self.mixer = augment.batch_mixer(cfg.mixup_alpha, cfg.cutmix_alpha, NUM_CLASSES)
        self.steps = min(len(self.source), cfg.max_steps_per_epoch or len(self.source))

    def __len__(self) -> int:
        return self.steps

    @property
    def mixes(self) -> bool:
        """Whether targets are mixed (a training accuracy then means little and is not reported)."""
        return self.mixer is not None

    def describe(self) -> str:
        return describe_batches(self.source)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` (which seeds the sampler's order)."""
        begin_epoch(self.source, epoch)
        for i, (tiles, labels) in enumerate(self.source):
            if i >= self.steps:
                return
            yield self.ready(tiles, labels)

    def forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches without end, epoch after epoch (the LR range test takes as many as it needs)."""
        epoch = 0
        while True:
            yield from self.epoch(epoch)
            epoch += 1

    def ready(self, tiles: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = training_input(self.cfg, self.td, tiles, self.device)
        labels = labels.to(self.device, non_blocking=True)
        x, target = self.mixer(x, labels) if self.mixer is not None else (x, labels)
        return x, target, labels
