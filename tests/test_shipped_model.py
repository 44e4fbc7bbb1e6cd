"""The shipped checkpoint: loads on a fresh clone, predicts the 8 classes, and (with the real tiles) beats the
majority baseline by a wide margin on the validation split it was selected on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint, read_checkpoint
from core.classes import CLASS_NAMES
from core.data import load_dataset
from core.evaluate import evaluate_model
from core.settings import DEFAULT_CHECKPOINT
from tests import synthetic

# From checkpoints/MODEL_CARD.md (validation split, originals, calibrated): minus a small tolerance.
CARD_VAL_MACRO_F1 = 0.663
TOLERANCE = 0.02


def test_shipped_checkpoint_loads_and_predicts_every_class_name():
    assert DEFAULT_CHECKPOINT.is_file(), f"missing {DEFAULT_CHECKPOINT}"
    assert DEFAULT_CHECKPOINT.stat().st_size < 50 * 2**20
    payload = read_checkpoint(DEFAULT_CHECKPOINT)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    loaded = load_checkpoint()  # the default path, no argument: what the app and the CLIs use
    assert loaded.class_names == list(CLASS_NAMES) and loaded.arch == "resnet18"
    assert loaded.temperature > 0 and loaded.metrics["split"] == "val"
    tiles = np.stack([synthetic.tile(c, seed=c) for c in range(8)])
    probs = loaded.predict_proba(tiles)
    assert probs.shape == (8, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_beats_the_majority_baseline_on_its_validation_split(shared_data):
    loaded = load_checkpoint()
    cfg = loaded.config
    # the card's data, found next to this checkout whatever absolute path it was trained from
    paths = [shared_data / Path(p).name for p in cfg["data"]]
    data = load_dataset(paths, cfg["conflict_policy"], cfg["split_mode"], cfg["val_fraction"], cfg["test_fraction"],
                        cfg["split_seed"], cfg["keep_split_repeats"])
    report = evaluate_model(loaded, data, "val")
    base = report["majority_baseline"]
    assert report["n"] == loaded.metrics["n"]  # the same validation split it was selected on
    assert report["macro_f1"] >= CARD_VAL_MACRO_F1 - TOLERANCE
    assert report["macro_f1"] > base["macro_f1"] + 0.3  # always-other scores about 0.11 here
    assert report["balanced_accuracy"] > base["balanced_accuracy"] + 0.3
