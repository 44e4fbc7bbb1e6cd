"""Which tiles a checkpoint trained on (core.seen), and a model scored only on the others: synthetic records and
checkpoints described by hand (no training), then evaluate_model and the CLI with the tiny fixture model."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import evaluate
from core.checkpoint import read_checkpoint
from core.checkpoint_file import save_checkpoint
from core.data import load_dataset, split_manifest
from core.seen import MIN_COMMON_TILES, NothingUnseen, training_set, unseen
from tests import model_fixtures, synthetic

# 12 observations of 6 originals (and 2 augmented copies each); the official split puts observations 4 and 10 in
# val, 5 and 11 in test, the other 8 in train
OBS = [f"ESP_{10000 + o:06d}_{2000 + o:04d}_RED" for o in range(12)]


def _names(data, observations) -> list[str]:
    return sorted(r.name for r in data.records if r.is_original and r.observation in {OBS[o] for o in observations})


def _manifest(data, val, test) -> dict:
    return {"val": {"files": _names(data, val), "observations": [OBS[o] for o in val]},
            "test": {"files": _names(data, test), "observations": [OBS[o] for o in test]}}


def _model(paths, splits=None, refit=False, name="m.pt"):
    """What training_set reads of a checkpoint (a LoadedModel's fields), without weights."""
    return SimpleNamespace(config={"data": [str(p) for p in paths]}, splits=splits or {}, refit=refit,
                           path=Path(name), arch="simple_cnn")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return synthetic.write_folder(tmp_path_factory.mktemp("seen-data"),
                                  synthetic.official_files("3.2", n_obs=12, per_obs=6, missing=0))


@pytest.fixture(scope="module")
def data(folder):
    return load_dataset([str(folder)])


def test_a_model_trained_on_its_data_outside_its_recorded_splits(folder, data):
    ts = training_set(_model([folder], split_manifest(data)), "run A")
    val, test, train = (data.select(s, originals_only=True) for s in ("val", "test", "train"))
    assert len(val) == len(test) == 12 and len(train) == 48
    kept, ex = unseen(val + test, [ts], "tiles")
    assert kept == val + test and ex.excluded == 0 and ex.sentence().startswith("Scored on all 24 tiles")
    # every training tile, and its augmented copies, is one it trained on
    with pytest.raises(NothingUnseen, match="all 48 train tiles excluded because run A trained on them"):
        unseen(train, [ts], "train tiles")
    copies = [r for r in data.records if not r.is_original]
    assert {ts.trained_on(r) for r in copies if r.split == "train"} == {True}
    assert {ts.trained_on(r) for r in copies if r.split in ("val", "test")} == {False}
    kept, ex = unseen(data.select(None, originals_only=True), [ts], "tiles")
    assert (ex.total, ex.kept, ex.excluded) == (72, 24, 48)
    assert ex.sentence() == ("Scored on 24 of 72 tiles: 48 excluded because run A trained on them (every tile of its "
                             "data outside the validation and test splits its checkpoint records).")


def test_a_refit_and_a_checkpoint_without_splits_trained_on_every_tile_of_their_data(folder, data):
    empty = {"val": {"files": [], "observations": []}, "test": {"files": [], "observations": []}}
    val = data.select("val", originals_only=True)
    for model, why in ((_model([folder], empty, refit=True), "refit on every tile of its data"),
                       (_model([folder], {}), "does not list the files of its validation and test splits")):
        ts = training_set(model, "M")
        assert all(ts.trained_on(r) for r in data.records) and why in ts.basis
        with pytest.raises(NothingUnseen) as refused:
            unseen(val, [ts], "val tiles")
        assert "nothing is left to score: all 12 val tiles excluded because M " in str(refused.value)
        assert ("may have trained on them" if not model.refit else "M trained on them") in str(refused.value)
        assert why in str(refused.value)
    # a checkpoint that names no data at all: nothing can be excluded, and the sentence says so
    kept, ex = unseen(val, [training_set(_model([]), "Z")], "val tiles")
    assert len(kept) == 12 and "Z names no training data" in ex.sentence("val tiles")


def test_tiles_without_an_observation_are_training_tiles_of_any_model_whose_data_held_them(folder, tmp_path):
    plain = synthetic.write_plain(tmp_path / "extra", n=8)
    both = load_dataset([str(folder), str(plain)])
    extra = [r for r in both.records if r.observation is None]
    assert len(extra) == 8
    with_extra = training_set(_model([folder, plain], split_manifest(load_dataset([str(folder)]))))
    without = training_set(_model([folder], split_manifest(load_dataset([str(folder)]))))
    assert all(with_extra.trained_on(r) for r in extra) and not any(without.trained_on(r) for r in extra)


def test_other_tiles_of_an_observation_it_trained_on_count_as_seen(tmp_path):
    """Matched by observation where its data is here: a folder with more tiles of the same observations."""
    small = synthetic.write_folder(tmp_path / "small", synthetic.official_files("3.2", n_obs=12, per_obs=3, missing=0))
    large = synthetic.write_folder(tmp_path / "large", synthetic.official_files("3.2", n_obs=12, per_obs=6, missing=0))
    trained = load_dataset([str(small)])
    ts = training_set(_model([small], split_manifest(trained)))
    bigger = load_dataset([str(large)])
    new = [r for r in bigger.records if r.is_original and r.name not in {t.name for t in trained.records}]
    assert len(new) == 36  # 3 more tiles of each observation, none of them in the model's data
    seen = {r.observation for r in new if ts.trained_on(r)}
    assert seen == {OBS[o] for o in (0, 1, 2, 3, 6, 7, 8, 9)}  # its training observations, not val's or test's


def test_data_that_is_not_here_is_matched_by_its_folder_name(folder, data, tmp_path):
    gone = tmp_path / "elsewhere" / folder.name  # the same folder name, on another machine
    ts = training_set(_model([gone], split_manifest(data)))
    assert "is not here" in ts.basis and folder.name in ts.basis
    assert {ts.trained_on(r) for r in data.select("train")} == {True}
    assert not any(ts.trained_on(r) for r in data.select("val"))


def test_compare_keeps_the_tiles_none_of_the_models_trained_on(folder, data):
    """Run A holds out the official val and test; run B another split, which trains on observation 10 (A's val)."""
    a = training_set(_model([folder], split_manifest(data)), "run A")
    b = training_set(_model([folder], _manifest(data, val=(0, 4), test=(2, 3))), "run B")
    val = data.select("val", originals_only=True)
    kept, ex = unseen(val, [a, b], "val tiles", minimum=1)
    assert {r.observation for r in kept} == {OBS[4]} and ex.by_model == {"run A": 0, "run B": 6}
    assert ex.sentence("val tiles").startswith("Scored on 6 of 12 val tiles: 6 excluded because run B trained on them")
    with pytest.raises(NothingUnseen, match=f"too few to say anything \\(at least {MIN_COMMON_TILES} are needed\\)"):
        unseen(val, [a, b], "val tiles", minimum=MIN_COMMON_TILES)
    c = training_set(_model([folder], _manifest(data, val=(4,), test=(1,))), "run C")  # also trained on 10
    kept, ex = unseen(val, [a, b, c], "val tiles")
    assert ex.by_model == {"run A": 0, "run B": 6, "run C": 6} and len(kept) == 6
    assert "run B trained on 6 of them" in ex.because() and "a tile can count for more than one" in ex.because()
    d = training_set(_model([folder], _manifest(data, val=(0,), test=(1,))), "run D")  # trained on 4 and 10
    with pytest.raises(NothingUnseen, match="nothing is left to score: all 12 val tiles excluded because run B "
                                            "trained on 6 of them"):
        unseen(val, [a, b, d], "val tiles")


def _checkpoint_on(folder, data, tmp_path, **changes) -> Path:
    payload = read_checkpoint(model_fixtures.tiny_checkpoint())
    payload.update(config={**payload["config"], "data": [str(folder)]}, splits=split_manifest(data), **changes)
    return save_checkpoint(tmp_path / "on-folder.pt", payload)


def test_evaluate_model_scores_only_unseen_tiles_and_says_how_many_were_left_out(tiny, folder, data):
    model = dataclasses.replace(tiny, config={"data": [str(folder)]}, splits=split_manifest(data))
    report = evaluate.evaluate_model(model, data, "all", unseen_by=[training_set(model, "tiny")])
    assert report["n"] == 24 and report["excluded"]["excluded"] == 48
    assert report["excluded"]["sentence"].startswith("Scored on 24 of 72 tiles: 48 excluded because tiny trained")
    assert {p["observation"] for p in report["predictions"]} == {OBS[o] for o in (4, 5, 10, 11)}
    with pytest.raises(NothingUnseen, match="all 48 train tiles excluded"):
        evaluate.evaluate_model(model, data, "train", unseen_by=[training_set(model, "tiny")])


def test_the_cli_notes_the_excluded_tiles_in_a_line_and_refuses_when_none_is_left(folder, data, tmp_path, capsys):
    ck = str(_checkpoint_on(folder, data, tmp_path))
    assert evaluate.main(["--checkpoint", ck, "--data", str(folder), "--split", "all", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "Scored on 24 of 72 tiles: 48 excluded because on-folder.pt trained on them" in out.splitlines()[2]
    assert evaluate.main(["--checkpoint", ck, "--data", str(folder), "--split", "train"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing is left to score: all 48 train tiles excluded because on-folder.pt")
    assert len(err.splitlines()) == 1
