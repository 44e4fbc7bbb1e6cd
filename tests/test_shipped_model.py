"""The shipped checkpoints: the default loads on a fresh clone, predicts the 8 classes, and (with the real tiles)
reproduces its model card's validation figures on the tiles it recorded; the from-scratch resnet18 baseline stays
selectable."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint, read_checkpoint
from core.classes import CLASS_NAMES
from core.data import DataSpec, load_dataset
from core.evaluate import evaluate_model
from core.inference import predict_proba
from core.settings import DEFAULT_CHECKPOINT, PROJECT_ROOT
from tests import synthetic

BASELINE = PROJECT_ROOT / "checkpoints" / "hirise-resnet18.pt"
TOLERANCE = 0.02


def card_figures(checkpoint: Path) -> dict:
    """What tools/ship_model.py measured when it shipped `checkpoint` (the model card's source)."""
    return json.loads(checkpoint.with_suffix(".json").read_text())


def test_shipped_checkpoint_loads_and_predicts_every_class_name():
    assert DEFAULT_CHECKPOINT.is_file(), f"missing {DEFAULT_CHECKPOINT}"
    assert DEFAULT_CHECKPOINT.stat().st_size < 50 * 2**20
    payload = read_checkpoint(DEFAULT_CHECKPOINT)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    loaded = load_checkpoint()  # the default path, no argument: what the app and the CLIs use
    assert loaded.class_names == list(CLASS_NAMES) and loaded.arch == "tf_efficientnet_lite2"
    assert loaded.temperature > 0 and loaded.metrics["split"] == "val"
    assert len(loaded.splits["val"]["files"]) == card_figures(DEFAULT_CHECKPOINT)["val"]["n"]  # its recorded tiles
    tiles = np.stack([synthetic.tile(c, seed=c) for c in range(8)])
    probs = predict_proba(loaded, tiles)
    assert probs.shape == (8, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_the_from_scratch_baseline_stays_selectable():
    baseline = load_checkpoint(BASELINE)
    assert baseline.arch == "resnet18" and baseline.class_names == list(CLASS_NAMES)


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_reproduces_its_card_on_its_recorded_validation_tiles(shared_data):
    loaded = load_checkpoint()
    card = card_figures(DEFAULT_CHECKPOINT)["val"]
    cfg = loaded.config
    # the card's data, found next to this checkout whatever absolute path it was trained from
    spec = DataSpec.from_mapping(cfg)
    data = load_dataset(dataclasses.replace(spec, paths=tuple(shared_data / Path(p).name for p in spec.paths)))
    report = evaluate_model(loaded, data, "val")
    base = report["majority_baseline"]
    assert report["n"] == card["n"] and "recorded in the checkpoint" in report["tiles_from"]
    assert report["macro_f1"] >= card["macro_f1"] - TOLERANCE
    assert report["macro_f1"] > base["macro_f1"] + 0.3  # always-other scores about 0.11 here
    assert report["balanced_accuracy"] > base["balanced_accuracy"] + 0.3


def test_shipped_model_flags_noise_as_unusual():
    """Pure noise is called `other` with confidence; the out-of-distribution check says it is unusual."""
    from core.ood import FLAG_SHARE
    from core.predict import predict_array

    loaded = load_checkpoint()
    assert loaded.ood is not None, "the shipped checkpoint has no out-of-distribution reference"
    noise = np.random.default_rng(0).integers(0, 256, (227, 227), dtype=np.uint8)
    assert predict_array(loaded, noise).typicality >= FLAG_SHARE
