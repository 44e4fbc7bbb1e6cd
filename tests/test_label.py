"""The labelling loop (issue 31): strategies, queues, the labelled-tiles store and its CLI."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.records import DataError
from core.data.sources import read_source
from core.label.__main__ import main as label_main
from core.label.queue import QueueError, load, make_queue, valid_name
from core.label.store import HISTORY, LabelStore, StoreError, progress_line
from core.label.strategies import STRATEGIES, Pool, StrategyError, k_center, rank
from tests.model_fixtures import synthetic_tiles, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- strategies -------------------------------------------------------------------------------------------------
def _pool(n: int = 40, seed: int = 0, typical: bool = True) -> Pool:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(8, 0.3), size=n)
    feats = rng.normal(size=(n, 6)).astype(np.float32)
    return Pool(probs, feats, rng.uniform(size=n) if typical else None)


def test_margin_and_entropy_ask_first_about_the_windows_the_model_is_least_sure_of():
    probs = np.full((5, 8), 0.0)
    probs[:, 0] = [0.99, 0.5, 0.9, 0.6, 0.34]
    probs[:, 1] = 1 - probs[:, 0] - 0.0
    probs[4] = [0.34, 0.33, 0.33, 0, 0, 0, 0, 0]
    pool = Pool(probs, np.zeros((5, 2), np.float32))
    assert list(rank(pool, "margin", 2)) == [1, 4]  # 0.5/0.5 and 0.34/0.33 are the closest calls
    assert rank(pool, "entropy", 1)[0] == 4  # three classes nearly tied: the most spread
    assert rank(pool, "margin", 5)[-1] == 0


def test_diversity_spreads_its_picks_over_the_source_not_one_cluster():
    rng = np.random.default_rng(0)
    clusters = [rng.normal(c, 0.05, size=(30, 2)) for c in ((0, 0), (10, 0), (0, 10), (10, 10))]
    feats = np.concatenate(clusters).astype(np.float32)
    picked = k_center(feats, 4, seed=0)
    assert sorted(set(picked // 30)) == [0, 1, 2, 3]  # one pick in each cluster
    covered = feats[:30][:1]  # a tile of the first cluster is labelled: the next 3 picks go elsewhere
    assert 0 not in set(k_center(feats, 3, seed=0, covered=covered) // 30)


def test_every_strategy_returns_the_budget_without_repeats_and_random_follows_its_seed():
    pool = _pool()
    for name in STRATEGIES:
        picked = rank(pool, name, 12, seed=3)
        assert len(picked) == 12 and len(set(picked)) == 12 and picked.max() < len(pool), name
    assert list(rank(pool, "random", 10, seed=1)) == list(rank(pool, "random", 10, seed=1))
    assert list(rank(pool, "random", 10, seed=1)) != list(rank(pool, "random", 10, seed=2))
    assert len(rank(pool, "margin", 500)) == len(pool)  # a budget over the pool asks about every window once


def test_strategies_refuse_what_they_cannot_do_in_one_line():
    with pytest.raises(StrategyError, match="no out-of-distribution reference"):
        rank(_pool(typical=False), "ood", 5)
    with pytest.raises(StrategyError, match="unknown strategy"):
        rank(_pool(), "cleverest", 5)
    with pytest.raises(StrategyError, match="at least 1"):
        rank(_pool(), "margin", 0)
    assert len(rank(_pool(typical=False), "mix", 10)) == 10  # the mix without typicality: no OOD share, no error


# ---- the store ---------------------------------------------------------------------------------------------------
def _tile(value: int = 100) -> np.ndarray:
    return np.full((227, 227), value, np.uint8)


def _label(store: LabelStore, k: int, label: str, queue: str = "q1", image: str = "/x/ESP_011283_2265_RED.JP2"):
    return store.label(queue, k, label, _tile(k), image=image, x=227 * k, y=0, size=227,
                       observation="ESP_011283_2265_RED")


def test_a_label_is_saved_at_once_as_a_data_source_that_groups_by_observation(tmp_path):
    store = LabelStore(tmp_path / "store")
    _label(store, 0, "spider")
    _label(store, 1, "other")
    source = read_source(store.folder)
    assert source.kind == "labelled in the studio" and len(source.records) == 2
    assert {r.observation for r in source.records} == {"ESP_011283_2265_RED"}
    assert {r.label for r in source.records} == {0, 7}
    assert (store.folder / source.records[0].path).is_file()


def test_the_same_tile_labelled_twice_keeps_the_last_label_and_the_history_keeps_both(tmp_path):
    store = LabelStore(tmp_path / "store")
    _label(store, 0, "crater")
    _label(store, 0, "impact ejecta")
    rows = list(store.labelled().values())
    assert [r["label"] for r in rows] == ["impact ejecta"]
    labels = [json.loads(line)["label"] for line in (store.folder / HISTORY).read_text().splitlines()]
    assert labels == ["crater", "impact ejecta"]
    assert len(read_source(store.folder).records) == 1


def test_undo_takes_back_the_last_decision_of_its_queue_only(tmp_path):
    store = LabelStore(tmp_path / "store")
    _label(store, 0, "crater")
    _label(store, 1, "spider")
    _label(store, 0, "dark dune", queue="q2", image="/y/other.png")
    store.skip("q1", 2)
    assert store.undo("q1").candidate == 2  # the skip
    undone = store.undo("q1")
    assert (undone.candidate, undone.label) == (1, "spider")
    assert {r["label"] for r in store.labelled().values()} == {"crater", "dark dune"}  # q2's label stands
    assert store.undo("q1").label == "crater"
    assert store.undo("q1") is None
    assert len(read_source(store.folder).records) == 1  # only q2's label


def test_a_labels_file_edited_by_hand_is_left_as_it_is_and_refuses_new_labels(tmp_path):
    store = LabelStore(tmp_path / "store")
    _label(store, 0, "crater")
    edited = store.labels_path.read_text() + "tiles/forged.png,spider,,,,,,,\n"
    store.labels_path.write_text(edited)
    assert "changed outside the studio" in store.problem()
    with pytest.raises(StoreError, match="changed outside the studio"):
        _label(store, 1, "spider")
    assert store.labels_path.read_text() == edited
    store.labels_path.unlink()  # moved away: rebuilt from the history on the next label
    _label(store, 1, "spider")
    assert {r["label"] for r in store.labelled().values()} == {"crater", "spider"}


def test_a_damaged_history_names_its_line_and_nothing_is_written(tmp_path):
    store = LabelStore(tmp_path / "store")
    _label(store, 0, "crater")
    with open(store.folder / HISTORY, "a") as f:
        f.write("{not json\n")
    before = (store.folder / HISTORY).read_bytes()
    with pytest.raises(StoreError, match="line 2 is damaged"):
        _label(store, 1, "spider")
    assert (store.folder / HISTORY).read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_store_says_so_and_loses_nothing(tmp_path):
    store = LabelStore(tmp_path / "store")
    _label(store, 0, "crater")
    os.chmod(store.folder, 0o555)
    try:
        with pytest.raises(StoreError, match="cannot"):
            _label(store, 1, "spider")
    finally:
        os.chmod(store.folder, 0o755)
    assert len(store.labelled()) == 1


def test_a_store_that_cannot_take_a_tile_says_so_even_as_root(tmp_path):
    """Read-only as the tests run it (root writes anywhere): its tiles folder replaced by a file."""
    store = LabelStore(tmp_path / "store")
    _label(store, 0, "crater")
    import shutil as sh
    sh.rmtree(store.folder / "tiles")
    (store.folder / "tiles").write_text("in the way")
    history = (store.folder / HISTORY).read_bytes()
    with pytest.raises(StoreError, match="cannot save the label"):
        _label(store, 1, "spider")
    assert (store.folder / HISTORY).read_bytes() == history  # nothing recorded for the label that failed


def test_a_store_in_a_folder_that_cannot_be_made_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write labels"):
        _label(LabelStore(blocker / "store"), 0, "crater")


def test_two_sessions_labelling_one_queue_at_once_lose_no_label(tmp_path):
    folder = tmp_path / "store"

    def session(offset: int) -> None:
        store = LabelStore(folder)  # each session its own object, as each browser session is
        for k in range(offset, 40, 2):
            _label(store, k, "crater" if k % 3 else "spider")

    threads = [threading.Thread(target=session, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = LabelStore(folder)
    assert len(store.labelled()) == 40 and store.problem() is None
    assert len(read_source(folder).records) == 40


# ---- queues ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unlabelled")
    tiles, _ = synthetic_tiles(per_class=2, seed=5)
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(folder / f"ESP_0{i:05d}_1234_RED-{i:04d}.png")
    big = np.concatenate([np.concatenate(list(tiles[:3]), axis=1)] * 2, axis=0)  # 454 x 681: 2 x 3 windows
    Image.fromarray(big).save(folder / "PSP_001234_1800_RED.png")
    Image.fromarray(tiles[0][:100, :100]).save(folder / "small.png")
    return folder


@pytest.fixture(scope="module")
def queue(source_folder, tmp_path_factory):
    return make_queue(source_folder, tmp_path_factory.mktemp("queues") / "first", "mix", 8, tiny_checkpoint())


def test_a_queue_ranks_the_windows_of_tiles_and_whole_images_and_keeps_what_a_labeller_needs(queue):
    assert len(queue.candidates) == 8 and queue.meta["windows_read"] == 16 + 6
    assert any("smaller than a 227 px tile" in n for n in queue.meta["notes"])
    c = queue.candidates[0]
    assert queue.tile(0).shape == (227, 227) and queue.context(0).ndim == 3
    assert len(c["top3"]) == 3 and abs(sum(c["probabilities"]) - 1) < 1e-3
    big = [c for c in queue.candidates if "PSP_001234" in c["image"]]
    assert all(c["observation"] == "PSP_001234_1800_RED" for c in big)
    assert queue.meta["model"]["digest"] and queue.meta["class_names"][0] == "other"
    with Image.open(big[0]["image"]) as img:  # the saved tile is that window of the image
        window = np.asarray(img.convert("L"))[big[0]["y"]:big[0]["y"] + 227, big[0]["x"]:big[0]["x"] + 227]
    idx = queue.candidates.index(big[0])
    assert np.array_equal(queue.tile(idx), window)


def test_a_queue_is_never_written_over_and_bad_requests_make_no_folder(queue, source_folder, tmp_path):
    with pytest.raises(QueueError, match="never written over"):
        make_queue(source_folder, queue.path, "margin", 3, tiny_checkpoint())
    with pytest.raises(QueueError, match="budget 0"):
        make_queue(source_folder, tmp_path / "q", "margin", 0, tiny_checkpoint())
    with pytest.raises(QueueError, match="no such file"):
        make_queue(tmp_path / "nowhere", tmp_path / "q", "margin", 3, tiny_checkpoint())
    assert not (tmp_path / "q").exists()
    with pytest.raises(QueueError):
        valid_name("../escape")


def test_a_damaged_or_foreign_queue_is_said_in_one_line(queue, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(queue.path, copy)
    (copy / queue.candidates[1]["tile"]).unlink()
    with pytest.raises(QueueError, match="was deleted"):
        load(copy).tile(1)
    meta = json.loads((copy / "queue.json").read_text())
    meta["class_names"] = ["a", "b"]
    (copy / "queue.json").write_text(json.dumps(meta))
    assert "made for the classes a, b" in load(copy).problems()[0]
    assert "not the current default" in load(copy).problems(model_digest="other")[-1]
    meta["candidates"][0]["tile"] = "../../etc/passwd"
    (copy / "queue.json").write_text(json.dumps(meta))
    with pytest.raises(QueueError, match="candidate 1 is damaged"):
        load(copy)
    (copy / "queue.json").write_text("{")
    with pytest.raises(QueueError, match="damaged"):
        load(copy)
    shutil.rmtree(copy)
    with pytest.raises(QueueError, match="deleted"):
        load(copy)


def test_the_cli_makes_a_queue_and_says_how_far_it_is(source_folder, tmp_path, capsys):
    out = tmp_path / "cli-queue"
    assert label_main(["candidates", str(source_folder), "--strategy", "margin", "--budget", "5", "--out", str(out),
                       "--checkpoint", str(tiny_checkpoint())]) == 0
    assert "5 candidates of 22 windows, ranked by margin" in capsys.readouterr().out
    store = LabelStore(tmp_path / "store")
    q = load(out)
    store.label(q.name, 0, "spider", q.tile(0), image=q.candidates[0]["image"], x=0, y=0, size=227,
                observation=None)
    store.skip(q.name, 1)
    assert label_main(["status", str(out), "--store", str(store.folder)]) == 0
    assert capsys.readouterr().out.strip() == "1 of 5 labelled, 1 rare so far (1 skipped)"
    assert progress_line(q, store).startswith("1 of 5")
    assert label_main(["candidates", str(source_folder), "--budget", "5", "--out", str(out)]) == 2
    assert "never written over" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        label_main(["candidates", str(source_folder), "--budget", "nan", "--out", str(tmp_path / "x")])
    assert "not a whole number" in capsys.readouterr().err


# ---- the plain-tiles reader takes the store's columns ------------------------------------------------------------
def test_plain_labels_take_an_observation_column_and_refuse_ragged_rows(tmp_path):
    (tmp_path / "tiles").mkdir()
    Image.fromarray(_tile()).save(tmp_path / "tiles" / "a.png")
    (tmp_path / "labels.csv").write_text("file,label,observation,note\ntiles/a.png,spider,ESP_000001_0001,hi\n")
    assert read_source(tmp_path).records[0].observation == "ESP_000001_0001"
    (tmp_path / "labels.csv").write_text("file,label,observation\ntiles/a.png,spider\n")
    with pytest.raises(DataError, match="expected 3 fields"):
        read_source(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label,observation\ntiles/a.png,spider,../../x\n")
    with pytest.raises(DataError, match="not an observation id"):
        read_source(tmp_path)


# ---- new labels keep the champion's folds ------------------------------------------------------------------------
def test_labelled_tiles_never_move_the_folds_of_the_others_and_join_their_observations(v32_folder, tmp_path):
    from core.data.split import fold_of_observation

    base = read_source(v32_folder).records
    store = LabelStore(tmp_path / "store")
    known = base[0].observation
    _label(store, 0, "spider")  # a new observation
    store.label("q1", 1, "crater", _tile(), image="/x/a.png", x=0, y=0, size=227, observation=known)
    added = read_source(store.folder).records
    assert all(r.added for r in added) and read_source(store.folder).kind == "labelled in the studio"
    before = fold_of_observation(base, 3, seed=0)
    after = fold_of_observation([*base, *added], 3, seed=0)
    assert {o: after[o] for o in before} == before
    assert "ESP_011283_2265_RED" in after


def test_the_gate_pairs_a_cv_with_new_labels_on_the_champions_files_only():
    from core.defaults import _same_folds_plus_added, fingerprint

    champ = {"name": ["a", "b", "c"], "y": [0, 1, 2], "fold": [0, 1, 2]}
    fp = fingerprint(champ)
    plus = {"name": ["a", "b", "c", "new"], "y": [0, 1, 2, 7], "fold": [0, 1, 2, 1]}
    assert _same_folds_plus_added(plus, champ, fp)
    moved = {**plus, "fold": [1, 1, 2, 1]}  # a champion's file in another fold: not the same folds
    assert not _same_folds_plus_added(moved, champ, fp)
    dropped = {"name": ["a", "b", "new"], "y": [0, 1, 7], "fold": [0, 1, 1]}  # a champion's file missing
    assert not _same_folds_plus_added(dropped, champ, fp)
    relabelled = {**plus, "y": [0, 1, 3, 7]}
    assert not _same_folds_plus_added(relabelled, champ, fp)
    assert not _same_folds_plus_added(champ, champ, "other")  # nothing added: the plain fingerprint rule applies


def test_the_cv_with_new_labels_is_the_defaults_folds_and_recipe_on_the_data_plus_the_labels(v32_folder, tmp_path):
    from core.data.spec import DataSpec
    from core.label.retrain import cv_configs

    store = LabelStore(tmp_path / "store")
    _label(store, 0, "spider")
    entry = {"id": "20261206-084501-2c5c", "cv": {"folds": 3, "seed": 5, "recipe": {
        "model": "simple_cnn", "image_size": 48, "epochs": 2, "imbalance": "sqrt_weighted_loss", "augment": "online",
        "max_steps_per_epoch": 0, "amp": False, "label_smoothing": 0.05, "freeze_below": None, "init": "scratch"}}}
    configs = cv_configs(entry, DataSpec((str(v32_folder),)), store.folder)
    assert [(c.cv_folds, c.cv_fold, c.split_seed) for c in configs] == [(3, i, 5) for i in range(3)]
    assert configs[0].data == [str(v32_folder), str(store.folder.resolve())]
    assert (configs[0].model, configs[0].epochs, configs[0].image_size) == ("simple_cnn", 2, 48)


def test_a_window_outside_its_image_is_said_and_a_gone_image_is_no_problem(queue, tmp_path):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(queue.path, copy)
    meta = json.loads((copy / "queue.json").read_text())
    big = next(k for k, c in enumerate(meta["candidates"]) if "PSP_001234" in c["image"])
    assert load(copy).window_problem(big) is None
    meta["candidates"][big]["x"] = 5000
    (copy / "queue.json").write_text(json.dumps(meta))
    assert "lies outside its image PSP_001234_1800_RED.png (681x454 px)" in load(copy).window_problem(big)
    meta["candidates"][big]["image"] = str(tmp_path / "gone.png")
    (copy / "queue.json").write_text(json.dumps(meta))
    assert load(copy).window_problem(big) is None


def test_a_tile_labelled_again_meets_its_copy_in_the_data_as_a_label_conflict(v32_folder, tmp_path):
    """The browser walk: a tile of the data set, labelled again on the Label page, merged with the data without a
    word. Its own bytes are kept, so the merge finds the copy by content and reports the conflict."""
    import shutil as sh

    from core.data import load_dataset

    record = next(r for r in read_source(v32_folder).records if r.is_original and r.label == 0)
    src = tmp_path / "again"
    src.mkdir()
    sh.copy(v32_folder / record.path, src / record.name)
    q = make_queue(src, tmp_path / "q", "random", 1, tiny_checkpoint())
    assert q.whole_image(0) == src / record.name
    store = LabelStore(tmp_path / "store")
    c = q.candidates[0]
    store.label(q.name, 0, "spider", q.tile(0), image=c["image"], x=0, y=0, size=c["size"],
                observation=c["observation"], original=q.whole_image(0))
    data = load_dataset([v32_folder, store.folder])
    conflicts = data.merge_report.conflicts
    assert len(conflicts) == 1 and sorted(conflicts[0]["labels"].values()) == [0, 7]
