"""Shared fixtures. Caches and runs go to a per-session temporary folder, never the project's."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="hirise-tests-"))
_OURS = os.environ.get("HIRISE_TESTS_TMP")  # set below by this file, in the xdist controller: its workers inherit it
for _name, _file in (("HIRISE_CACHE_DIR", "cache"), ("HIRISE_RUNS_DIR", "runs"), ("HIRISE_APP_STATE", "app-state.json"),
                     ("HIRISE_LABEL_OVERRIDES", "label_overrides.csv"),  # issue 16
                     ("HIRISE_LABEL_REJECTIONS", "label_rejections.csv"),
                     ("HIRISE_LABELLING_DIR", "labelling")):  # issue 31
    # each test process (each xdist worker) its own folders: inherited from the controller they were shared, and one
    # worker's runs and app state leaked into the other's tests. A value the user set is kept.
    if _name not in os.environ or (_OURS and os.environ[_name].startswith(_OURS)):
        os.environ[_name] = str(_SESSION_TMP / _file)
os.environ["HIRISE_TESTS_TMP"] = str(_SESSION_TMP.parent / "hirise-tests-")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (and in the trainings they start), or the
    # OpenMP threads of both wait on each other (small models ran 30-50x slower with two on a busy machine).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
from streamlit import config as _streamlit_config  # noqa: E402

# What `make app` passes (the app serves nothing without an address; AppTest reads .streamlit/config.toml
# from the working directory only, so pytest started elsewhere would otherwise have none).
_streamlit_config.set_option("server.address", "127.0.0.1")

from core.settings import PROJECT_ROOT, SHARED_DATA_DIR  # noqa: E402
from tests import synthetic  # noqa: E402

ARTIFACTS = PROJECT_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def v32_folder(tmp_path_factory) -> Path:
    return synthetic.write_folder(tmp_path_factory.mktemp("v32"), synthetic.official_files("3.2"))


@pytest.fixture(scope="session")
def v3_folder(tmp_path_factory) -> Path:
    return synthetic.write_folder(tmp_path_factory.mktemp("v3"), synthetic.official_files("3", seed=1))


@pytest.fixture(scope="module")
def data_dir(request, tmp_path_factory) -> Path:
    """A small official v3.2 folder to train on (12 observations of 8 tiles), written once per test module
    (test_train's in train-data0, test_cv's in cv-data0, ...)."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return synthetic.write_folder(tmp_path_factory.mktemp(f"{module}-data"),
                                  synthetic.official_files("3.2", n_obs=12, per_obs=8, missing=0))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA_DIR / "hirise-v3_2-subset").is_dir():
        pytest.skip(f"real HiRISE tiles not found at {SHARED_DATA_DIR} (../shared/data); these tests run in CI")
    return SHARED_DATA_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module: small models on two busy cores ran 30-50x slower with two."""
    from tests import model_fixtures
    with model_fixtures.one_thread():
        yield


@pytest.fixture(scope="session")
def tiny():
    """A tiny trained 8-class simple_cnn checkpoint, loaded."""
    from core.checkpoint import load_checkpoint
    from tests import model_fixtures
    return load_checkpoint(model_fixtures.tiny_checkpoint())


@pytest.fixture(autouse=True)
def fresh_run_form():
    """Each test meets the Train form as a new user does: the form's values are remembered in the app's state file
    across sessions (ui.run_form), and one test's values must not become the next test's."""
    import json

    from core.settings import APP_STATE_FILE
    path = Path(APP_STATE_FILE)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and "run_form" in state:
        state.pop("run_form")
        path.write_text(json.dumps(state))
    yield


def pytest_collection_modifyitems(config, items):
    """Every test that reads ../shared/data (through the shared_data fixture) carries the realdata marker, so that
    `-m "not realdata"` leaves all of them out."""
    unmarked = [item.nodeid for item in items
                if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("realdata") is None]
    if unmarked:
        raise pytest.UsageError("these tests use shared_data (../shared/data) but lack @pytest.mark.realdata: "
                                + ", ".join(unmarked))
