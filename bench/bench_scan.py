"""Scanning whole observations (issue 24): speed against a plain loop, peak memory on a large JPEG 2000, and the
Dask engine against this process, each measured in this one run on test observations built from real tiles.

    python bench/bench_scan.py [--data PATH] [--browse 2500x6000] [--baseline-windows 300]
                               [--jp2-side 20000] [--jp2-sizes 1024,2048] [--observations 8] [--sections 1,2,3]

1. A 2,500 x 6,000 browse image (real `other` tiles with real landmarks pasted at 96, 192 and 384 px), scanned with
   the default window sizes. BASELINE: a plain loop that cuts, resizes and classifies one window at a time (batch
   of 1), timed on the first --baseline-windows windows; OURS: core.scan (band reads, batches of 32). Goal: the
   whole image in under 5 minutes on this CPU.
2. A --jp2-side square JPEG 2000 (tiled, lossy, with resolution levels) scanned at full resolution in windows of
   --jp2-sizes, in a child process whose peak resident memory is read from the kernel. BASELINE: a child process
   that loads the model and reads the same file whole with rasterio (the plain way, before cutting windows); the
   libraries and the model alone are measured too. Goal: the scan under 1.5 GB.
3. --observations browse-size observations (908 x 1362) in one folder, scanned with windows of 192 and 384 px in
   this process and on a local Dask cluster of 2 worker processes (wall time of the whole command, cluster
   start-up and model loads included).
4. The same scan (a --engine-browse image, 96 px windows) on the default's verified ONNX twin and on torch (issue 30):
   windows/s each, and their ratio. Goal: ONNX >= 1.4x.
The share of the CPU other processes took meanwhile is printed: figures from a busy machine are to be re-measured.
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

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchlib import OtherLoad, real_data_missing  # noqa: E402 - bench/benchlib.py

from core.checkpoint import load_checkpoint  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.inference import predict_proba  # noqa: E402
from core.scan.raster import ArrayRaster  # noqa: E402
from core.scan.scanner import DEFAULT_SIZES, scan  # noqa: E402
from core.settings import SHARED_DATA_DIR  # noqa: E402
from core.tiling import Windows  # noqa: E402
from tools import observation  # noqa: E402

TILE = 227


def browse_observation(data, loaded, width: int, height: int) -> np.ndarray:
    """`other` tiles to width x height, real landmarks pasted at 96, 192 and 384 px."""
    names = list(loaded.class_names)
    landmarks = observation.landmarks_called_right(loaded, data, {"crater": 4, "dark dune": 2, "bright dune": 2,
                                                                  "slope streak": 2, "spider": 1})
    canvas, _ = observation.build(data, [], names, rows=-(-height // TILE), cols=-(-width // TILE), seed=1,
                                  split="train")
    canvas = np.ascontiguousarray(canvas[:height, :width])
    rng = np.random.default_rng(0)
    for i, rec in enumerate(landmarks):
        size = (96, 192, 384)[i % 3]
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        canvas[y:y + size, x:x + size] = np.asarray(Image.fromarray(data.tiles([rec])[0]).resize((size, size)))
    return canvas


def plain_loop(loaded, gray: np.ndarray, boxes: np.ndarray) -> None:
    for x0, y0, x1, y1 in boxes:
        tile = np.asarray(Image.fromarray(gray[y0:y1, x0:x1]).resize((TILE, TILE), Image.BILINEAR))
        predict_proba(loaded, tile[None], batch_size=1)


CHILD_CPU_S = 0.0  # CPU seconds of the finished children measured here: OtherLoad no longer sees them as ours


def child_peak(cmd: list[str]) -> tuple[float, float, int]:
    """(peak RSS in GiB, wall seconds, exit code) of a command run as a child of a fresh helper process, so the
    kernel's maximum covers that command alone."""
    global CHILD_CPU_S
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             f"rc = subprocess.run({cmd!r}, stdout=subprocess.DEVNULL).returncode; "
             "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(u.ru_maxrss, time.perf_counter() - t, rc, u.ru_utime + u.ru_stime)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CHILD_CPU_S += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return int(out[0]) / 2**20, float(out[1]), int(out[2])


def other_share(load: OtherLoad, child_cpu_before: float) -> float:
    """The share of the CPU other processes took, the finished children's CPU time counted as this run's."""
    share = load.stop()
    capacity = (time.perf_counter() - load.t) * (os.cpu_count() or 1)
    return max(0.0, share - (CHILD_CPU_S - child_cpu_before) / max(capacity, 1e-9))


