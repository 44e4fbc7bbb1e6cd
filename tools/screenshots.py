"""Screenshot every page of the app with headless chromium, for the README and docs/ (docs/img/).

    python tools/screenshots.py OUTDIR [--url URL] [--data PATH ...] [--pages Home,Explain] [--width 1000]

Without --url it starts its own server (`streamlit run app.py` on a free local port, with its own empty runs
folder and app state in a temporary folder, so the project's runs and remembered data are never touched) and stops
it at the end, however the run ends. Each page is brought to a state worth showing: Evaluate is run on the val
split, a real crater tile is uploaded on Explain, two shipped models are compared, the Explore map is drawn (a
feature pass over every tile of the data the first time: minutes on a CPU), and a test observation of real tiles
is uploaded with its label and scanned on Scan. Every picture is then scaled to
--width pixels and reduced to a 256-colour palette, so it stays small enough to keep in git.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.settings import PROJECT_ROOT, SHARED_DATA_DIR
from tools.chromium import CHROMIUM_ARGS, chromium_path
from ui.navigation import PAGES

#: A crater original of the shared v3.2 subset (uploaded on Explain when the data holds it).
CRATER = "ESP_011425_1775_RED-0004.jpg"
#: The browser window per page: Streamlit scrolls its own main block, so a full-page shot ends at the window.
HEIGHTS = {"Home": 1000, "Dataset": 1500, "Train": 1100, "Evaluate": 1500, "Explain": 1000, "Compare": 1500,
           "Explore": 1000, "Scan": 1300}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp: Path, data: list[str]) -> tuple[subprocess.Popen, str]:
    """A server of its own on a free port, its state and runs in `tmp`; returns once it answers."""
    (tmp / "state.json").write_text(json.dumps({"data_paths": data} if data else {}))
    env = {**os.environ, "HIRISE_APP_STATE": str(tmp / "state.json"), "HIRISE_RUNS_DIR": str(tmp / "runs"),
           "HIRISE_LABEL_OVERRIDES": str(tmp / "label_overrides.csv")}
    port = free_port()
    log = open(tmp / "streamlit.log", "wb")  # noqa: SIM115 (the server writes it for its whole life)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    raise SystemExit("error: the app did not start: " + (tmp / "streamlit.log").read_text()[-2000:])


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(page, locator, timeout_ms: int) -> None:
    """Wait for `locator` to show; give up at once when the page shows an exception instead."""
    deadline = time.time() + timeout_ms / 1000
    while time.time() < deadline:
        if locator.count() and locator.first.is_visible():
            return
        error = page.locator("[data-testid='stException']")
        if error.count():
            raise RuntimeError("the page failed: " + error.first.inner_text()[:500])
        page.wait_for_timeout(1000)
    raise TimeoutError(f"not shown within {timeout_ms / 1000:.0f} s")


def settle(page, timeout_ms: int = 600_000) -> None:
    """Wait until the script run in flight has finished (Streamlit's running indicator is gone)."""
    page.wait_for_timeout(1500)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=timeout_ms)
    page.wait_for_timeout(1500)


