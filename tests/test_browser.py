"""End to end in headless Chromium: `streamlit run app.py`, upload a tile on Explain, see the prediction and the
heatmap; open Evaluate and see the confusion matrix. Screenshots go to test-artifacts/ (not committed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.settings import DEFAULT_CHECKPOINT, PROJECT_ROOT
from tests import synthetic
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


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
    data = synthetic.write_folder(tmp / "data", synthetic.official_files("3.2", n_obs=12, per_obs=6, missing=0))
    (tmp / "state.json").write_text(json.dumps({"data_paths": [str(data)]}))
    port = free_port()
    env = {**os.environ, "HIRISE_APP_STATE": str(tmp / "state.json"), "HIRISE_RUNS_DIR": str(tmp / "runs"),
           "HIRISE_CACHE_DIR": str(tmp / "cache")}
    log = open(tmp / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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
        yield url, tmp
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


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
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise AssertionError("browser test failed; screenshot in test-artifacts/failure.png; app log:\n"
                             + (tmp / "streamlit.log").read_text()[-3000:])


def _explain_then_evaluate(url: str, tmp: Path, page) -> None:
    tile = tmp / "crater-like.jpg"
    tile.write_bytes(synthetic.jpeg(synthetic.tile(1, 5)))

    page.goto(f"{url}/Explain")
    page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
    page.locator("input[type=file]").set_input_files(str(tile))
    page.get_by_text(re.compile(r"^Predicted .+ \(\d+\.\d%\)")).first.wait_for(timeout=120_000)
    page.get_by_text("on layer4 for", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("Download overlay (PNG)").wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    images = page.locator("[data-testid='stImage'] img")
    assert images.count() >= 2  # the tile and its Grad-CAM overlay
    page.screenshot(path=str(ARTIFACTS / "explain.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0

    page.goto(f"{url}/Evaluate")
    page.get_by_role("button", name="Evaluate on the val split").click(timeout=60_000)
    page.locator(".js-plotly-plot .heatmaplayer").first.wait_for(timeout=120_000)
    page.get_by_text("predicted class").first.wait_for(timeout=10_000)
    assert page.get_by_text("Macro-F1").count() >= 1
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "evaluate.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0
