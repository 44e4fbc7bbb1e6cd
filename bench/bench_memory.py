"""Memory: (a) peak RSS of a training process, (b) the app side's RSS over a long session of predictions and CAMs.

    python bench/bench_memory.py [DATA_PATH] [--train-steps 20] [--batch-size 32] [--image-size 224]
                                 [--calls 300] [--plus-calls 30] [--scorecam-calls 10] [--every 50]
                                 [--checkpoint auto|random|PATH] [--skip-train] [--skip-app]

(a) runs `python -m core.train` as a subprocess on the real tiles (resnet18, 1 epoch capped at
`--train-steps` steps, then its validation, calibration and evaluation, as a real run does) into a
temporary run folder (HIRISE_RUNS_DIR; the tile cache stays where HIRISE_CACHE_DIR says, so it is
reused), polling /proc/PID/status (VmRSS, VmHWM) every 0.2 s. Reference: the peak RSS of a process
that only imports core.train (what torch and the libraries cost before any data or model).

(b) in this process: load the model (the shipped checkpoint when present, else a resnet18 at
224 px with random weights saved and loaded through core.checkpoint), then `--calls` predictions
(`core.predict.predict_bytes` on real JPEG bytes), `--calls` Grad-CAMs, `--plus-calls` Grad-CAM++
and `--scorecam-calls` ScoreCAMs (`core.explain.explain`, faithfulness on, as the Explain page
calls it), recording VmRSS every `--every` calls and at the first and last call of each kind. Baseline: the RSS right after loading the model.
Goal: flat: no phase of repeated calls grows by more than `--tolerance-mb` MiB. The growth from call
`--every` to the end is printed too: it holds each new method's one-time first-call buffers.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchlib import real_data_missing  # noqa: E402 - bench/benchlib.py, next to this script

from core.cliargs import at_least  # noqa: E402
from core.settings import DEFAULT_CHECKPOINT, SHARED_DATA_DIR  # noqa: E402

POLL_S = 0.2


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process in MiB; {} once it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        return {}
    return out


def child_peak(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float, list[tuple[float, float]]]:
    """Run cmd; (exit code, peak VmHWM seen by polling, peak from getrusage, [(seconds, VmRSS MiB)])."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    series: list[tuple[float, float]] = []
    hwm = 0.0
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            s = proc_status(proc.pid)
            if s:
                series.append((time.perf_counter() - start, s["VmRSS"]))
                hwm = max(hwm, s["VmHWM"])
            time.sleep(POLL_S)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of all waited-for children: exact only if this one is the largest
    return proc.returncode, hwm, (after / 1024 if after > before else 0.0), series


