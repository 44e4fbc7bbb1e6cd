"""App cold start as a person sees it: seconds from launching `streamlit run app.py` to the Home page's
content, and to the Explain page's first prediction, against a minimal Streamlit app measured the same way
in the same run.

    python bench/bench_coldstart.py [--repeats 3] [--port P] [--importtime] [--timeout 120] [--tile F]

Each measurement starts a fresh server (`streamlit run app.py --server.headless true --server.port P
--server.address 127.0.0.1`); a headless Chromium (launched beforehand, not timed; a fresh browser
context per start) opens the page as soon as /_stcore/health answers "ok". Measured from the launch:
- HOME: / until the page is drawn to its end ("The eight classes") with the default model's line;
- EXPLAIN: /explain until the file uploader is attached, then a tile is uploaded at once (a real one from
  ../shared/data when present, else a synthetic one; `--tile`) and the clock runs until "Predicted ..." shows.
  Also given: upload -> prediction, what a person who opened the page and picked a file waits. Twice: with
  the app's default engine (HIRISE_ENGINE=auto: the default model's ONNX twin answers, torch loads after) and
  with HIRISE_ENGINE=torch (torch and the model load before the answer), in the same run.
BASELINE: a temporary app holding only `import streamlit as st; st.file_uploader("x")`, started from the
project folder too (so both read its .streamlit/config.toml), until its uploader is attached. Servers are
stopped with SIGTERM (SIGKILL only if one ignores it). Goals: HOME and EXPLAIN prediction both < 5 s on an idle
machine (issue 14); EXPLAIN's first prediction from the twin < 2.5 s (issue 30). `--importtime` adds what the Explain page imports on its first run (python -X
importtime), largest first, and the model load.
The app sees this shell's environment (HIRISE_APP_STATE, HIRISE_CHECKPOINT, ...), as a user's would.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.cliargs import at_least  # noqa: E402
from tools.chromium import CHROMIUM_ARGS, chromium_path  # noqa: E402

GOAL_S = 5.0
TWIN_GOAL_S = 2.5  # issue 30: Explain's first prediction after a cold start, from its ONNX twin
MINIMAL_APP = 'import streamlit as st\nst.file_uploader("x")\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok"
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM and wait (Streamlit shuts down cleanly on it); SIGKILL only as a last resort."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


Step = tuple[str, Callable[[object, float], None]]  # (name, action(page, timeout_ms)): done when it returns


def cold_start(browser, script: Path, page_path: str, port: int | None, timeout: float, log: Path,
               steps: Sequence[Step], cwd: Path = ROOT, env: dict[str, str] | None = None
               ) -> tuple[float, dict[str, float]]:
    """Server-ready seconds, and seconds from launch until each step was done, of one fresh server and browser
    context that opens /`page_path` as soon as the server answers."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1"]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    done: dict[str, float] = {}
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            while not healthy(url):
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read_text()[-1500:]}")
                if time.perf_counter() - start > timeout:
                    raise RuntimeError(f"no health answer in {timeout:.0f} s: {log.read_text()[-1500:]}")
                time.sleep(0.05)
            ready = time.perf_counter() - start
            page.goto(f"{url}/{page_path}", timeout=timeout * 1000)
            for name, action in steps:
                action(page, timeout * 1000)
                done[name] = time.perf_counter() - start
            if page.locator("[data-testid='stException']").count():
                shown_error = page.locator("[data-testid='stException']").first.inner_text()[:500]
                raise RuntimeError(f"the page shows an exception: {shown_error}")
        finally:
            context.close()
            stop(proc)
    return ready, done


def uploader_attached(page, timeout_ms: float) -> None:
    page.wait_for_selector("input[type=file]", state="attached", timeout=timeout_ms)


def home_content(page, timeout_ms: float) -> None:
    """The Home page drawn to its end, the default model's line included (not a spinner in its place)."""
    page.get_by_text("The eight classes").first.wait_for(timeout=timeout_ms)
    page.get_by_text(re.compile(r"input \d+px, (epoch \d+|refit on every tile)|No default model")).first.wait_for(timeout=timeout_ms)


