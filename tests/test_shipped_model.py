"""The shipped checkpoints: the default loads on a fresh clone, predicts the 8 classes, carries the out-of-fold
figures of the cross-validation that chose it (and RunConfig's defaults are its recipe); the earlier defaults stay
selectable."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint, read_checkpoint
from core.classes import CLASS_NAMES
from core.data import DataSpec, load_dataset
from core.defaults import fingerprint, load_oof, oof_file
from core.evaluate import evaluate_model
from core.inference import predict_proba
from core.registry import current_entry, read_registry
from core.settings import DEFAULT_CHECKPOINT, PROJECT_ROOT
from core.settings import DEFAULTS_REGISTRY as REGISTRY
from tests import synthetic

BASELINE = PROJECT_ROOT / "checkpoints" / "hirise-resnet18.pt"
TOLERANCE = 0.02


def registry_entry() -> dict:
    """The registry's current default: what DEFAULT_CHECKPOINT must be."""
    return current_entry(read_registry(REGISTRY))


def test_shipped_checkpoints_are_not_ignored_by_git():
    """CI runs on a clean clone: a checkpoint the code names but .gitignore hides passes here and fails there."""
    import shutil
    import subprocess
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    shipped = [BASELINE, PROJECT_ROOT / "checkpoints" / "hirise-efficientnet-lite2.pt",
               PROJECT_ROOT / "checkpoints" / "hirise-efficientnet-lite0.pt"]  # shipped with their figures' .json
    files = [f for path in shipped for f in (path, path.with_suffix(".json"))] + [REGISTRY, DEFAULT_CHECKPOINT]
    for entry in read_registry(REGISTRY)["entries"]:
        files += [REGISTRY.parent / entry["checkpoint"], oof_file(entry["id"], REGISTRY)]
    for file in files:
        assert file.is_file(), f"{file} is missing"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(file)], cwd=PROJECT_ROOT).returncode == 0
        assert not ignored, f"{file.name} is named by the code but ignored by .gitignore"


def test_the_default_is_the_registrys_and_every_default_went_through_the_gate():
    """The registry names the default; each entry's predictions are the ones its figures and fingerprint describe;
    every default after the first beat the one before it on the same folds."""
    registry = read_registry(REGISTRY)
    entry = registry_entry()
    assert entry is not None and REGISTRY.parent / entry["checkpoint"] == DEFAULT_CHECKPOINT
    for i, e in enumerate(registry["entries"]):
        oof = load_oof(e["id"], REGISTRY)
        assert fingerprint({"name": oof["name"], "y": oof["y"], "fold": oof["fold"]}) == e["cv"]["fingerprint"]
        assert len(oof["name"]) == e["figures"]["all files"]["n"]
        assert (oof["pred"] == oof["y"]).mean() == pytest.approx(e["figures"]["all files"]["accuracy"][0])
        if i:
            assert e["gate"]["passes"] and e["gate"]["against"] == registry["entries"][i - 1]["id"]
            assert e["cv"]["fingerprint"] == registry["entries"][i - 1]["cv"]["fingerprint"]  # the same folds


