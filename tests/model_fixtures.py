"""Tiny simple_cnn models trained in seconds on synthetic tiles, saved as real checkpoints.

Two models, each trained once per test process and shared:

- `tiny_checkpoint()`: the 8 classes of `tests.synthetic` (a class is where its bright blob sits),
  for evaluation and prediction. Convolutions plus global pooling can only tell positions apart
  from the image border, so its CAMs are not a clean test of localisation.
- `blob_checkpoint()`: `crater` = a bright blob anywhere, `other` = noise alone. It must find the
  blob wherever it is, so its CAMs have to follow the blob: what the CAM tests check.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoint import checkpoint_payload
from core.checkpoint_file import save_checkpoint
from core.classes import CLASS_NAMES
from core.models import build_model
from core.preprocess import to_model_input
from tests import synthetic

IMAGE_SIZE = 32  # the 8-class model's input size; tiles stay 227 and are resized by preprocessing
BLOB_IMAGE_SIZE = 96  # the blob detector's: a 12x12 CAM grid whose cells see a third of the tile


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread for a while. On a 2-core machine that is busy (a training run next
    to the tests), two OpenMP threads wait on each other and small models run 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def blob_tile(cy: float | None, cx: float | None, seed: int, size: int = 227) -> np.ndarray:
    """Noise like `synthetic.tile`, with its bright blob centred at (cy, cx), or none when cy is None."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 12, (size, size))
    if cy is not None:
        yy, xx = np.mgrid[:size, :size]
        img += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 14.0**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_tiles(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 227, 227) uint8 tiles and their labels, every class equally often."""
    labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
    tiles = np.stack([synthetic.tile(int(label), seed * 100_000 + i) for i, label in enumerate(labels)])
    return tiles, labels


def blob_tiles(n: int, seed: int, size: int = 227) -> tuple[np.ndarray, np.ndarray]:
    """Half `crater` (1): a blob at a random position; half `other` (0): noise alone."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    tiles = [blob_tile(*(rng.uniform(0.15 * size, 0.85 * size, 2) if label else (None, None)),
                       seed=seed * 100_000 + i, size=size) for i, label in enumerate(labels)]
    return np.stack(tiles), labels


def train_tiny(out: Path, tiles: np.ndarray, labels: np.ndarray, image_size: int, steps: int = 40,
               batch_size: int = 16, seed: int = 0, name: str = "tiny-simple-cnn.pt",
               whole: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Train simple_cnn with a plain Adam loop and save it with `save_checkpoint`; returns the path.

    Tiles are resized by `image_size / 227`, so crops smaller than 227 train convolutions that see
    whole tiles at `image_size` pixels, at a fraction of the cost. Global pooling then dilutes a
    small feature more on a whole tile than on a crop, so with `whole` (tiles, labels) the
    BatchNorm statistics and the linear head are refitted on whole tiles (forward passes only).
    """
    torch.manual_seed(seed)
    mean, std = float(tiles.mean() / 255.0), float(tiles.std() / 255.0)
    x = to_model_input(torch.from_numpy(tiles)[:, None], mean, std, round(image_size * tiles.shape[-1] / 227))
    y = torch.from_numpy(labels)
    model = build_model("simple_cnn", num_classes=len(CLASS_NAMES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if whole is not None:
        x = to_model_input(torch.from_numpy(whole[0])[:, None], mean, std, image_size)
        y = torch.from_numpy(whole[1])
    _recompute_batchnorm(model, x)
    model.eval()
    if whole is not None:
        _refit_head(model, x, y)
    payload = checkpoint_payload(model, arch="simple_cnn", image_size=image_size, mean=mean, std=std,
                                 config={"fixture": "tests/model_fixtures.py", "steps": steps},
                                 metrics={}, temperature=1.0, epoch=0)
    return save_checkpoint(Path(out) / name, payload)


def _recompute_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """After so few steps the BatchNorm running averages lag behind the weights: recompute them
    exactly over `x`, so the model in eval mode behaves as it did in training."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model(x)


def _refit_head(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200) -> None:
    with torch.no_grad():
        feats = torch.flatten(model.pool(model.block3(model.block2(model.block1(x)))), 1)
    opt = torch.optim.Adam(model.fc.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model.fc(feats), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _scratch(prefix: str) -> Path:
    """A temporary folder removed when the test process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def tiny_checkpoint() -> Path:
    """The 8-class model (trained on first use in this process)."""
    tiles, labels = synthetic_tiles(per_class=12, seed=1)
    with one_thread():
        return train_tiny(_scratch("hirise-tiny-model-"), tiles, labels, IMAGE_SIZE, steps=40)


@functools.cache
def blob_checkpoint() -> Path:
    """The blob detector (trained on first use in this process).

    Trained on 113 px crops (seen at 48 px: a quarter of the cost of whole tiles at 96 px), so
    each CAM cell of a whole tile at 96 px sees about a third of the tile: the blob's neighbourhood.
    """
    crops, labels = blob_tiles(64, seed=2, size=113)
    with one_thread():
        return train_tiny(_scratch("hirise-blob-model-"), crops, labels, BLOB_IMAGE_SIZE,
                          steps=40, name="blob-simple-cnn.pt", whole=blob_tiles(32, seed=3))
