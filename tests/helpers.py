"""Helpers the test modules share (fixtures are in conftest.py): the tiny training settings, polling, and driving
the app's pages under Streamlit's AppTest."""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

# ---- training --------------------------------------------------------------------------------------------------

TINY = dict(model="simple_cnn", init="scratch", image_size=48, batch_size=16, log_every=1, imbalance="none")
"""The smallest model a test trains: seconds on a CPU (plain cross-entropy, as before the default recipe changed)."""


def tiny(**changes) -> dict:
    """TINY with `changes` (another image size, a set number of epochs and steps)."""
    return {**TINY, **changes}


@contextmanager
def app_chooses(data_dir: Path, list_manifests: Callable[[], list[dict]], manifest_dir: Callable[[], Path]) -> Iterator[Path]:
    """The app with `data_dir` chosen, and its runs and manifests (cross-validations or grids) left as they were
    found: jobs started meanwhile are cancelled and removed, new manifests deleted."""
    from core.experiment import jobs
    from core.experiment.runs import list_runs
    from core.settings import APP_STATE_FILE

    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(data_dir)]}))
    before = {r.name for r in list_runs()}
    manifests_before = {m["id"] for m in list_manifests()}
    try:
        yield data_dir
    finally:
        for r in list_runs():
            if r.name not in before:
                jobs.cancel(r)
                deadline = time.time() + 120
                while r.trainer_alive() and time.time() < deadline:
                    time.sleep(0.5)
                shutil.rmtree(r.path)
        for m in list_manifests():
            if m["id"] not in manifests_before:
                (manifest_dir() / f"{m['id']}.json").unlink()
        Path(APP_STATE_FILE).unlink(missing_ok=True)


def wait_for(predicate, timeout: float = 180.0, what: str = "condition"):
    """Poll `predicate` until it returns something true, and return that; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


OLD_SPELLING = "note: flags-only commands are the old spelling"


def one_line_error(capsys) -> str:
    """What a command printed on stderr, checked to be one `error: ...` line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---- the app's pages -------------------------------------------------------------------------------------------

PAGE_TIMEOUT = 180


def run_page(path: str, timeout: float = PAGE_TIMEOUT) -> AppTest:
    """Start the app from its entrypoint (as `streamlit run app.py` does) and open `path`."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=timeout)
    at.run()  # the entrypoint's st.navigation registers the pages
    if path != "app.py":
        at.switch_page(path)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest, captions: bool = True) -> str:
    """The page's markdown, errors, warnings and infos, and (with `captions`) its captions and success messages."""
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning] + \
        [i.value for i in at.info]
    if captions:
        parts += [c.value for c in at.caption] + [s.value for s in at.success]
    return "\n".join(str(p) for p in parts)


def tiny_form(at: AppTest) -> None:
    """Fill the Train form with a tiny run: simple_cnn from scratch, 48 px, one epoch of two steps."""
    for key, value in (("cfg_model", "simple_cnn"), ("cfg_init", "scratch")):
        at.selectbox(key=key).set_value(value).run()
    for key, value in (("cfg_image_size", "48"), ("cfg_epochs", "1"), ("cfg_max_steps_per_epoch", "2")):
        at.text_input(key=key).input(value).run()
