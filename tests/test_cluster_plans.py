"""Plans (cross-validations, grids) on a Dask cluster, through the same manifest and training code as the local
queue: a local cluster of two worker processes stands for a real one."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from core.experiment import cv
from core.experiment.runs import Run
from core.training.runner import main as train_cli
from tests.helpers import one_line_error, wait_for

pytestmark = pytest.mark.slow
TINY_FLAGS = ["--model", "simple_cnn", "--init", "scratch", "--image-size", "48", "--batch-size", "16",
              "--max-steps-per-epoch", "2", "--device", "cpu"]


def _epochs(run: Run) -> list[int]:
    return [r["epoch"] for r in run.metrics() if r.get("kind") == "epoch"]


def test_a_cross_validation_runs_on_a_local_dask_cluster(data_dir, tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    assert train_cli(["cv", "3", "--data", str(data_dir), *TINY_FLAGS, "--epochs", "2", "--cluster", "local",
                      "--workers", "2", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "3 tasks on the Dask cluster" in out and out.count("[cv ") == 3
    [manifest] = cv.list_cvs(runs)
    rep = cv.report(manifest["id"], runs, with_files=False)
    assert manifest["how"] == "cluster" and not rep["missing"]  # the same report as the local queue's
    for _, run in cv.fold_runs(manifest, runs):
        assert run.status()["state"] == "completed" and _epochs(run) == [1, 2]


def test_a_killed_worker_reruns_its_fold_and_counts_nothing_twice(data_dir, tmp_path: Path):
    """SIGKILL the worker process training a fold after its first epoch: Dask reruns the task on a fresh worker,
    which resumes the run from last.pt; every epoch is in the fold's metrics once, and the manifest lists the
    fold once."""
    runs = tmp_path / "runs"
    codes: list[int] = []
    argv = ["cv", "3", "--data", str(data_dir), *TINY_FLAGS, "--epochs", "6", "--cluster", "local", "--workers", "2",
            "--runs-dir", str(runs)]
    thread = threading.Thread(target=lambda: codes.append(train_cli(argv)))
    thread.start()

    def training_with_a_checkpoint() -> Run | None:
        for path in sorted(runs.glob("*-cv3-f*")):
            run = Run(path)
            if run.status().get("state") == "running" and run.last_checkpoint.is_file() and run.status().get("pid"):
                return run
        return None
    victim = wait_for(training_with_a_checkpoint, timeout=180, what="a fold with a finished epoch")
    os.kill(victim.status()["pid"], signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=300)
    assert not thread.is_alive() and codes == [0]
    assert victim.status()["state"] == "completed" and victim.status()["started_at"] > victim.status()["queued_at"]
    assert _epochs(victim) == [1, 2, 3, 4, 5, 6]
    assert any(r["time"] > killed_at for r in victim.metrics())  # trained on after the kill, not before it
    [manifest] = cv.list_cvs(runs)
    assert sorted(e["fold"] for e in manifest["runs"]) == [0, 1, 2]


def test_an_unreachable_cluster_is_refused_before_anything_is_written(data_dir, tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    assert train_cli(["cv", "3", "--data", str(data_dir), *TINY_FLAGS, "--epochs", "1", "--cluster",
                      "tcp://127.0.0.1:9", "--runs-dir", str(runs)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "tile/s]" not in line]  # no bars
    assert len(err) == 1 and "cannot reach a Dask scheduler at tcp://127.0.0.1:9" in err[0], err
    assert not runs.exists() or not any(runs.rglob("*.json"))
    assert train_cli(["grid", "lr=0.001,0.01", "--data", str(data_dir), *TINY_FLAGS, "--epochs", "1", "--queue",
                      "--cluster", "local", "--runs-dir", str(runs)]) == 2
    assert "--queue and --cluster" in one_line_error(capsys)