def test_shipped_checkpoint_loads_and_predicts_every_class_name():
    assert DEFAULT_CHECKPOINT.is_file(), f"missing {DEFAULT_CHECKPOINT}"
    assert DEFAULT_CHECKPOINT.stat().st_size < 50 * 2**20
    payload = read_checkpoint(DEFAULT_CHECKPOINT)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    loaded = load_checkpoint()  # the default path, no argument: what the app and the CLIs use
    assert loaded.class_names == list(CLASS_NAMES) and loaded.arch == registry_entry()["arch"]
    tiles = np.stack([synthetic.tile(c, seed=c) for c in range(8)])
    probs = predict_proba(loaded, tiles)
    assert probs.shape == (8, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_shipped_model_is_described_by_its_cross_validation():
    """A refit on every tile: no split of its own, its figures the out-of-fold ones of its registry entry's
    cross-validation, with their intervals, and a temperature fitted on those out-of-fold predictions."""
    loaded = load_checkpoint()
    entry = registry_entry()
    payload = read_checkpoint(DEFAULT_CHECKPOINT)
    if payload.get("cv") is None:  # the first champion: an earlier checkpoint of the recipe stands for its refit
        assert "stands for" in entry["why"]
        return
    assert loaded.splits["val"]["files"] == [] and loaded.metrics["split"] == "out-of-fold"
    assert payload["cv"]["id"] == entry["id"] and payload["cv"]["folds"] == entry["cv"]["folds"]
    originals = entry["figures"]["originals"]
    assert payload["cv"]["tiles"] == originals["n"] == loaded.metrics["n"]
    for key in ("macro_f1", "balanced_accuracy", "accuracy"):
        assert loaded.metrics[key] == pytest.approx(originals[key][0], abs=1e-6)
        low, high = loaded.metrics["intervals"][key]
        assert low <= loaded.metrics[key] <= high
    assert loaded.temperature == pytest.approx(entry["temperature"]) and loaded.temperature != 1.0


def test_run_config_defaults_are_the_shipped_recipe():
    """Launch with nothing changed trains the default's recipe (its data, run name and refit split aside)."""
    from core.models import spec as model_spec
    from core.training.config import RunConfig
    recipe = registry_entry()["cv"]["recipe"]
    defaults = RunConfig().to_dict()
    defaults["freeze_below"] = defaults["freeze_below"] or model_spec(defaults["model"]).fine_tune_from  # "": its own
    recipe["freeze_below"] = recipe["freeze_below"] or model_spec(recipe["model"]).fine_tune_from
    assert {k: defaults[k] for k in recipe} == recipe


def test_the_earlier_defaults_stay_selectable():
    from ui.loaders import shipped_models
    baseline = load_checkpoint(BASELINE)
    assert baseline.arch == "resnet18" and baseline.class_names == list(CLASS_NAMES)
    earlier = load_checkpoint(PROJECT_ROOT / "checkpoints" / "hirise-efficientnet-lite2.pt")
    assert earlier.arch == "tf_efficientnet_lite2" and earlier.metrics["split"] == "val"
    offered = {path.name for path in shipped_models().values()}
    assert {e["checkpoint"] for e in read_registry(REGISTRY)["entries"]} <= offered
    assert "hirise-efficientnet-lite0.pt" in offered


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_reads_the_real_tiles_it_was_trained_on(shared_data):
    """Not a measure of the model (it trained on these tiles: its figures are the out-of-fold ones), but proof that
    the real tiles flow through it as they did in training: it must fit them better than it predicts unseen ones.
    The first 40 training originals of each class (about 300 tiles, every class present) keep this to seconds: the
    default reads 260 px tiles at about 30 a second on two cores."""
    loaded = load_checkpoint()
    spec = DataSpec.from_mapping(loaded.config)
    data = load_dataset(dataclasses.replace(spec, paths=tuple(shared_data / Path(p).name for p in spec.paths)))
    train = data.select("train", originals_only=True)
    sample = [r for c in range(len(CLASS_NAMES)) for r in [r for r in train if r.label == c][:40]]
    assert {r.label for r in sample} == set(range(len(CLASS_NAMES)))
    report = evaluate_model(loaded, data, "train", records=sample, tiles_from="the first 40 training originals a class")
    assert report["n"] == len(sample) > 250 and report["split"] == "train"
    assert report["accuracy"] >= loaded.metrics["accuracy"] - TOLERANCE
    assert report["macro_f1"] > report["majority_baseline"]["macro_f1"] + 0.3


def test_shipped_models_flag_noise_as_unusual():
    """Pure noise is called something with confidence; the out-of-distribution verdict (the pixel check first,
    then the features) says it is unusual, for the default and every earlier one."""
    from core.predict import predict_array
    noise = [np.random.default_rng(seed).integers(0, 256, (227, 227), dtype=np.uint8) for seed in range(3)]
    for path in (DEFAULT_CHECKPOINT, BASELINE, PROJECT_ROOT / "checkpoints" / "hirise-efficientnet-lite2.pt"):
        loaded = load_checkpoint(path)
        assert all(predict_array(loaded, n).ood.flagged for n in noise), path.name


def test_the_readme_and_the_model_card_quote_the_registry():
    """One source for the default's figures (issue 33: Home's intervals and the README's differed): the README and the
    model card carry the registry's own table (tools/registry_tables.py prints it)."""
    from core.defaults import figures_rows, markdown_table
    table = markdown_table(figures_rows(registry_entry()["figures"]))
    for doc in (PROJECT_ROOT / "README.md", PROJECT_ROOT / "checkpoints" / "MODEL_CARD.md"):
        assert table in doc.read_text(), f"{doc.name} does not carry the registry's table: tools/registry_tables.py"
