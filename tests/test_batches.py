"""The one loader training reads (core.training.batches.ModelBatches): model-ready batches, an epoch capped at
max_steps_per_epoch, MixUp/CutMix with hard labels kept beside the soft targets; the same batches for the LR test."""
from __future__ import annotations

import itertools

import pytest
import torch

from core.training.batches import ModelBatches, prepare_data
from core.training.config import RunConfig
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(data_dir, **changes) -> ModelBatches:
    cfg = RunConfig(data=[str(data_dir)], **{**TINY, "channels_last": False, **changes}).validate()
    return ModelBatches(cfg, prepare_data(cfg, log=lambda msg: None), torch.device("cpu"))


def test_batches_are_what_the_model_takes(data_dir):
    batches = _batches(data_dir, max_steps_per_epoch=2, batch_size=8)
    assert len(batches) == 2 and not batches.mixes and "resident on cpu" in batches.describe()
    seen = list(batches.epoch(0))
    assert len(seen) == 2
    x, target, labels = seen[0]
    assert x.dtype == torch.float32 and x.shape == (8, 1, 48, 48)  # resized to image_size, one channel
    assert abs(float(x.mean())) < 3 and target is labels and labels.dtype == torch.long
    again = [b[2] for b in batches.epoch(0)]
    assert all(torch.equal(a, b[2]) for a, b in zip(again, seen, strict=True))  # an epoch's order is its own, repeatable


def test_mixing_gives_soft_targets_and_keeps_the_labels(data_dir):
    batches = _batches(data_dir, mixup_alpha=0.4, max_steps_per_epoch=1, batch_size=8)
    _x, target, labels = next(iter(batches.epoch(0)))
    assert batches.mixes and target.shape == (8, 8) and torch.allclose(target.sum(1), torch.ones(8))
    assert labels.shape == (8,) and labels.dtype == torch.long


def test_the_lr_test_takes_batches_without_end(data_dir):
    batches = _batches(data_dir, max_steps_per_epoch=2, batch_size=8)
    assert len(list(itertools.islice(batches.forever(), 7))) == 7  # past the end of an epoch, into the next