def prepare(page, name: str, data: list[str]) -> None:
    """Bring a page to a state worth showing (it is already loaded)."""
    if name == "Home":
        wait_for(page, page.get_by_text("macro-F1"), 120_000)
    elif name == "Evaluate":
        page.get_by_role("button", name="Evaluate on the val split").click(timeout=120_000)
        wait_for(page, page.locator(".js-plotly-plot .heatmaplayer"), 600_000)
    elif name == "Explain":
        tiles = [Path(d) / "map-proj-v3_2" / CRATER for d in data]
        tile = next((t for t in tiles if t.is_file()), None)
        if tile is not None:
            page.wait_for_selector("input[type=file]", state="attached", timeout=120_000)
            page.locator("input[type=file]").set_input_files([str(tile)])
            wait_for(page, page.get_by_text("Colour scale: blue 0"), 300_000)
    elif name == "Compare":
        settle(page)  # the default model is preselected: add the previous default beside it
        shipped = page.locator("[data-testid='stMultiSelect']").filter(has_text="Shipped models to include")
        shipped.locator("input").click(timeout=60_000)
        page.get_by_role("option", name="lite2").first.click(timeout=30_000)
        page.keyboard.press("Escape")
        settle(page)
        wait_for(page, page.get_by_text("Only the settings that differ"), 600_000)
    elif name == "Explore":
        draw = page.get_by_role("button", name="Draw the map")
        wait_for(page, draw.or_(page.locator(".js-plotly-plot")), 300_000)  # not drawn yet, or drawn from the cache
        if draw.count():
            draw.click()
        wait_for(page, page.locator(".js-plotly-plot"), 1_200_000)
    elif name == "Scan" and data:
        image, label = scan_observation(Path(tempfile.mkdtemp(prefix="scan-shot-")), data[0])
        page.wait_for_selector("input[type=file]", state="attached", timeout=120_000)
        page.locator("input[type=file]").set_input_files([str(image), str(label)])
        wait_for(page, page.get_by_text("RED.LBL", exact=False), 60_000)
        sizes = page.get_by_role("textbox", name="Window sizes (px)")
        sizes.fill("192,384")
        sizes.press("Enter")
        settle(page)
        page.get_by_role("button", name="Start scan").click()
        heading = page.get_by_text("at probability ≥", exact=False).first
        wait_for(page, heading, 600_000)
        settle(page)
        page.get_by_role("heading", name="at probability").first.evaluate("e => e.scrollIntoView()")
        page.wait_for_timeout(1000)
        return
    settle(page)


def scan_observation(folder: Path, data: str) -> tuple[Path, Path]:
    """A test observation of real tiles (tools/observation.py) as a browse JPEG with its PDS3 label."""
    from PIL import Image as PILImage

    from core.checkpoint import load_checkpoint
    from core.data import load_dataset
    from tools import observation

    loaded = load_checkpoint()
    tiles = load_dataset([Path(data)], label_overrides=False)
    landmarks = observation.landmarks_called_right(
        loaded, tiles, {"crater": 2, "dark dune": 1, "bright dune": 1, "slope streak": 1})
    canvas, _ = observation.build(tiles, landmarks, list(loaded.class_names))
    image = folder / "ESP_062586_1840_RED.browse.jpg"
    PILImage.fromarray(canvas).save(image, quality=95)
    label = observation.write_label(folder / "ESP_062586_1840_RED.LBL", canvas.shape[1], canvas.shape[0], factor=8)
    return image, label


def shrink(path: Path, width: int) -> None:
    """Scale to `width` pixels wide and reduce to a 256-colour palette (a screenshot has few colours)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--url", help="a running app (default: start one, and stop it at the end)")
    parser.add_argument("--data", action="append", default=None,
                        help="data for the app's own server (default: the shared v3.2 subset when present)")
    parser.add_argument("--pages", help="comma-separated page names (default: every page), e.g. Home,Explain")
    parser.add_argument("--width", type=int, default=1000, help="width of the saved pictures in pixels")
    args = parser.parse_args(argv)
    chromium = chromium_path()
    if chromium is None:
        print("error: chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    data = args.data or [str(p) for p in [SHARED_DATA_DIR / "hirise-v3_2-subset"] if p.is_dir()]
    wanted = [p for p in PAGES if not args.pages or p.label in args.pages.split(",")]
    args.outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hirise-screenshots-") as tmp:
        proc, url = (None, args.url.rstrip("/")) if args.url else start_app(Path(tmp), data)
        failed = 0
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                for app_page in wanted:
                    page = browser.new_page(viewport={"width": 1400, "height": HEIGHTS.get(app_page.label, 1000)})
                    page.goto(f"{url}/{app_page.url_path}")
                    page.wait_for_selector("[data-testid='stApp']")
                    started = time.time()
                    try:
                        prepare(page, app_page.label, data)  # by label: the addresses are lower case
                    except Exception as exc:
                        failed += 1
                        print(f"{app_page.label}: not brought to its full state ({type(exc).__name__}: {exc})",
                              file=sys.stderr)
                    out = args.outdir / f"{app_page.label.lower()}.png"
                    page.screenshot(path=str(out))
                    page.close()
                    shrink(out, args.width)
                    print(f"{out} ({out.stat().st_size // 1024} KiB, {time.time() - started:.0f} s)")
                browser.close()
        finally:
            if proc is not None:
                stop_app(proc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