def section_browse(args, data, loaded) -> None:
    width, height = args.browse
    gray = browse_observation(data, loaded, width, height)
    windows = Windows(gray, DEFAULT_SIZES[0], DEFAULT_SIZES[0] // 2)
    n = min(args.baseline_windows, len(windows))
    warm = windows[:32]  # both paths' one-time costs (the first batch of each shape) before any clock starts
    predict_proba(loaded, warm, batch_size=32)
    predict_proba(loaded, warm[:1], batch_size=1)
    load = OtherLoad()
    load.start()
    t0 = time.perf_counter()
    plain_loop(loaded, gray, windows.boxes[:n])
    base = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    [ours_small] = scan([ArrayRaster(gray)], loaded, sizes=(DEFAULT_SIZES[0],), on_progress=lambda *_: None)
    ours_small_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    [result] = scan([ArrayRaster(gray)], loaded, on_progress=lambda *_: None)
    whole = time.perf_counter() - t0
    total = sum(len(g.rows) * len(g.cols) for g in result.grids)
    small = len(ours_small.grids[0].rows) * len(ours_small.grids[0].cols)
    other = load.stop()
    print(f"== 1. browse image {width}x{height}, windows {','.join(map(str, DEFAULT_SIZES))} px")
    print(f"BASELINE plain loop, one window at a time: {base:,.1f} windows/s (first {n} windows of "
          f"{DEFAULT_SIZES[0]} px)")
    print(f"OURS core.scan, {DEFAULT_SIZES[0]} px windows only: {small / ours_small_s:,.1f} windows/s "
          f"({small:,} windows)")
    print(f"ratio (OURS / BASELINE, {DEFAULT_SIZES[0]} px windows): {small / ours_small_s / base:.2f}x")
    print(f"OURS whole scan: {total:,} windows in {whole:,.1f} s ({total / whole:,.1f} windows/s), "
          f"{len(result.detections)} detections; goal < 300 s: {'met' if whole < 300 else 'NOT met'}")
    print(f"other processes took {other:.0%} of the CPU meanwhile")


def section_jp2(args, data, loaded, work: Path) -> None:
    side = args.jp2_side
    path = work / f"obs{side}.jp2"
    t0 = time.perf_counter()
    tile_canvas, _ = observation.build(data, [], list(loaded.class_names), rows=10, cols=10, seed=2, split="train")
    reps = -(-side // tile_canvas.shape[0])
    big = np.tile(tile_canvas, (reps, reps))[:side, :side]
    observation.write_jp2(path, big, block=1024)
    del big
    print(f"== 2. JPEG 2000 {side:,} x {side:,} px ({path.stat().st_size / 2**20:,.0f} MiB, tiled 1024, lossy), "
          f"written in {time.perf_counter() - t0:,.0f} s")
    load, cpu0 = OtherLoad(), CHILD_CPU_S
    load.start()
    # the plain way: the model loaded, the whole image decoded into memory (then cut into windows)
    read_whole = ("import core.scan.scanner, core.checkpoint as c, rasterio; m = c.load_checkpoint(); "
                  f"a = rasterio.open({str(path)!r}).read(1); print(a.shape)")
    base_gib, base_s, _ = child_peak([sys.executable, "-c", read_whole])
    libs_gib, _, _ = child_peak([sys.executable, "-c", "import core.scan.scanner, core.checkpoint as c; c.load_checkpoint()"])
    out = work / "jp2-out"
    ours_gib, ours_s, rc = child_peak([sys.executable, "-m", "core.scan", str(path), "--out", str(out), "--sizes",
                                       args.jp2_sizes])
    other = other_share(load, cpu0)
    print(f"the libraries and the model alone: peak {libs_gib:.2f} GiB")
    print(f"BASELINE model loaded, image read whole by rasterio: peak {base_gib:.2f} GiB in {base_s:,.0f} s")
    print(f"OURS core.scan at full resolution, windows {args.jp2_sizes} px: peak {ours_gib:.2f} GiB in "
          f"{ours_s:,.0f} s (exit {rc})")
    print(f"ratio (BASELINE / OURS peak memory): {base_gib / max(ours_gib, 1e-9):.2f}x; goal < 1.5 GB: "
          f"{'met' if ours_gib * 2**30 < 1.5e9 else 'NOT met'}")
    print(f"other processes took {other:.0%} of the CPU meanwhile")


def section_engine(args, data, loaded, work: Path) -> None:
    folder = work / "observations"
    folder.mkdir()
    names = list(loaded.class_names)
    landmarks = observation.landmarks_called_right(loaded, data, {"crater": 2, "dark dune": 1, "slope streak": 1})
    for i in range(args.observations):
        canvas, _ = observation.build(data, landmarks, names, seed=100 + i)
        Image.fromarray(canvas).save(folder / f"obs{i}.jpg", quality=95)
    h, w = canvas.shape
    per = sum(len(Windows(np.zeros((h, w), np.uint8), s, s // 2)) for s in (192, 384))
    total = per * args.observations
    load, cpu0 = OtherLoad(), CHILD_CPU_S
    load.start()
    cmd = [sys.executable, "-m", "core.scan", str(folder), "--sizes", "192,384"]
    _, here_s, rc1 = child_peak([*cmd, "--out", str(work / "here")])
    _, dask_s, rc2 = child_peak([*cmd, "--out", str(work / "dask"), "--cluster", "--workers", "2"])
    other = other_share(load, cpu0)
    same = (work / "here" / "detections.csv").read_text() == (work / "dask" / "detections.csv").read_text()
    print(f"== 3. {args.observations} observations of {w}x{h} px, windows 192,384 px: {total:,} windows")
    print(f"BASELINE in this process: {here_s:,.1f} s, {total / here_s:,.1f} windows/s (exit {rc1})")
    print(f"OURS local Dask cluster, 2 workers: {dask_s:,.1f} s, {total / dask_s:,.1f} windows/s (exit {rc2}); "
          f"same detections.csv: {same}")
    print(f"ratio (Dask / in-process windows/s): {here_s / dask_s:.2f}x (start-up and model loads included)")
    if args.ray_path:  # Ray core (an actor per worker, the model loaded once in each), for the choice of engine
        env_path = f"{args.ray_path}{os.pathsep}{ROOT}"
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, str(Path(__file__)), "--ray-child", str(folder)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": env_path}, capture_output=True, text=True)
        ray_s = time.perf_counter() - t0
        print(f"Ray core, 2 actors: {ray_s:,.1f} s, {total / ray_s:,.1f} windows/s (exit {res.returncode}"
              f"{'' if res.returncode == 0 else ': ' + res.stderr.strip().splitlines()[-1][:200]}); ratio (Ray / "
              f"in-process windows/s): {here_s / ray_s:.2f}x")
    print(f"other processes took {other:.0%} of the CPU meanwhile")


def ray_child(folder: Path) -> None:
    """Section 3's observations classified on Ray core: two actors, each loading the model once."""
    import ray
    import ray.util

    from core.scan import scanner as scanning

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Worker:
        def run(self, chunk):
            return scanning.worker_task(chunk, None)

    chunks = []
    for i, path in enumerate(sorted(folder.glob("*.jpg"))):
        source = scanning.Source(str(path))
        with source.open() as raster:
            chunks += scanning.chunks_of(source, i, scanning.plan(raster, (192, 384)))
    pool = ray.util.ActorPool([Worker.remote() for _ in range(2)])
    print(sum(len(p) for p, _ in pool.map(lambda actor, chunk: actor.run.remote(chunk), chunks)))
    ray.shutdown()


def _shape(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def section_engines(args, data, loaded) -> None:
    """4. The same scan on each engine (issue 30): the default's verified ONNX twin against torch (frozen trace)."""
    if loaded.onnx is None:
        print(f"== 4. engines: skipped ({loaded.engine_note})")
        return
    torch_only = load_checkpoint(loaded.path, engine="torch")
    width, height = args.engine_browse
    gray = browse_observation(data, loaded, width, height)
    rates = {}
    load = OtherLoad()
    load.start()
    for name, model in (("torch (frozen trace)", torch_only), ("ONNX Runtime", loaded)):
        scan([ArrayRaster(gray[:400, :400])], model, sizes=(DEFAULT_SIZES[0],), on_progress=lambda *_: None)  # warm
        t0 = time.perf_counter()
        [result] = scan([ArrayRaster(gray)], model, sizes=(DEFAULT_SIZES[0],), on_progress=lambda *_: None)
        n = len(result.grids[0].rows) * len(result.grids[0].cols)
        rates[name] = n / (time.perf_counter() - t0)
    other = load.stop()
    print(f"== 4. engines, {width}x{height} browse image, {DEFAULT_SIZES[0]} px windows ({n:,}):")
    for name, rate in rates.items():
        print(f"{name}: {rate:,.1f} windows/s")
    ratio = rates["ONNX Runtime"] / rates["torch (frozen trace)"]
    print(f"ratio (ONNX / torch): {ratio:.2f}x; goal >= 1.4x: {'met' if ratio >= 1.4 else 'NOT met'}")
    print(f"other processes took {other:.0%} of the CPU meanwhile")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA_DIR / "hirise-v3_2-subset"))
    parser.add_argument("--browse", type=_shape, default=(2500, 6000), help="width x height of section 1's image")
    parser.add_argument("--baseline-windows", type=int, default=300)
    parser.add_argument("--jp2-side", type=int, default=20_000)
    parser.add_argument("--jp2-sizes", default="1024,2048")
    parser.add_argument("--observations", type=int, default=8)
    parser.add_argument("--sections", default="1,2,3,4")
    parser.add_argument("--engine-browse", type=_shape, default=(1500, 2000), help="width x height of section 4's image")
    parser.add_argument("--ray-path", help="a folder holding Ray (pip install --target DIR ray): section 3 also "
                                           "runs on Ray core, to compare the engines")
    parser.add_argument("--ray-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_child:
        ray_child(args.ray_child)
        return 0
    if real_data_missing(args.data):
        return 2
    import torch

    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")
    loaded = load_checkpoint()
    data = load_dataset([Path(args.data)], label_overrides=False)
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        work = Path(tmp)
        if "1" in args.sections:
            section_browse(args, data, loaded)
        if "2" in args.sections:
            section_jp2(args, data, loaded, work)
        if "3" in args.sections:
            section_engine(args, data, loaded, work)
        if "4" in args.sections:
            section_engines(args, data, loaded)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
