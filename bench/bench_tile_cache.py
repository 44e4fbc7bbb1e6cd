"""Tiles/s of one epoch read from the decoded-tile cache vs decoding the JPEGs, measured in one run.

    python bench/bench_tile_cache.py [DATA_PATH] [--epochs 3]

The baseline is what a plain loader does every epoch: read each JPEG and decode it with PIL into a
uint8 tensor. The cache path reads the same tiles from the memory-mapped array as uint8 tensors.
Goal: at least 10x.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.cliargs import at_least
from core.data import load_dataset
from core.settings import SHARED_DATA_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(SHARED_DATA_DIR / "hirise-v3_2-subset"))
    parser.add_argument("--epochs", type=at_least(1), default=3)
    args = parser.parse_args()
    data = load_dataset([args.data])  # builds the cache on first use (not timed)
    records = data.select("all")
    source = {s.name: s for s in data.sources}
    paths = [(source[r.source].storage, r.path) for r in records]
    cache = data.caches[records[0].source]
    rows = cache.rows([r.path for r in records])

    def decode_epoch() -> int:
        total = 0
        for storage, rel in paths:
            with Image.open(io.BytesIO(storage.read(rel))) as img:
                t = torch.from_numpy(np.array(img.convert("L"), dtype=np.uint8))
            total += int(t.shape[0])
        return len(paths)

    def cache_epoch() -> int:
        total = 0
        for start in range(0, len(rows), 256):  # a batch of 256 at a time, like a loader would
            t = torch.from_numpy(np.ascontiguousarray(cache.tiles[np.sort(rows[start:start + 256])]))
            total += int(t.shape[0])
        return total

    def timed(fn) -> float:
        best = 0.0
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            n = fn()
            best = max(best, n / (time.perf_counter() - t0))
        return best

    decode = timed(decode_epoch)
    cached = timed(cache_epoch)
    print(f"tiles: {len(records)} from {args.data}")
    print(f"JPEG decode (PIL) per epoch : {decode:12,.0f} tiles/s")
    print(f"decoded-tile cache per epoch: {cached:12,.0f} tiles/s")
    print(f"ratio: {cached / decode:.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
