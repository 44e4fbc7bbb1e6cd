"""The Label page (issue 31) under AppTest: a queue worked through with the buttons the keys press, undo, the
refusals, and the way back to training."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from core.label.queue import load, make_queue
from core.label.retrain import finetune_config
from core.label.store import LabelStore
from core.settings import LABEL_QUEUES_DIR, LABEL_STORE_DIR
from tests.helpers import button, run_page, texts
from tests.model_fixtures import synthetic_tiles, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
PAGE = "views/label.py"


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unlabelled")
    tiles, _ = synthetic_tiles(per_class=1, seed=7)
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(folder / f"ESP_0{i:05d}_1234_RED-{i:04d}.png")
    shutil.rmtree(LABEL_QUEUES_DIR, ignore_errors=True)
    made = make_queue(folder, LABEL_QUEUES_DIR / "page-queue", "margin", 5, tiny_checkpoint())
    yield made
    shutil.rmtree(LABEL_QUEUES_DIR, ignore_errors=True)
    shutil.rmtree(LABEL_STORE_DIR, ignore_errors=True)


def test_a_queue_is_labelled_with_the_class_buttons_undone_and_counted(queue):
    at = run_page(PAGE)
    assert "Window 1 of 5" in [s.value for s in at.subheader]
    assert "not the current default" in texts(at)  # ranked by the tiny model: said, labels still fine
    button(at, "8 · spider (rare)").click().run()
    assert not at.exception
    assert "Window 2 of 5" in [s.value for s in at.subheader]
    assert "Saved: window 1 is **spider**" in texts(at)
    button(at, "2 · crater").click().run()
    button(at, "s · Skip").click().run()
    assert at.get("progress")[0].proto.text == "2 of 5 labelled, 1 rare so far (1 skipped)"
    button(at, "u · Undo").click().run()  # the skip
    button(at, "u · Undo").click().run()  # the crater
    assert "Window 2 of 5" in [s.value for s in at.subheader]
    rows = LabelStore(LABEL_STORE_DIR).labelled()
    assert [r["label"] for r in rows.values()] == ["spider"]
    assert "1 labelled tile(s)" in texts(at)
    assert any(b.label.startswith("Cross-validate with the new labels (") for b in at.button)  # the default has a CV
    button(at, "Add the labelled tiles to the data sources").click().run()
    assert "the Dataset page now lists the labelled tiles" in texts(at)
    from ui.appstate import data_paths
    assert str(LABEL_STORE_DIR.resolve()) in data_paths()


def test_a_store_edited_by_hand_stops_labelling_with_the_reason(queue):
    store = LabelStore(LABEL_STORE_DIR)
    store.label(queue.name, 4, "crater", queue.tile(4), image="x.png", x=0, y=0, size=227, observation=None)
    original = store.labels_path.read_text()
    store.labels_path.write_text(original + "tiles/x.png,spider,,,,,,,\n")
    try:
        at = run_page(PAGE)
        assert "changed outside the studio" in texts(at)
        assert all(b.disabled for b in at.button if b.label in ("2 · crater", "s · Skip"))
    finally:
        store.labels_path.write_text(original)


def test_a_queue_for_other_classes_is_refused_and_a_bad_name_makes_nothing(queue):
    meta = json.loads((queue.path / "queue.json").read_text())
    foreign = LABEL_QUEUES_DIR / "zz-foreign"
    shutil.copytree(queue.path, foreign)
    (foreign / "queue.json").write_text(json.dumps({**meta, "class_names": ["a", "b"], "created": "9999"}))
    try:
        at = run_page(PAGE)
        assert at.selectbox(key="lbl_queue").value == "zz-foreign"  # the newest first
        assert "made for the classes a, b" in texts(at) and not [s for s in at.subheader if "Window" in s.value]
    finally:
        shutil.rmtree(foreign)
    at = run_page(PAGE)
    at.radio(key="lbl_source_kind").set_value("A file or folder").run()
    at.text_input(key="lbl_source_path").input("/no/such/folder").run()
    at.text_input(key="lbl_name").input("../escape").run()
    button(at, "Make the queue").click().run()
    assert "No queue was made" in texts(at) and "queue name" in texts(at)
    at.text_input(key="lbl_name").input("fine-name").run()
    button(at, "Make the queue").click().run()
    assert "no such file or folder" in texts(at)
    for typed, said in (("-1", "budget -1: give 1 to 1000"), ("0", "budget 0: give 1 to 1000"),
                        ("nan", "'nan' is not a whole number")):  # the walk: -1 and 0 silently became 50
        at.text_input(key="lbl_budget").input(typed).run()
        button(at, "Make the queue").click().run()
        assert said in texts(at), typed
    at.switch_page("views/home.py").run()  # leaving the page keeps what was typed (the walk)
    at.switch_page(PAGE).run()
    assert (at.radio(key="lbl_source_kind").value, at.text_input(key="lbl_source_path").value,
            at.text_input(key="lbl_budget").value) == ("A file or folder", "/no/such/folder", "nan")
    assert not (LABEL_QUEUES_DIR / "fine-name").exists() and not (LABEL_QUEUES_DIR.parent / "escape").exists()


def test_the_fine_tune_run_is_the_defaults_recipe_on_the_data_plus_the_labels(queue, tmp_path):
    from core.data.spec import DataSpec

    store = LabelStore(tmp_path / "store")
    store.label("q", 0, "spider", np.zeros((227, 227), np.uint8), image="a.png", x=0, y=0, size=227,
                observation="ESP_000001_0001")
    spec = DataSpec(("/data/a",), val_fraction=0.0, test_fraction=0.0)  # a refit's data: shares put back
    cfg = finetune_config(tiny_checkpoint(), spec, store.folder)
    assert cfg.data == ["/data/a", str(store.folder.resolve())]
    assert (cfg.init, cfg.init_from, cfg.cv_folds) == ("run", str(tiny_checkpoint()), 0)
    assert cfg.val_fraction == DataSpec().val_fraction and cfg.model == "simple_cnn"
    with pytest.raises(ValueError, match="no labelled tiles yet"):
        finetune_config(tiny_checkpoint(), spec, tmp_path / "empty")
    assert load(queue.path).name == "page-queue"


def test_a_queue_deleted_while_shown_is_said_not_silently_replaced(queue):
    second = LABEL_QUEUES_DIR / "second"
    shutil.copytree(queue.path, second)
    at = run_page(PAGE)
    at.selectbox(key="lbl_queue").set_value("second").run()
    shutil.rmtree(second)
    at.run()
    assert "Queue second is gone" in texts(at) and at.selectbox(key="lbl_queue").value == "page-queue"
