"""Screenshot every page of a running app with headless chromium: python tools/screenshots.py URL OUTDIR."""
from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.chromium import CHROMIUM_ARGS, chromium_path  # noqa: E402
from ui.navigation import PAGES  # noqa: E402 - the app's own page list


def main(url: str, out: Path) -> int:
    chromium = chromium_path()
    if chromium is None:
        print("error: chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in (app_page.url_path for app_page in PAGES):
            page.goto(f"{url}/{name}")
            page.wait_for_selector("[data-testid='stApp']")
            page.wait_for_timeout(6000)
            page.screenshot(path=str(out / f"{name or 'Home'}.png"), full_page=True)
        browser.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
