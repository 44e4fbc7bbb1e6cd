"""Where the headless browser is and how it is started, for the browser test, the cold-start benchmark and
the screenshot tool (Debian's chromium: Playwright's own browser download cannot work offline)."""
from __future__ import annotations

import shutil

#: The flags these machines need for a headless Chromium that touches no network of its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """The chromium executable on PATH (Debian names it chromium, others chromium-browser), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")
