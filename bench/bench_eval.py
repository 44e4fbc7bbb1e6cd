"""Evaluation images/s over a split's original tiles: `core.evaluate.predict_logits` against a plain loop.

    python bench/bench_eval.py [DATA_PATH] [--split val] [--checkpoint auto|random|PATH] [--repeats 3]
                               [--batch-size 64] [--max-tiles N] [--threads N]

OURS reads the split's tiles from the decoded-tile cache (`HiriseData.tiles`, uint8, in memory)
and runs `predict_logits` with a `LoadedModel` (the one-channel-stem model from
`load_checkpoint`). BASELINE is the plain loop: open and PIL-decode each JPEG, torchvision
transforms (RGB, Resize, ToTensor, Normalize), `torchvision.models.resnet18` (three-channel stem)
in fp32, eager, batches of 64 under `torch.inference_mode()`. Both work at the model's input size
and both timings include reading the tiles. The checkpoint is the shipped one when it exists
(`--checkpoint auto`), else a resnet18 at 224 px with random weights saved and loaded through
`checkpoint_payload` / `save_checkpoint` / `load_checkpoint` (`--checkpoint random` forces it):
speed does not depend on the weights' values. Each path runs `--repeats` passes after one warm-up
pass; the best pass counts ("others": the share of the CPU other processes used meanwhile).
`OURS --bf16` is the opt-in bf16 autocast of `predict_logits` / `evaluate --bf16` (measured where the device
runs bf16 natively), with how many predictions it changes. The variant shows a contiguous (NCHW) model
against the channels-last one `load_checkpoint` gives.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision import transforms as T
from torchvision.datasets.folder import default_loader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import OtherLoad, real_data_missing

from core.checkpoint import LoadedModel, checkpoint_payload, load_checkpoint
from core.checkpoint_file import save_checkpoint
from core.classes import NUM_CLASSES
from core.cliargs import at_least
from core.data import load_dataset
from core.data.storage import FolderStorage
from core.evaluate import EVALUATION_SPLITS
from core.inference import predict_logits
from core.models import build_model
from core.precision import bf16_native
from core.settings import DEFAULT_CHECKPOINT, SHARED_DATA_DIR

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def quiet(*_: object) -> None:
    """An on_progress callback that draws nothing (no tqdm bars in the figures)."""


BUSY = 0.10  # other processes above this share of the CPU make a figure unreliable
busy_rows: list[str] = []


def best_rate(fn: Callable[[], int], repeats: int) -> tuple[float, float]:
    """(tiles/s of the fastest of `repeats` passes after one warm-up pass, others' CPU share meanwhile)."""
    fn()
    best = 0.0
    load = OtherLoad()
    load.start()
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best, load.stop()


def show(name: str, rate: float, others: float, base: float | None = None) -> None:
    if others > BUSY:
        busy_rows.append(name.strip())
    extra = f"  ({rate / base:.2f}x baseline)" if base else ""
    print(f"{name:<62}{rate:>9.1f} img/s   others {others:>4.0%}{extra}", flush=True)


def get_model(choice: str, data, tmp: Path) -> tuple[LoadedModel, str]:
    if choice == "auto":
        choice = str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.is_file() else "random"
    if choice != "random":
        loaded = load_checkpoint(choice)
        return loaded, f"checkpoint {choice}"
    torch.manual_seed(0)
    mean, std = data.pixel_stats()
    payload = checkpoint_payload(build_model("resnet18", NUM_CLASSES), arch="resnet18", image_size=224, mean=mean,
                                 std=std, config={})
    path = save_checkpoint(tmp / "random-resnet18.pt", payload)
    return load_checkpoint(path), "resnet18 with random weights (saved and loaded through core.checkpoint)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(SHARED_DATA_DIR / "hirise-v3_2-subset"))
    parser.add_argument("--split", default="val", choices=EVALUATION_SPLITS)
    parser.add_argument("--checkpoint", default="auto", help="auto (shipped if present), random, or a path")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="timed passes over the split per path")
    parser.add_argument("--batch-size", type=at_least(1), default=64)
    parser.add_argument("--max-tiles", type=at_least(0), default=0, help="use only the first N tiles (0: all)")
    parser.add_argument("--threads", type=at_least(1), help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-variants", action="store_true", help="skip the contiguous-format variant")
    args = parser.parse_args()

    if real_data_missing(args.data):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset([args.data], on_progress=quiet)  # builds the tile cache on first use (not timed)
    records = data.select(args.split, originals_only=True)
    if args.max_tiles:
        records = records[:args.max_tiles]
    if not records:
        print(f"error: the {args.split} split has no original tiles", file=sys.stderr)
        return 2
    storage = {s.name: s.storage for s in data.sources}
    if not all(isinstance(storage[r.source], FolderStorage) for r in records):
        print("error: the baseline reads JPEG files from a folder, not a zip", file=sys.stderr)
        return 2
    files = [str(storage[r.source]._path(r.path)) for r in records]

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        loaded, which = get_model(args.checkpoint, data, Path(tmp))
    size = loaded.image_size
    print(f"bench_eval: {len(records)} original tiles of the {args.split} split ({data.split_method}) from {args.data}")
    print(f"model: {loaded.arch} at {size}px, {which}")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; best of {args.repeats} passes after 1 warm-up, batch "
          f"{args.batch_size}\n", flush=True)

    def ours() -> int:
        tiles = data.tiles(records)
        return len(predict_logits(loaded, tiles, batch_size=args.batch_size, on_progress=quiet))

    base_model = torchvision.models.resnet18(num_classes=NUM_CLASSES).eval()
    transform = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    @torch.inference_mode()
    def baseline() -> int:
        n = 0
        for start in range(0, len(files), args.batch_size):
            x = torch.stack([transform(default_loader(f)) for f in files[start:start + args.batch_size]])
            n += len(base_model(x))
        return n

    r_ours, others = best_rate(ours, args.repeats)
    show("OURS predict_logits on cached tiles (1-ch stem, fp32, channels-last)", r_ours, others)
    r_base, others = best_rate(baseline, args.repeats)
    show("BASELINE PIL decode + transforms + torchvision resnet18 fp32", r_base, others)

    r_bf16 = None
    if bf16_native(loaded.device):
        def ours_bf16() -> int:
            return len(predict_logits(loaded, data.tiles(records), batch_size=args.batch_size, on_progress=quiet,
                                      bf16=True))
        r_bf16, others = best_rate(ours_bf16, args.repeats)
        show("OURS --bf16 (bf16 autocast, opt-in)", r_bf16, others, r_base)
        tiles = data.tiles(records)
        fp32 = predict_logits(loaded, tiles, batch_size=args.batch_size, on_progress=quiet).argmax(1)
        bf16 = predict_logits(loaded, tiles, batch_size=args.batch_size, on_progress=quiet, bf16=True).argmax(1)
        print(f"  bf16 and fp32 agree on {np.mean(fp32 == bf16):.2%} of the {len(tiles)} predictions")
    else:
        print("OURS --bf16: not measured (no native bf16 on this device; --bf16 runs fp32 here)")

    if not args.no_variants:
        # not what core does: load_checkpoint gives a channels-last model
        loaded.model.to(memory_format=torch.contiguous_format)
        show("  variant: contiguous (NCHW) model, fp32", *best_rate(ours, args.repeats), r_base)
        loaded.model.to(memory_format=torch.channels_last)

    check = np.isfinite(predict_logits(loaded, data.tiles(records[:8]), on_progress=quiet)).all()
    if busy_rows:
        print(f"\nWARNING: other processes used more than {BUSY:.0%} of the CPU during: {'; '.join(busy_rows)}. "
              "Those figures are not reliable: rerun on an idle machine.")
    print(f"\nratio: OURS / BASELINE = {r_ours:.1f} / {r_base:.1f} img/s = {r_ours / r_base:.2f}x"
          f"{'' if check else ' (WARNING: non-finite logits)'}")
    if r_bf16:
        print(f"ratio with --bf16: {r_bf16:.1f} / {r_base:.1f} img/s = {r_bf16 / r_base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
