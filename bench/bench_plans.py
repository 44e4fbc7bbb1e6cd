"""A cross-validation's wall time: its folds on a local Dask cluster against the same folds in this process.

    python bench/bench_plans.py [DATA_PATH] [--folds 3] [--workers 2] [--model tf_efficientnet_lite0]
                                [--image-size 96] [--epochs 1] [--max-steps 10]

BASELINE is `python -m core.train cv K` as it runs by default: the folds one after another in one process, torch
on every core. OURS is the same command with `--cluster local --workers N`: the folds side by side on N worker
processes (the cores shared between them), through the same manifest and training code. Both train the same
recipe on the same folds into fresh run folders (a temporary folder); each is timed from the command's start to its
report. On a 2-core machine no gain is expected (torch already uses both cores for one fold); the point is that the
same code runs on a real cluster, where each worker is a machine.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import OtherLoad, real_data_missing

from core.cliargs import at_least
from core.settings import SHARED_DATA_DIR


def timed_cv(argv: list[str]) -> float:
    from core.training.runner import main as train_cli
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = train_cli(argv)
    if code != 0:
        raise SystemExit(f"error: the cross-validation failed (exit {code}):\n{out.getvalue()[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", default=str(SHARED_DATA_DIR / "hirise-v3_2-subset"))
    parser.add_argument("--folds", type=at_least(3), default=3)
    parser.add_argument("--workers", type=at_least(1), default=2)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=at_least(32), default=96)
    parser.add_argument("--epochs", type=at_least(1), default=1)
    parser.add_argument("--max-steps", type=at_least(1), default=10)
    args = parser.parse_args()
    if real_data_missing(args.data):
        return 2
    recipe = ["--data", args.data, "--model", args.model, "--init", "scratch" if args.model == "simple_cnn" else
              "imagenet", "--image-size", str(args.image_size), "--epochs",
              str(args.epochs), "--max-steps-per-epoch", str(args.max_steps), "--batch-size", "32"]
    print(f"{args.folds}-fold cross-validation of {args.model} at {args.image_size} px, {args.epochs} epoch(s) of "
          f"{args.max_steps} steps, on {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        load = OtherLoad()
        load.start()
        base = timed_cv(["cv", str(args.folds), *recipe, "--runs-dir", str(Path(tmp) / "here")])
        print(f"BASELINE in this process, one fold after another: {base:7.1f} s")
        ours = timed_cv(["cv", str(args.folds), *recipe, "--cluster", "local", "--workers", str(args.workers),
                         "--runs-dir", str(Path(tmp) / "cluster")])
        print(f"OURS     local Dask cluster of {args.workers} workers:    {ours:7.1f} s")
        print(f"ratio (BASELINE / OURS, above 1 is faster): {base / ours:.2f}  (others used {load.stop():.0%} of "
              "the CPU meanwhile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