def upload_and_predict(tile: Path) -> Callable[[object, float], None]:
    """Upload `tile` at once (a person who had it ready) and wait for the predicted class."""
    def action(page, timeout_ms: float) -> None:
        page.locator("input[type=file]").set_input_files(str(tile))
        page.get_by_text(re.compile(r"^Predicted .+ \(\d+\.\d%\)")).first.wait_for(timeout=timeout_ms)
    return action


def sample_tile(folder: Path) -> Path:
    """A real tile from ../shared/data when there is one, else a synthetic 227x227 grayscale JPEG."""
    shared = ROOT.parent / "shared" / "data"
    for path in sorted(shared.glob("*/map-proj*/*.jpg"))[:1] + sorted(shared.glob("**/*.jpg"))[:1]:
        return path
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    gray = (rng.normal(100, 20, (227, 227))).clip(0, 255).astype(np.uint8)
    path = folder / "tile.jpg"
    Image.fromarray(gray).save(path, quality=90)
    return path


def import_lines(path: Path) -> list[str]:
    """The top-level import statements of a script, as source lines."""
    tree = ast.parse(path.read_text())
    return [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
            and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]


def import_tree(stderr: str) -> list[tuple[str, float, list]]:
    """`-X importtime` lines (children printed before their parent) -> [(module, cumulative s, children)]."""
    pending: dict[int, list] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        depth = (len(m.group(2)) - 1) // 2
        node = (m.group(3), int(m.group(1)) / 1e6, pending.pop(depth + 1, []))
        pending.setdefault(depth, []).append(node)
    return pending.get(0, [])


def print_tree(nodes: list, threshold: float, max_depth: int, depth: int = 0) -> None:
    for name, seconds, children in sorted(nodes, key=lambda n: -n[1]):
        if seconds >= threshold:
            print(f"  {seconds:6.2f}  {'  ' * depth}{name}")
            if depth < max_depth:
                print_tree(children, threshold, max_depth, depth + 1)


