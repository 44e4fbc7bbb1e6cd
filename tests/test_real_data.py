"""The data layer on the real tiles in ../shared/data: the counts its README gives, and no leakage."""
from __future__ import annotations

from collections import Counter

import pytest

from core.data import DataSpec, load_dataset, read_source

pytestmark = pytest.mark.realdata

ALL_FILES = [5589, 687, 130, 243, 443, 28, 186, 54]  # per class, from ../shared/data/README.md
ORIGINALS = [858, 102, 17, 40, 68, 4, 30, 7]
EXTRA = [2289, 725, 155, 200, 346, 40, 109, 33]


def per_class(records) -> list[int]:
    c = Counter(r.label for r in records)
    return [c[i] for i in range(8)]


def test_v32_subset_counts(shared_data):
    src = read_source(shared_data / "hirise-v3_2-subset")
    assert len(src.records) == 7360 and src.missing == []
    assert per_class(src.records) == ALL_FILES
    assert per_class([r for r in src.records if r.is_original]) == ORIGINALS
    assert len({r.observation for r in src.records}) == 109
    assert {r.split for r in src.records} == {"train"}
    assert sum(src.repeats.values()) > 0  # the official file's up-sampling repeats are reported


def test_v3_and_extra_counts(shared_data):
    assert len(read_source(shared_data / "hirise-v3-subset").records) == 1336
    extra = read_source(shared_data / "hirise-v3_2-extra-train")
    assert len(extra.records) == 3897 and per_class(extra.records) == EXTRA
    assert all(r.trainable_only for r in extra.records)


def test_merged_grouped_split_leaks_nothing(shared_data):
    data = load_dataset(DataSpec((shared_data / "hirise-v3_2-subset", shared_data / "hirise-v3-subset",
                                  shared_data / "hirise-v3_2-extra-train"), split_seed=0))
    assert data.leakage == []
    assert "grouped" in data.split_method
    sides: dict[str, set] = {}
    for r in data.records:
        if r.observation:
            sides.setdefault(r.observation, set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values())
    assert all(r.split == "train" for r in data.records if r.trainable_only)
    assert len(data.merge_report.duplicates_by_name) > 0 and len(data.merge_report.conflicts) > 0
    val = [r for r in data.records if r.split == "val" and r.is_original]
    assert len({r.label for r in val}) >= 6  # stratified as well as the observations allow
    assert not data.unreadable


@pytest.mark.slow
def test_training_smoke_on_real_tiles(shared_data, tmp_path):
    """A few steps of the real training path on the real tiles (merged, grouped split)."""
    from core.checkpoint import load_checkpoint
    from core.experiment.runs import Run
    from core.training.config import RunConfig
    from core.training.runner import train
    cfg = RunConfig(data=[str(shared_data / "hirise-v3_2-subset"), str(shared_data / "hirise-v3_2-extra-train")],
                    model="simple_cnn", init="scratch", image_size=64, epochs=1, max_steps_per_epoch=3, batch_size=32,
                    transforms=["hflip", "rot90", "color_jitter"]).validate()
    run = Run(tmp_path / "run")
    run.path.mkdir()
    cfg.save(run.config_file)
    assert train(cfg, run) == 0, run.status()
    assert run.status()["state"] == "completed"
    epoch = next(r for r in run.metrics() if r["kind"] == "epoch")
    assert set(epoch["val_recall"]) == {"other", "crater", "dark dune", "slope streak", "bright dune",
                                        "impact ejecta", "swiss cheese", "spider"}
    assert load_checkpoint(run.best_checkpoint).image_size == 64
    report = run.evaluation()
    assert report["split"] == "val" and report["n"] > 100 and "confusion" in report
