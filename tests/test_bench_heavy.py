"""Smoke tests of the heaviest benchmark scripts (scan, memory, plans on a cluster): see test_bench.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from tests.test_bench import ok, run_bench

pytestmark = pytest.mark.slow


@pytest.mark.realdata
def test_bench_memory_smoke(shared_data: Path):
    out = ok(run_bench("bench_memory.py", str(shared_data / "hirise-v3_2-subset"), "--train-steps", "2",
                       "--batch-size", "4", "--image-size", "64", "--calls", "10", "--plus-calls", "2",
                       "--scorecam-calls", "1", "--every", "5",
                       # the smallest shipped model: this checks the script, and ScoreCAM on the 260 px default is slow
                       "--checkpoint", str(PROJECT_ROOT / "checkpoints" / "hirise-efficientnet-lite0.pt")))
    assert "peak" in out and "(a) training process" in out and "(b) app session" in out
    assert "repeated calls:" in out and "goal: flat" in out


@pytest.mark.realdata
def test_bench_scan_smoke(shared_data: Path):
    out = ok(run_bench("bench_scan.py", "--data", str(shared_data / "hirise-v3_2-subset"), "--browse", "500x400",
                       "--baseline-windows", "10", "--jp2-side", "600", "--jp2-sizes", "300", "--sections", "1,2,4",
                       "--engine-browse", "500x400"))
    assert "BASELINE plain loop" in out and "ratio (OURS / BASELINE" in out and "OURS whole scan" in out
    assert "ratio (ONNX / torch)" in out
    assert "BASELINE model loaded, image read whole" in out and "goal < 1.5 GB" in out


def test_bench_plans_smoke(data_dir: Path):
    """On the small synthetic data set: this checks the script (its figures need real data and an idle machine)."""
    out = ok(run_bench("bench_plans.py", str(data_dir), "--model", "simple_cnn",
                       "--image-size", "32", "--epochs", "1", "--max-steps", "2"))
    assert "BASELINE in this process" in out and "OURS     local Dask cluster of 2 workers" in out and "ratio" in out