def importtime_report(root: Path = ROOT, threshold: float = 0.1, max_depth: int = 5) -> None:
    """What app.py + the Explain page import at their first run, as a tree of the costly imports."""
    lines = list(dict.fromkeys(import_lines(root / "app.py") + import_lines(root / "views" / "explain.py")))
    code = "import time; t = time.perf_counter()\n" + "\n".join(lines) + \
        "\nprint(f'IMPORTS {time.perf_counter() - t:.3f}')" + \
        "\nfrom core.checkpoint import load_checkpoint; from core.settings import DEFAULT_CHECKPOINT" + \
        "\nt = time.perf_counter()\nif DEFAULT_CHECKPOINT.is_file(): load_checkpoint()" + \
        "\nprint(f'MODEL {time.perf_counter() - t:.3f}')"
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=root, capture_output=True, text=True)
    if res.returncode:
        print(f"importtime: failed ({res.stderr[-800:]})")
        return
    total = float(re.search(r"IMPORTS (\S+)", res.stdout).group(1))
    model = float(re.search(r"MODEL (\S+)", res.stdout).group(1))
    print(f"\nimporttime: the imports of app.py + views/explain.py take {total:.2f} s in a fresh interpreter "
          f"(-X importtime adds some overhead); loading the default model then takes {model:.2f} s")
    print(f"imports costing >= {threshold} s (cumulative, first importer only; a module imported earlier costs its "
          "later importers nothing):")
    print_tree(import_tree(res.stderr), threshold, max_depth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--port", type=int, help="default: a free port per start")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before one start counts as failed")
    parser.add_argument("--importtime", action="store_true", help="also list the Explain page's imports by cost")
    parser.add_argument("--tile", type=Path, help="the image uploaded on Explain (default: a shared tile)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the checkout whose app.py is measured (default: this one; e.g. a patched copy)")
    args = parser.parse_args()

    chromium = chromium_path()
    if not chromium:
        print("error: chromium is not installed (apt-get install chromium); nothing measured", file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: the playwright package is not installed; nothing measured", file=sys.stderr)
        return 2

    root = args.root.resolve()
    if not (root / "app.py").is_file():
        print(f"error: no app.py in {root}", file=sys.stderr)
        return 2
    if args.tile and not args.tile.is_file():
        print(f"error: --tile {args.tile}: no such file", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp, sync_playwright() as p:
        tmp = Path(tmp)
        tile = args.tile.resolve() if args.tile else sample_tile(tmp)
        print(f"bench_coldstart: streamlit run {root / 'app.py'}: Home content, Explain first prediction "
              f"({tile.name}), vs a minimal uploader app; {args.repeats} repeats, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        minimal = tmp / "minimal_app.py"
        minimal.write_text(MINIMAL_APP)
        explain_steps = [("uploader", uploader_attached), ("prediction", upload_and_predict(tile))]
        starts = {"home": (root / "app.py", "", [("content", home_content)], {}),
                  "explain": (root / "app.py", "explain", explain_steps, {"HIRISE_ENGINE": "auto"}),
                  "explain-torch": (root / "app.py", "explain", explain_steps, {"HIRISE_ENGINE": "torch"}),
                  "minimal": (minimal, "", [("uploader", uploader_attached)], {})}
        times: dict[str, list[float]] = {}
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for i in range(args.repeats):  # interleaved, so all see the same machine state
                for name, (script, page_path, steps, env) in starts.items():
                    ready, done = cold_start(browser, script, page_path, args.port, args.timeout,
                                             tmp / f"{name}-{i}.log", steps, cwd=root, env=env)
                    times.setdefault(f"{name} server ready", []).append(ready)
                    for step, seconds in done.items():
                        times.setdefault(f"{name} {step}", []).append(seconds)
                    if "prediction" in done:
                        times.setdefault(f"{name} upload -> prediction", []).append(done["prediction"] - done["uploader"])
                    print(f"  run {i + 1} {name:<13} server ready {ready:6.2f} s   " +
                          "   ".join(f"{step} {s:6.2f} s" for step, s in done.items()), flush=True)
        finally:
            browser.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedian over {args.repeats}, seconds from launch:")
    rows = (("HOME: / drawn to its end, default model shown", "home content"),
            ("EXPLAIN: /explain uploader attached", "explain uploader"),
            ("EXPLAIN: first prediction shown (ONNX twin)", "explain prediction"),
            ("  of which upload -> prediction", "explain upload -> prediction"),
            ("EXPLAIN, torch engine: first prediction shown", "explain-torch prediction"),
            ("  of which upload -> prediction", "explain-torch upload -> prediction"),
            ("BASELINE: minimal app's uploader attached", "minimal uploader"))
    for label, key in rows:
        print(f"  {label:<50}{med[key]:>7.2f}")
    base = med["minimal uploader"]
    print(f"ratio: EXPLAIN prediction, ONNX twin / torch engine = "
          f"{med['explain prediction'] / med['explain-torch prediction']:.2f}x; upload -> prediction "
          f"{med['explain upload -> prediction'] / med['explain-torch upload -> prediction']:.2f}x; goal (issue 30): "
          f"< {TWIN_GOAL_S} s from launch: {'met' if med['explain prediction'] < TWIN_GOAL_S else 'MISSED'}, "
          f"from the upload: {'met' if med['explain upload -> prediction'] < TWIN_GOAL_S else 'MISSED'}")
    for label, key in (("HOME", "home content"), ("EXPLAIN prediction", "explain prediction")):
        print(f"ratio: {label} / BASELINE = {med[key] / base:.2f}x (adds {med[key] - base:.2f} s); goal < {GOAL_S:.0f} s: "
              f"{'met' if med[key] < GOAL_S else 'MISSED'}")
    if args.importtime:
        importtime_report(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
