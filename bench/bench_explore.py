"""Cold and warm embedding map of real tiles (issue 16), against a plain feature pass measured in the same run.

    python bench/bench_explore.py [--data PATH ...] [--checkpoint F] [--size 0] [--method umap] [--max-tiles N]

Baseline: what a plain script does, the eager model (no trace, no cache)
over the same tiles, timed on the first `--baseline-tiles` tiles and given as tiles/s. Then:
- cold: `core.explore.embed` with empty caches (the feature pass, a frozen trace, plus the 2-D reduction);
- warm: the same call again (both read from the cache), which is what the Explore page pays on a revisit.
Goal (issue 16): every shared tile mapped in under 60 s cold, a few seconds warm. The share of the CPU that
other processes took meanwhile is printed: figures taken on a busy machine are to be re-measured.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import OtherLoad, real_data_missing

from core.checkpoint import load_checkpoint
from core.cliargs import at_least
from core.data import load_dataset
from core.explore.embed import DEFAULT_METHOD, METHODS, embed
from core.explore.features import resolve_size
from core.inference import model_input
from core.settings import SHARED_DATA_DIR

SOURCES = ("hirise-v3_2-subset", "hirise-v3-subset", "hirise-v3_2-extra-train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", help="data sources (default: the three shared ones)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--size", type=int, default=0, help="feature pass input px (0: the model's own)")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD)
    parser.add_argument("--max-tiles", type=at_least(10), default=None, help="map only the first N tiles")
    parser.add_argument("--baseline-tiles", type=at_least(8), default=256)
    args = parser.parse_args()
    paths = args.data or [str(SHARED_DATA_DIR / s) for s in SOURCES]
    if any(real_data_missing(p) for p in paths):
        sys.exit(2)
    data = load_dataset(paths, label_overrides=False)  # builds the tile caches on first use (not timed)
    loaded = load_checkpoint(args.checkpoint)
    size = resolve_size(loaded, args.size)
    records = data.records[:args.max_tiles] if args.max_tiles else data.records
    load = OtherLoad()
    load.start()

    # baseline: the eager model, no trace, no cache
    sample = records[:args.baseline_tiles]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(sample), 64):
            loaded.model(model_input(data.tiles(sample[start:start + 64]), loaded.mean, loaded.std, size,
                                     loaded.device))
    baseline = len(sample) / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cold = embed(loaded, data, args.method, size, records, Path(cache), on_progress=lambda *a: None)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = embed(loaded, data, args.method, size, records, Path(cache))
        warm_s = time.perf_counter() - t0
    other = load.stop()
    assert warm.from_cache and warm.features.from_cache
    n = len(records)
    feat_rate = n / cold.features.seconds
    print(f"tiles: {n:,} from {', '.join(Path(p).name for p in paths)}; {loaded.arch} features at {size}px "
          f"({cold.features.features.shape[1]}-d), {torch.get_num_threads()} threads")
    print(f"BASELINE eager feature pass   : {baseline:10.1f} tiles/s")
    print(f"OURS cold feature pass (frozen): {feat_rate:10.1f} tiles/s, "
          f"{cold.features.seconds:.1f} s")
    print(f"ratio (feature pass, ours / baseline): {feat_rate / baseline:.2f}x")
    print(f"cold 2-D reduction ({args.method:<5})    : {cold.seconds:10.1f} s")
    print(f"cold total                    : {cold_s:10.1f} s (goal < 60 s for every shared tile)")
    print(f"warm total (cached)           : {warm_s:10.2f} s ({cold_s / warm_s:.0f}x faster than cold)")
    if n < len(data.records):  # a rough guide: the reduction grows a little faster than linearly
        print(f"all {len(data.records):,} tiles cold, extrapolated linearly from these {n:,}: "
              f"{len(data.records) / feat_rate + cold.seconds * len(data.records) / n:.0f} s")
    print(f"other processes used {other:.0%} of the CPU meanwhile"
          + (": contended, re-measure on an idle machine" if other > 0.1 else ""))


if __name__ == "__main__":
    main()
