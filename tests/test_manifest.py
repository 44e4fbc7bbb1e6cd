"""core.experiment.manifest: the one reader and writer of plan manifests (grids, cross-validations)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.experiment import cv, grid
from core.experiment.manifest import Manifests, safe_name
from core.settings import PROJECT_ROOT


class PlanError(Exception):
    pass


def _problem(raw, stem):
    return None if isinstance(raw, dict) and raw.get("id") == stem and isinstance(raw.get("runs"), list) else "bad"


KIND = Manifests(".plans", "plan", "plan:", _problem, PlanError)


def test_ids_are_unique_and_only_names_of_the_folder(tmp_path: Path):
    ids = {KIND.create({"how": "queued"}, tmp_path)[0] for _ in range(20)}  # many in one second
    assert len(ids) == 20 and len(KIND.list(tmp_path)) == 20
    for bad in ("../x", ".hidden", "a/b", "a\0b", "", 7, None):
        assert not safe_name(bad)
        with pytest.raises(PlanError, match="is not a plan id"):
            KIND.path(bad, tmp_path)
        with pytest.raises(FileNotFoundError, match="no plan"):
            KIND.load(bad, tmp_path)


def test_writers_in_threads_and_processes_lose_no_entry(tmp_path: Path):
    """Streamlit sessions are threads, and a queued plan's jobs are processes: every append lands."""
    plan_id, path = KIND.create({}, tmp_path)
    script = ("import sys; from pathlib import Path; from tests.test_manifest import KIND\n"
              "for i in range(30): KIND.add_run(Path(sys.argv[1]), {'run': f'p{i}'})")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=PROJECT_ROOT)

    def append(t: int) -> None:
        for i in range(30):
            KIND.add_run(path, {"run": f"t{t}-{i}"})
    threads = [threading.Thread(target=append, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc.wait(60) == 0
    runs = [e["run"] for e in KIND.load(plan_id, tmp_path)["runs"]]
    assert len(runs) == len(set(runs)) == 150


def test_a_damaged_manifest_is_named_and_skipped(tmp_path: Path):
    good, _ = KIND.create({}, tmp_path)
    (KIND.dir(tmp_path) / "broken.json").write_text("{not json")
    (KIND.dir(tmp_path) / "other.json").write_text(json.dumps({"id": "else", "runs": []}))
    skipped: list[str] = []
    assert [m["id"] for m in KIND.list(tmp_path, skipped)] == [good]
    assert skipped == ["broken.json: not JSON", "other.json: bad"]
    with pytest.raises(PlanError, match=r"plan other: its manifest .* is damaged \(bad\)"):
        KIND.load("other", tmp_path)


def test_grids_and_cross_validations_share_it():
    """One manifest layer: neither plan module keeps its own copy of ids, locking, listing or launching."""
    assert isinstance(cv.MANIFESTS, Manifests) and isinstance(grid.MANIFESTS, Manifests)
    for module in (cv, grid):
        source = Path(module.__file__).read_text()
        for copied in ("write_json_atomic(", "new_manifest_id(", "launch_job(", "RunLock.acquire("):
            assert copied not in source, f"{module.__name__} writes manifests or runs jobs itself: {copied}"
