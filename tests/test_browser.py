"""End to end in headless Chromium: `streamlit run app.py`, upload a tile on Explain, see the prediction and the
heatmap; open Evaluate and see the confusion matrix. Screenshots go to test-artifacts/ (not committed)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.checkpoint import read_checkpoint
from core.models import default_cam_layer
from core.settings import DEFAULT_CHECKPOINT, PROJECT_ROOT
from tests import synthetic
from tests.conftest import ARTIFACTS
from tools.chromium import CHROMIUM_ARGS, chromium_path

pytestmark = pytest.mark.browser
CHROMIUM = chromium_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; `make test` does it as root)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    tmp = tmp_path_factory.mktemp("browser")
    # 16 tiles per observation: 32 validation tiles, enough for Compare to score models on (core.seen.MIN_COMMON_TILES)
    data = synthetic.write_folder(tmp / "data", synthetic.official_files("3.2", n_obs=12, per_obs=16, missing=0))
    (tmp / "state.json").write_text(json.dumps({"data_paths": [str(data)]}))
    _fake_runs(tmp / "runs", data)
    with running_app(tmp, {"HIRISE_APP_STATE": str(tmp / "state.json"), "HIRISE_RUNS_DIR": str(tmp / "runs"),
                           "HIRISE_CACHE_DIR": str(tmp / "cache")}) as url:
        yield url, tmp


@contextlib.contextmanager
def running_app(tmp: Path, env: dict[str, str]) -> Iterator[str]:
    """`streamlit run app.py` on a free local port with `env` added, its log in `tmp`; yields its URL once it
    answers, and stops it afterwards."""
    port = free_port()
    log = open(tmp / "streamlit.log", "wb")  # noqa: SIM115 (the server writes it for its whole life)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start: " + (tmp / "streamlit.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _fake_runs(root: Path, data: Path) -> None:
    """A finished LR-finder run (suggesting 3.16e-03) and, newer, a failed run to annotate and delete; and, older,
    a small real run of 2 epochs (for the figures' epochs and Compare against the shipped model)."""
    from core.experiment.runs import Run
    from core.training.config import RunConfig
    from core.training.runner import train
    tiny = RunConfig(data=[str(data)], model="simple_cnn", init="scratch", image_size=32, epochs=2, batch_size=16,
                     name="tiny").validate()
    run = Run(root / "20251231-000000-tiny")
    run.path.mkdir(parents=True)
    tiny.save(run.config_file)
    assert train(tiny, run) == 0
    cfg = RunConfig(data=[str(data)], model="simple_cnn", init="scratch", image_size=32).to_dict()
    lrs = [10 ** (-7 + i * 0.1) for i in range(60)]
    for name, status in (("20260101-000000-lrfind", {"state": "completed", "kind": "lr_find", "steps_per_epoch": 100,
                                                       "step_in_epoch": 60}),
                         ("20260101-000001-failed", {"state": "failed", "error": "diverged"})):
        run = Run(root / name)
        run.path.mkdir(parents=True)
        run.save_config(cfg)
        run.update_status(**status)
    (root / "20260101-000000-lrfind" / "lr_find.json").write_text(json.dumps(
        {"lrs": lrs, "losses": [2.0 - i / 60 for i in range(60)], "smoothed": [2.0 - i / 60 for i in range(60)],
         "suggested_lr": 0.0031622}))


def _refit_runs(root: Path) -> None:
    """Two completed refits of one recipe (no validation split: training loss only), written by hand."""
    from core.experiment.runs import Run
    from core.training.config import RunConfig
    config = RunConfig(data=["/nowhere"], model="simple_cnn", init="scratch", val_fraction=0, test_fraction=0).to_dict()
    rows = [{"kind": "step", "epoch": 1, "step": 1, "train_loss": 1.0},
            {"kind": "epoch", "epoch": 1, "step": 1, "train_loss": 0.9}]
    for name in ("20260103-000000-refit-a", "20260103-000001-refit-b"):
        run = Run(root / name)
        run.path.mkdir(parents=True)
        run.save_config(config)
        run.update_status(state="completed")
        run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def test_explain_then_evaluate(app_url, browser_page):
    assert DEFAULT_CHECKPOINT.is_file(), "the shipped checkpoint is missing"
    url, tmp = app_url
    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _explain_then_evaluate(url, tmp, page)
    except Exception as err:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise AssertionError("browser test failed; screenshot in test-artifacts/failure.png; app log:\n"
                             + (tmp / "streamlit.log").read_text()[-3000:]) from err


def _explain_then_evaluate(url: str, tmp: Path, page) -> None:
    tile = tmp / "crater-like.jpg"
    tile.write_bytes(synthetic.jpeg(synthetic.tile(1, 5)))
    copy = tmp / "copy-of-crater.jpg"  # the same bytes under another name: shown once, with a note
    copy.write_bytes(tile.read_bytes())

    page.goto(f"{url}/explain")
    page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
    page.locator("input[type=file]").set_input_files([str(tile), str(copy)])
    layer = default_cam_layer(read_checkpoint(DEFAULT_CHECKPOINT)["arch"])  # bn2 for EfficientNet-Lite
    # the answer comes first (the default model's ONNX twin, in a server that has not imported torch yet: this is
    # its first page), the Grad-CAM after torch has loaded: what the page shows when the prediction first appears
    first = page.wait_for_function(
        """layer => { const text = document.body.innerText;
                      if (!/Predicted .+ \\(\\d+\\.\\d%\\)/.test(text)) return null;
                      return {cam: text.includes(`on ${layer} for`), onnx: text.includes('Predictions: ONNX Runtime')}; }""",
        arg=layer, polling=50, timeout=120_000).json_value()
    assert first == {"cam": False, "onnx": True}, first
    page.get_by_text("copy-of-crater.jpg: the same image as crater-like.jpg, shown above.").wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"^Predicted .+ \(\d+\.\d%\)")).first.wait_for(timeout=120_000)
    page.get_by_text(f"on {layer} for", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("Download overlay (PNG)").wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"(Typical|Unusual) input")).first.wait_for(timeout=30_000)  # the OOD check
    page.get_by_text("Colour scale: blue 0").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    images = page.locator("[data-testid='stImage'] img")
    assert images.count() >= 2  # the tile and its Grad-CAM overlay
    page.screenshot(path=str(ARTIFACTS / "explain.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0

    page.goto(f"{url}/evaluate")
    page.get_by_role("button", name="Evaluate on the val split").click(timeout=60_000)
    page.locator(".js-plotly-plot .heatmaplayer").first.wait_for(timeout=120_000)
    page.get_by_text("predicted class").first.wait_for(timeout=10_000)
    assert page.get_by_text("Macro-F1").count() >= 1
    page.get_by_text("Top losses: wrong and sure").first.wait_for(timeout=60_000)
    # the gallery's file names come after its heading (a busy machine took longer than a fixed wait): wait for one
    page.wait_for_function("() => [...document.querySelectorAll(\"[data-testid='stCode']\")]"
                           ".some(e => /\\.(jpe?g|png)$/.test(e.innerText.trim()))", timeout=60_000)
    names = page.locator("[data-testid='stCode']").all_inner_texts()
    assert any(re.search(r"\.(jpe?g|png)$", n.strip()) for n in names), names[:5]  # full, copyable file names
    page.screenshot(path=str(ARTIFACTS / "evaluate.png"), full_page=True)
    # Streamlit scrolls its own main block, so a full-page shot stops at the window: scroll to what follows
    for text, shot in (("precision-recall (one vs rest)", "evaluate-curves.png"), ("reliability: before and after temperature scaling", "evaluate-reliability.png"),
                       ("Top losses: wrong and sure", "evaluate-gallery.png")):
        page.get_by_text(text).first.scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        page.screenshot(path=str(ARTIFACTS / shot))
    assert page.locator("[data-testid='stException']").count() == 0
    _scan_page(url, tmp, page)
    _train_page(url, tmp, page)


def _scan_page(url: str, tmp: Path, page) -> None:
    """Upload an observation with its PDS3 label, scan it as a job, click a detection: its window and Grad-CAM."""
    import numpy as np
    from PIL import Image

    from tools.observation import write_label

    row = np.concatenate([synthetic.tile(c, seed=c) for c in range(1, 5)], axis=1)
    gray = np.concatenate([row, row[:, ::-1]], axis=0)
    image = tmp / "ESP_062586_1840_RED.browse.png"
    Image.fromarray(gray).save(image)
    label = write_label(tmp / "ESP_062586_1840_RED.LBL", gray.shape[1], gray.shape[0], factor=8)
    page.goto(f"{url}/scan")
    page.get_by_text("New scan").first.wait_for(timeout=60_000)
    page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
    page.locator("input[type=file]").set_input_files([str(image), str(label)])
    page.get_by_text("RED.LBL", exact=False).first.wait_for(timeout=30_000)  # the uploader shortens names
    sizes = page.get_by_role("textbox", name="Window sizes (px)")
    sizes.fill("8")
    sizes.press("Enter")
    page.get_by_role("button", name="Start scan").click()
    page.get_by_text("Not started: Window sizes (px): 8 is below the minimum 32").first.wait_for(timeout=30_000)
    sizes.fill("192")
    sizes.press("Enter")
    threshold = page.get_by_role("textbox", name="Probability threshold")
    threshold.fill("2")  # issue 33, item 2: refused in words, nothing started (it used to run at 0.9)
    threshold.press("Enter")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Start scan").click()
    page.get_by_text("Not started: Probability threshold: 2").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "scan-threshold-refused.png"), full_page=True)
    threshold.fill("0.05")
    threshold.press("Enter")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Start scan").click()
    page.get_by_text(re.compile(r"^\d+ detections? at probability ≥ 0.05")).first.wait_for(timeout=180_000)
    page.get_by_text("Latitude and east longitude").first.wait_for(timeout=30_000)
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)  # the first row's selection cell, under the header
    page.get_by_text("Grad-CAM for").first.wait_for(timeout=60_000)
    page.get_by_text("All outputs (zip)").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "scan.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0