def train_memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "HIRISE_RUNS_DIR": str(tmp / "runs"), "PYTHONUNBUFFERED": "1"}
        _, ref_hwm, ref_rusage, _ = child_peak([sys.executable, "-c", "import core.training.engine"], env, tmp / "ref.log")
        ref = max(ref_hwm, ref_rusage)
        cmd = [sys.executable, "-m", "core.train", "run", "--data", args.data, "--run-dir", str(tmp / "runs" / "bench"),
               "--model", "resnet18", "--init", "scratch", "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
               "--epochs", "1", "--max-steps-per-epoch", str(args.train_steps)]
        t0 = time.perf_counter()
        code, hwm, rusage, series = child_peak(cmd, env, tmp / "train.log")
        peak = max(hwm, rusage)  # polling can miss the last 0.2 s; getrusage cannot (when it is the largest child)
        seconds = time.perf_counter() - t0
        print(f"(a) training process: python -m core.train, resnet18 at {args.image_size}px, batch {args.batch_size}, "
              f"1 epoch of {args.train_steps} steps + validation/calibration/evaluation; {seconds:.0f} s, exit {code}")
        if code != 0:
            print((tmp / "train.log").read_text()[-3000:])
            raise SystemExit(f"error: the training subprocess failed (exit {code})")
        step = max(1, len(series) // 12)
        print("    RSS over time: " + ", ".join(f"{t:.0f}s {r:,.0f}" for t, r in series[::step]) + " MiB")
        print(f"    peak RSS: {peak:,.0f} MiB (VmHWM polled {hwm:,.0f}, getrusage {rusage:,.0f})")
        print(f"    reference: a process that only imports core.train peaks at {ref:,.0f} MiB; training adds "
              f"{peak - ref:,.0f} MiB (ratio {peak / ref:.2f}x)\n", flush=True)


def real_jpegs(data: Path, n: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    step = max(1, len(files) // n)  # spread over the set
    return [(p.name, p.read_bytes()) for p in files[::step][:n]]


def app_memory(args: argparse.Namespace) -> None:
    import torch

    from core.checkpoint import checkpoint_payload, load_checkpoint
    from core.checkpoint_file import save_checkpoint
    from core.classes import NUM_CLASSES
    from core.explain import explain
    from core.models import build_model
    from core.predict import predict_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    images = real_jpegs(Path(args.data), 64)
    start_rss = proc_status()["VmRSS"]
    choice = args.checkpoint
    if choice == "auto":
        choice = str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.is_file() else "random"
    if choice == "random":
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            payload = checkpoint_payload(build_model("resnet18", NUM_CLASSES), arch="resnet18", image_size=224,
                                         mean=0.4, std=0.2, config={})
            loaded = load_checkpoint(save_checkpoint(Path(tmp) / "random.pt", payload))
        which = "resnet18 at 224px with random weights"
    else:
        loaded = load_checkpoint(choice)
        which = f"{loaded.arch} at {loaded.image_size}px from {choice}"
    base = proc_status()["VmRSS"]
    print(f"(b) app session in one process: {which}; {len(images)} distinct real tiles, cycled")
    print(f"    RSS before loading {start_rss:,.0f} MiB; after loading the model (baseline) {base:,.0f} MiB",
          flush=True)

    plan = ([("predict", None)] * args.calls + [("gradcam", "gradcam")] * args.calls +
            [("gradcam++", "gradcam++")] * args.plus_calls + [("scorecam", "scorecam")] * args.scorecam_calls)
    tiles: dict[int, object] = {}
    series: list[tuple[int, str, float]] = []
    phase_end: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, (kind, method) in enumerate(plan, 1):
        j = i % len(images)
        if method is None:
            pred = predict_bytes(loaded, images[j][1], images[j][0])
            tiles.setdefault(j, pred.tile)
        else:
            tile = tiles.get(j)
            if tile is None:
                tile = tiles[j] = predict_bytes(loaded, images[j][1], images[j][0]).tile
            explain(loaded, tile, method)
        last_of_phase = i == len(plan) or plan[i][0] != kind
        first_of_phase = i == 1 or plan[i - 2][0] != kind
        if i % args.every == 0 or last_of_phase or first_of_phase:
            series.append((i, kind, proc_status()["VmRSS"]))
        if last_of_phase:
            phase_end[kind] = series[-1][2]
    seconds = time.perf_counter() - t0
    peak = proc_status()["VmHWM"]

    print(f"    {len(plan)} calls in {seconds:.0f} s; RSS (MiB) after call:")
    for i, kind, rss in series:
        print(f"      {i:>5}  {kind:<10}{rss:>9,.1f}")
    first = next((rss for i, _, rss in series if i >= args.every), series[0][2])
    growth = series[-1][2] - first
    within = {}  # growth inside each phase, from its first record to its last: what a leak would show
    for kind in phase_end:
        values = [rss for _, k, rss in series if k == kind]
        within[kind] = values[-1] - values[0]
    print("    growth per phase (end of phase vs the previous phase's end): " + ", ".join(
        f"{k} {v - p:+.1f}" for (k, v), p in zip(phase_end.items(), [base, *phase_end.values()], strict=False)) + " MiB")
    print("    growth within each phase (its first record to its last): " + ", ".join(
        f"{k} {v:+.1f}" for k, v in within.items()) + " MiB")
    print(f"    peak RSS (VmHWM) {peak:,.0f} MiB; baseline after model load {base:,.0f} MiB; peak - baseline "
          f"{peak - base:,.0f} MiB (ratio {peak / base:.2f}x)")
    # A leak is growth while the same call repeats; memory handed back (a negative change) is not one.
    leaking = [k for k, v in within.items() if v > args.tolerance_mb]
    print(f"    repeated calls: {'no' if not leaking else ', '.join(leaking)} phase grows by more than "
          f"{args.tolerance_mb:.0f} MiB (goal: flat: {'met' if not leaking else 'MISSED - look for a leak'})")
    print(f"    from call {args.every} to the end: {growth:+.1f} MiB, the one-time buffers of each method's first "
          "call (the Explain page runs one Grad-CAM when it loads a model)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(SHARED_DATA_DIR / "hirise-v3_2-subset"))
    parser.add_argument("--train-steps", type=at_least(1), default=20)
    parser.add_argument("--batch-size", type=at_least(1), default=32)
    parser.add_argument("--image-size", type=at_least(32), default=224)
    parser.add_argument("--calls", type=at_least(1), default=300, help="predictions, and Grad-CAMs")
    parser.add_argument("--plus-calls", type=at_least(1), default=30, help="Grad-CAM++ calls")
    parser.add_argument("--scorecam-calls", type=at_least(1), default=10)
    parser.add_argument("--every", type=at_least(1), default=50, help="record RSS every N calls")
    parser.add_argument("--tolerance-mb", type=float, default=5.0)
    parser.add_argument("--checkpoint", default="auto", help="auto (shipped if present), random, or a path")
    parser.add_argument("--threads", type=at_least(1), help="torch.set_num_threads in (b)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-app", action="store_true")
    args = parser.parse_args()
    if real_data_missing(args.data):
        return 2
    print(f"bench_memory: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, data {args.data}\n",
          flush=True)
    if not args.skip_train:
        train_memory(args)
    if not args.skip_app:
        app_memory(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
