"""Smoke tests of the benchmark scripts in bench/: each runs with the tiniest settings, exits 0 and prints its
figures. They check that the scripts work, not the figures (those need an idle machine and the defaults). The
scan, memory and plan benchmarks are in test_bench_heavy.py: a file runs on one test worker, and these two balance."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import DEFAULT_CHECKPOINT, PROJECT_ROOT
from tools.chromium import chromium_path

pytestmark = pytest.mark.slow
BENCH = PROJECT_ROOT / "bench"


def run_bench(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.realdata
def test_bench_train_smoke(shared_data: Path):
    out = ok(run_bench("bench_train.py", str(shared_data / "hirise-v3_2-subset"), "--steps", "2", "--warmup", "1",
                       "--batch-size", "4", "--image-size", "64", "--workers", "0,2",
                       # the GPU section's code, run on the CPU (no GPU here): resident tiles, fit's optimizer
                       "--accel-device", "cpu", "--gpu-batch-size", "8", "--gpu-steps", "2"))
    assert "ratio (CPU)" in out and "OURS" in out and "BASELINE" in out and "workers=2" in out
    assert "OURS tiles resident on the device" in out and "ratio (GPU)" in out and "20 epochs over the full" in out
    assert "peak RSS" in out and "roofline" in out and "best ratio this CPU allows" in out


def test_bench_train_without_data_exits_2(tmp_path: Path):
    res = run_bench("bench_train.py", str(tmp_path / "absent"), "--steps", "1", "--warmup", "0")
    assert res.returncode == 2
    assert "not found" in res.stderr


@pytest.mark.parametrize("script, args, says", [
    ("bench_train.py", ["--steps", "0"], "--steps: 0 is below the minimum 1"),
    ("bench_train.py", ["--workers", "two"], "--workers: expected worker counts"),
    ("bench_eval.py", ["--batch-size", "x"], "--batch-size: 'x' is not a whole number"),
])
def test_bench_bad_arguments_get_a_usage_error(script, args, says):
    res = run_bench(script, *args)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr


@pytest.mark.realdata
def test_bench_eval_smoke(shared_data: Path):
    out = ok(run_bench("bench_eval.py", str(shared_data / "hirise-v3_2-subset"), "--repeats", "1",
                       "--max-tiles", "16", "--batch-size", "8", "--checkpoint", "random"))
    assert "ratio" in out and "OURS" in out and "BASELINE" in out


def test_bench_coldstart_smoke():
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"the Explain page needs the shipped checkpoint ({DEFAULT_CHECKPOINT})")
    out = ok(run_bench("bench_coldstart.py", "--repeats", "1", "--timeout", "90"))
    assert "ratio: EXPLAIN prediction, ONNX twin / torch engine" in out and "median" in out