def _runs(tmp: Path) -> set[str]:
    return {p.name for p in (tmp / "runs").iterdir() if (p / "config.json").is_file()}


def _train_page(url: str, tmp: Path, page) -> None:
    """Items of issue 14: out-of-range values are kept and refused, a run is annotated and deleted after a
    confirmation, and the LR finder's suggestion reaches the form."""
    page.goto(f"{url}/train")
    page.get_by_text("Configure a run").first.click(timeout=60_000)
    page.get_by_role("tab", name="Optimisation").click()
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("0")
    epochs.press("Enter")
    page.get_by_text("epochs: 0 is below the minimum 1").first.wait_for(timeout=30_000)
    before = _runs(tmp)
    # while a rerun is in flight Streamlit shows the old and the new elements side by side: wait for it to end
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=60_000)
    page.get_by_role("button", name="Launch training", exact=True).click()
    page.get_by_text("Not launched: epochs: 0 is below the minimum 1").first.wait_for(timeout=30_000)
    assert epochs.input_value() == "0" and _runs(tmp) == before  # kept as typed, nothing queued
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "train-invalid.png"), full_page=True)
    epochs.fill("2")
    epochs.press("Enter")
    page.get_by_text("epochs: 0 is below").first.wait_for(state="detached", timeout=30_000)

    page.get_by_text("Note, tags, delete").first.click()
    page.get_by_label("Note", exact=True).fill("diverged: lr too high")
    page.get_by_label("Tags (commas or spaces)").fill("sweep, discard")
    page.get_by_role("button", name="Save note and tags").click()
    page.get_by_text("Saved the note and tags of 20260101-000001-failed").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Delete this run…").click()
    page.get_by_role("button", name="Yes, delete 20260101-000001-failed").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "train-delete-confirm.png"), full_page=True)
    assert "20260101-000001-failed" in _runs(tmp)  # nothing deleted before the confirmation
    page.get_by_role("button", name="Yes, delete 20260101-000001-failed").click()
    page.get_by_text("Deleted run 20260101-000001-failed").first.wait_for(timeout=30_000)
    assert "20260101-000001-failed" not in _runs(tmp)

    page.get_by_role("button", name="Use the suggested LR (3.16e-03) in the form").click(timeout=30_000)
    page.get_by_text("Learning rate set to 3.16e-03").first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Optimisation").click()
    lr = page.get_by_label("Lr", exact=True)
    page.wait_for_timeout(800)
    assert float(lr.input_value()) == pytest.approx(3.16e-3), lr.input_value()
    page.screenshot(path=str(ARTIFACTS / "train-lr.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0
    _round_two(url, tmp, page)


def _settled(page) -> None:
    """Wait for Streamlit's rerun to finish (the old and the new elements stand side by side meanwhile)."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=60_000)


def _round_two(url: str, tmp: Path, page) -> None:
    """Issue 25, items 1, 2, 3 and 8, and no request leaving this machine; screenshots in test-artifacts/."""
    from playwright.sync_api import expect
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:",
                                                                                  "blob:", "ws://127.0.0.1")) else None)
    # 1: values set in the form survive leaving the page (the menu) and a refresh (a new session)
    page.goto(f"{url}/train")
    page.get_by_text("Configure a run").first.click(timeout=60_000)
    page.get_by_role("tab", name="Optimisation").click()
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("3")
    epochs.press("Enter")
    _settled(page)
    page.get_by_role("link", name="Home").click()
    page.get_by_text("kept epoch").first.wait_for(state="attached", timeout=60_000)  # 3: Home says which epoch its figures are from
    page.screenshot(path=str(ARTIFACTS / "round2-home.png"), full_page=True)
    page.get_by_role("link", name="Train").click()
    page.get_by_text("Configure a run").first.click(timeout=60_000)
    page.get_by_role("tab", name="Optimisation").click()
    expect(page.get_by_label("Epochs", exact=True)).to_have_value("3", timeout=30_000)
    page.reload()
    page.get_by_text("Configure a run").first.click(timeout=60_000)
    page.get_by_role("tab", name="Optimisation").click()
    expect(page.get_by_label("Epochs", exact=True)).to_have_value("3", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "round2-train-kept.png"), full_page=True)
    # 2: an unreadable data path refuses Launch at the field, and nothing is queued
    page.get_by_role("tab", name="Data").click()
    field = page.locator("textarea[aria-label='Data']")
    field.fill("/proc")
    field.press("Tab")
    page.get_by_text("Launch is refused until this is fixed").first.wait_for(timeout=60_000)
    before = _runs(tmp)
    _settled(page)
    page.get_by_role("button", name="Launch training", exact=True).click()
    page.get_by_text("Not launched").first.wait_for(timeout=30_000)
    assert _runs(tmp) == before
    page.screenshot(path=str(ARTIFACTS / "round2-train-refused.png"), full_page=True)
    # 3: the Train page's figures name their epoch
    page.reload()
    page.get_by_label("Watch run").first.click(timeout=60_000)
    page.get_by_role("option", name="20251231-000000-tiny").click()
    page.get_by_text("Validation figures of epoch 2, the last").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "round2-train-epochs.png"), full_page=True)
    # 8: one run and the shipped default model are a comparison
    page.goto(f"{url}/compare")
    page.get_by_text("Metrics (validation, best checkpoint)").first.wait_for(timeout=180_000)
    assert page.get_by_text("Pick at least two models").count() == 0
    page.locator(".js-plotly-plot .heatmaplayer").nth(1).wait_for(timeout=120_000)  # two confusion matrices
    page.get_by_text(re.compile(r"Scored on .* val tiles")).first.wait_for(timeout=30_000)  # issue 33, item 1
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "round2-compare.png"), full_page=True)
    # issue 33, item 6: two refits of one recipe (written now, the two newest runs: Compare picks them)
    _refit_runs(tmp / "runs")
    page.goto(f"{url}/compare")
    page.get_by_text("No setting differs between these 2 models").first.wait_for(timeout=120_000)
    page.get_by_text("no validation split (a refit trains on every tile)", exact=False).first.wait_for(timeout=30_000)
    assert page.get_by_text("the run did not complete").count() == 0
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "round2-compare-refits.png"), full_page=True)
    # a lowercase address is a page, and nothing was asked of any other machine (icons, fonts)
    page.goto(f"{url}/dataset")
    page.get_by_text("Tiles per class and split").first.wait_for(timeout=60_000)
    assert page.get_by_text("Page not found").count() == 0
    assert page.locator("[data-testid='stException']").count() == 0
    assert not outside, outside[:5]
