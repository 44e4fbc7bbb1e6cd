"""The labelling loop end to end in headless Chromium (issue 31): make a queue on the Label page, label 5 windows with
the keys, undo one, and find the 4 labels as a data source on the Dataset page. Screenshots go to test-artifacts/."""
from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from tests import synthetic
from tests.conftest import ARTIFACTS
from tests.model_fixtures import synthetic_tiles
from tests.test_browser import CHROMIUM, running_app
from tools.chromium import CHROMIUM_ARGS

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def label_app(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; `make test` does it as root)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    tmp = tmp_path_factory.mktemp("browser-label")
    data = synthetic.write_folder(tmp / "data", synthetic.official_files("3.2", n_obs=6, per_obs=6, missing=0))
    (tmp / "state.json").write_text(json.dumps({"data_paths": [str(data)]}))
    unlabelled = tmp / "unlabelled"
    unlabelled.mkdir()
    tiles, _ = synthetic_tiles(per_class=1, seed=11)
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(unlabelled / f"ESP_0{i:05d}_2000_RED-{i:04d}.png")
    with running_app(tmp, {"HIRISE_APP_STATE": str(tmp / "state.json"), "HIRISE_RUNS_DIR": str(tmp / "runs"),
                           "HIRISE_CACHE_DIR": str(tmp / "cache"), "HIRISE_LABELLING_DIR": str(tmp / "labelling")}) as url:
        yield url, tmp, unlabelled


def test_label_five_windows_with_the_keys_undo_one_and_find_four_on_the_dataset_page(label_app):
    from playwright.sync_api import sync_playwright

    url, tmp, unlabelled = label_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/label")
            page.get_by_text("No queue yet").first.wait_for(timeout=60_000)
            source = page.get_by_role("textbox", name="An image, or a folder of images or observations")
            source.fill(str(unlabelled))
            source.press("Enter")
            name = page.get_by_role("textbox", name="Queue name")
            name.fill("browser-s")  # an "s" typed into a text box must not skip a window
            name.press("Enter")
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Make the queue").click()
            page.get_by_text("Window 1 of 8").first.wait_for(timeout=180_000)
            page.screenshot(path=str(ARTIFACTS / "browser-label-queue.png"), full_page=True)
            for n, key in enumerate("28132", start=1):  # crater, spider, other, dark dune, crater
                page.wait_for_function("() => (window.__hiriseKeys || {})['2'] === 'lbl_class_1'")  # the keys are bound
                page.evaluate("document.activeElement && document.activeElement.blur()")  # out of any text box
                page.keyboard.press(key)
                page.get_by_text(f"Window {n + 1} of 8").first.wait_for(timeout=60_000)
            page.keyboard.press("u")
            page.get_by_text(re.compile(r"Undone: window 5 \(crater\)")).first.wait_for(timeout=60_000)
            page.get_by_text("4 of 8 labelled, 2 rare so far").first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "browser-label-labelled.png"), full_page=True)
            page.goto(f"{url}/dataset")
            page.get_by_role("button", name="Add the labelled tiles").click(timeout=120_000)
            page.get_by_text("labelled-tiles").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "browser-label-dataset.png"), full_page=True)
        finally:
            browser.close()
    rows = (tmp / "labelling" / "labelled-tiles" / "labels.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[1] for r in rows) == ["crater", "dark dune", "other", "spider"]
    state = json.loads((tmp / "state.json").read_text())
    assert str((tmp / "labelling" / "labelled-tiles").resolve()) in state["data_paths"]
