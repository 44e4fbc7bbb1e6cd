"""Training images/s end to end (data + augmentation + forward + backward + step): the project's path
against a plain torchvision pipeline, measured in one run on the real tiles.

    python bench/bench_train.py [DATA_PATH] [--batch-size 32] [--image-size 224] [--steps 10] [--warmup 3]
                                [--workers 0,2] [--threads N] [--variants] [--gpu-batch-size 256] [--compile]

OURS is what `core.training.engine.fit` runs: the split's original training tiles held in memory as uint8
(`TileDataset`, read once from the decoded-tile cache), batches gathered from them in place
(`DeviceBatches`, via `core.training.batches.train_batches`), online flips / 90-degree turns /
brightness-contrast jitter on whole batches (`BatchAugment`),
`to_model_input` (227 -> 224 px, standardised), channels-last, bf16 autocast where the device
has it (`core.precision.autocast`), AdamW, and the one-channel-stem resnet18 of `build_model`.

BASELINE is a plain torchvision pipeline over the same tiles: an ImageFolder-style Dataset that
opens each JPEG file every epoch with PIL and converts it to RGB (torchvision's default loader),
RandomHorizontalFlip, RandomVerticalFlip, Resize(224), ToTensor, Normalize, a DataLoader (every
`--workers` count is measured and the fastest is the baseline), `torchvision.models.resnet18`
(three-channel stem) in eager fp32, the same AdamW and batch size.

Both warm up `--warmup` steps, then `--steps` steps are timed; images/s = steps x batch / seconds.
Column `others`: the share of the machine's CPU other processes used meanwhile (from /proc; a
warning is printed above 10%: on 2 cores any other busy process halves a figure).
Goal on a 2-core CPU: OURS >= 3x the baseline. The roofline lines say what the CPU allows at all:
FLOPs per image (torch's FLOP counter) against the CPU's measured fp32 and bf16 matmul peaks.
`--variants` adds the measurements that say where OURS's time goes (fp32, no channels-last,
1 thread, batch 64, ...). With a CUDA device, the GPU path (tiles resident on the GPU, a bigger
batch, fused AdamW, optional torch.compile) is measured against the same baseline on the GPU.
Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T
from torchvision.datasets.folder import default_loader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import OtherLoad, real_data_missing

from core.classes import NUM_CLASSES
from core.cliargs import at_least
from core.data.storage import FolderStorage
from core.models import build_model
from core.precision import cpu_has_bf16
from core.preprocess import to_model_input
from core.settings import SHARED_DATA_DIR
from core.training.batches import TrainData, prepare_data, train_batches
from core.training.config import RunConfig
from core.training.engine import optimizer_step
from core.training.optim import build_optimizer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LR, WEIGHT_DECAY = 1e-3, 1e-4
GOAL = 3.0
GPU_GOAL_IMG_S = 5_000
V32_TRAIN_TILES = 48_979  # files in the official v3.2 train split, augmented copies included (its README)


# ---- the plain baseline ------------------------------------------------------------------------------

class PlainImageFolder(Dataset):
    """What `torchvision.datasets.ImageFolder` does per item: open the file, PIL-decode, RGB, transform."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.transform(default_loader(path)), target


def baseline_transform(size: int) -> Callable:
    return T.Compose([T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.Resize(size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def baseline_samples(td: TrainData) -> list[tuple[str, int]]:
    """The JPEG files behind OURS's training tiles (same tiles, same labels)."""
    records = td.data.select("train", originals_only=True)
    storage = {s.name: s.storage for s in td.data.sources}
    out = []
    for r in records:
        st = storage[r.source]
        if not isinstance(st, FolderStorage):
            raise SystemExit(f"error: the baseline reads JPEG files from a folder; {st.describe()} is a zip")
        out.append((str(st._path(r.path)), r.label))
    return out


# ---- timing ------------------------------------------------------------------------------------------

def forever(loader: DataLoader) -> Iterator:
    """Batches across epoch boundaries (a new epoch re-shuffles, as training does)."""
    while True:
        yield from loader


def measure(batches: Iterator, prepare: Callable, step: Callable, warmup: int, steps: int,
            sync: Callable[[], None] = lambda: None) -> dict:
    """Run warmup + steps training steps; time data (next batch + prepare) and compute (step) separately."""
    for _ in range(warmup):
        step(*prepare(*next(batches)))
    sync()
    data_s = compute_s = 0.0
    images = 0
    load = OtherLoad()
    load.start()
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = prepare(*next(batches))
        sync()
        t1 = time.perf_counter()
        step(x, y)
        sync()
        t2 = time.perf_counter()
        data_s, compute_s, images = data_s + t1 - t0, compute_s + t2 - t1, images + len(y)
    total = time.perf_counter() - start
    return {"img_s": images / total, "step_s": total / steps, "data_s": data_s / steps,
            "compute_s": compute_s / steps, "others": load.stop()}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, amp: bool) -> Callable:
    """`core.training.engine.fit`'s own step (`optimizer_step`); like fit, it reads nothing back (`measure` syncs)."""
    criterion = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer_step(model, criterion, optimizer, x, y, device, amp)

    return step


# ---- OURS ----------------------------------------------------------------------------------------------

def make_config(data: str, batch_size: int, image_size: int) -> RunConfig:
    return RunConfig(data=[data], model="resnet18", init="scratch", image_size=image_size, batch_size=batch_size,
                     augment="online", transforms=["hflip", "vflip", "rot90", "color_jitter"], optimizer="adamw",
                     lr=LR, weight_decay=WEIGHT_DECAY, amp=True, channels_last=True, num_workers=0,
                     imbalance="none").validate()


def measure_ours(cfg: RunConfig, td: TrainData, device: torch.device, warmup: int, steps: int,
                 amp: bool = True, channels_last: bool = True, batch_size: int | None = None,
                 arch: str = "resnet18") -> dict:
    if batch_size:
        cfg = RunConfig.from_dict({**cfg.to_dict(), "batch_size": batch_size})
    torch.manual_seed(0)
    model = build_model(arch, NUM_CLASSES).to(device)
    if arch != "resnet18":  # as the recipes train it: the stages below the model's fine-tuning point frozen
        from core.models import frozen_stages, set_frozen, spec
        set_frozen(model, arch, frozen_stages(arch, "below", spec(arch).fine_tune_from))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(cfg, model)
    batches = train_batches(cfg, td, device)

    def prepare(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_model_input(x.to(device, non_blocking=True), td.mean, td.std, cfg.input_size, td.batch_augment)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=True)

    return measure(forever(batches), prepare, train_step(model, optimizer, device, amp), warmup, steps)


# ---- BASELINE ------------------------------------------------------------------------------------------

def measure_baseline(samples: list[tuple[str, int]], size: int, batch_size: int, workers: int,
                     device: torch.device, warmup: int, steps: int, pin: bool = False) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loader = DataLoader(PlainImageFolder(samples, baseline_transform(size)), batch_size=batch_size, shuffle=True,
                        drop_last=True, num_workers=workers, persistent_workers=workers > 0, pin_memory=pin)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def prepare(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)

    try:
        return measure(forever(loader), prepare, train_step(model, optimizer, device, amp=False), warmup, steps, sync)
    finally:
        del loader  # stops the persistent workers now


# ---- GPU -----------------------------------------------------------------------------------------------

def measure_accel(cfg: RunConfig, td: TrainData, device: torch.device, batch_size: int, warmup: int, steps: int,
                  compile_model: bool) -> dict:
    """The GPU path of `fit`: tiles resident on the device (`DeviceBatches`), bf16, channels-last, fused
    AdamW, optionally torch.compile, at a GPU-sized batch."""
    torch.manual_seed(0)
    on_cuda = device.type == "cuda"
    model = build_model("resnet18", NUM_CLASSES).to(device).to(memory_format=torch.channels_last).train()
    big = RunConfig.from_dict({**cfg.to_dict(), "batch_size": batch_size})
    optimizer = build_optimizer(big, model)  # fit's optimizer: fused AdamW on CUDA
    runner = torch.compile(model) if compile_model else model
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)

    def prepare(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_model_input(x.to(device, non_blocking=True), td.mean, td.std, cfg.input_size, td.batch_augment)
        return x.contiguous(memory_format=torch.channels_last), y.to(device, non_blocking=True)

    return measure(forever(train_batches(big, td, device)), prepare,
                   train_step(runner, optimizer, device, amp=True), warmup, steps, sync)


def epochs_minutes(img_s: float, tiles_per_epoch: int, epochs: int = 20) -> float:
    return epochs * tiles_per_epoch / img_s / 60


# ---- the ceiling ---------------------------------------------------------------------------------------

def train_flops_per_image(model: nn.Module, in_channels: int, size: int) -> float:
    """Floating-point operations of one forward + backward pass per image (torch's own FLOP counter)."""
    x = torch.randn(2, in_channels, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def matmul_peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 12) -> float:
    """FLOP/s of a large square matmul: what this CPU's cores can reach in `dtype` at best."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def roofline(size: int, ours_img_s: float, base_img_s: float, bf16: bool) -> list[str]:
    """Whether the goal is reachable at all: the images/s the CPU's matmul peak allows each path.

    Both paths do the same convolutions, so once the data path costs nothing the ratio is bounded by
    peak(bf16) / peak(fp32) times the baseline's own efficiency. Saying so beats guessing."""
    ours_flops = train_flops_per_image(build_model("resnet18", NUM_CLASSES), 1, size)
    base_flops = train_flops_per_image(torchvision.models.resnet18(num_classes=NUM_CLASSES), 3, size)
    fp32 = matmul_peak_flops(torch.float32)
    fast = matmul_peak_flops(torch.bfloat16) if bf16 else fp32
    ceiling = fast / ours_flops
    return [
        f"roofline: {ours_flops / 1e9:.2f} GFLOP per image forward + backward for OURS (1-channel stem), "
        f"{base_flops / 1e9:.2f} for the BASELINE",
        f"  this CPU's matmul peak: fp32 {fp32 / 1e9:,.0f} GFLOP/s, {'bf16' if bf16 else 'fp32 (no bf16)'} "
        f"{fast / 1e9:,.0f} GFLOP/s",
        f"  BASELINE runs at {base_img_s * base_flops / fp32:.0%} of the fp32 peak; OURS at "
        f"{ours_img_s / ceiling:.0%} of its ceiling of {ceiling:.1f} img/s",
        f"  best ratio this CPU allows at equal work: {ceiling:.1f} / {base_img_s:.1f} = {ceiling / base_img_s:.2f}x"
        f" (goal {GOAL:.0f}x {'reachable' if ceiling / base_img_s >= GOAL else 'above the ceiling'})",
    ]


# ---- report --------------------------------------------------------------------------------------------

BUSY = 0.10  # other processes above this share of the CPU make a figure unreliable
busy_rows: list[str] = []


def row(name: str, r: dict, batch: int) -> str:
    if r["others"] > BUSY:
        busy_rows.append(name.strip())
    return (f"{name:<58}{r['img_s']:>8.1f}{r['step_s']:>9.3f}{r['data_s']:>9.3f}{r['compute_s']:>10.3f}"
            f"{batch:>7}{r['others']:>8.0%}")


HEADER = f"{'':<58}{'img/s':>8}{'s/step':>9}{'data s':>9}{'compute s':>10}{'batch':>7}{'others':>8}"


def peak_rss_mib() -> tuple[float, float]:
    """(this process, its largest finished child) peak resident set size in MiB (ru_maxrss is in KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(SHARED_DATA_DIR / "hirise-v3_2-subset"),
                        help="an official-layout data folder (default: the shared real tiles)")
    parser.add_argument("--batch-size", type=at_least(1), default=32)
    parser.add_argument("--image-size", type=at_least(32), default=224)
    parser.add_argument("--steps", type=at_least(1), default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=at_least(0), default=3, help="untimed steps first")
    parser.add_argument("--workers", default="0,2", help="baseline DataLoader worker counts to try (best is kept)")
    parser.add_argument("--threads", type=at_least(1), help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--variants", action="store_true",
                        help="also measure OURS without bf16 / channels-last, with 1 thread, batch 64 ...")
    parser.add_argument("--variant-steps", type=at_least(1), default=6)
    parser.add_argument("--no-roofline", action="store_true", help="skip the FLOP count and the matmul peak")
    parser.add_argument("--gpu-batch-size", type=at_least(1), default=256)
    parser.add_argument("--gpu-steps", type=at_least(1), default=30)
    parser.add_argument("--compile", action="store_true", help="GPU path: torch.compile the model")
    parser.add_argument("--bf16-arch", metavar="ARCH", help="also measure ARCH's training step (frozen below its "
                        "fine-tuning stage, at --image-size) in fp32 against bf16 autocast, in this run")
    parser.add_argument("--accel-device", default="cuda", help=argparse.SUPPRESS)  # 'cpu' exercises the GPU code
    args = parser.parse_args()
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--workers: expected worker counts such as 0,2, got {args.workers!r}")
    if not workers or min(workers) < 0:
        parser.error("--workers: give at least one worker count, none negative")

    if real_data_missing(args.data):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    cfg = make_config(args.data, args.batch_size, args.image_size)
    td = prepare_data(cfg, log=lambda msg: None)  # builds the tile cache on first use (not timed)
    samples = baseline_samples(td)
    print(f"bench_train: resnet18 at {args.image_size}px, batch {args.batch_size}, {len(samples)} training tiles "
          f"(originals of the train split) from {args.data}")
    print(f"machine: {os.cpu_count()} cores ({cpu_name()}), torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, CPU bf16 {'yes' if cpu_has_bf16() else 'no'}, load average {os.getloadavg()[0]:.1f}")
    print(f"each measurement: {args.warmup} warm-up steps, then {args.steps} timed steps\n")
    print(HEADER, flush=True)

    ours = measure_ours(cfg, td, cpu, args.warmup, args.steps)
    amp_used = "bf16 autocast" if cpu_has_bf16() else "fp32 (no CPU bf16)"
    print(row(f"OURS cache+BatchAugment, 1-ch stem, {amp_used}, CL", ours, args.batch_size), flush=True)
    base: dict[int, dict] = {}
    for w in workers:
        base[w] = measure_baseline(samples, args.image_size, args.batch_size, w, cpu, args.warmup, args.steps)
        print(row(f"BASELINE ImageFolder+PIL+transforms, fp32, workers={w}", base[w], args.batch_size), flush=True)
    best_w = max(base, key=lambda w: base[w]["img_s"])
    ratio = ours["img_s"] / base[best_w]["img_s"]

    if args.variants:
        print("\nwhere OURS's time goes (variants, fewer steps):", flush=True)
        variants: list[tuple[str, dict]] = [
            ("fp32, channels-last", {"amp": False}),
            ("fp32, contiguous (NCHW)", {"amp": False, "channels_last": False}),
            ("bf16, contiguous (NCHW)", {"channels_last": False}),
            (f"bf16, CL, batch {args.batch_size * 2}", {"batch_size": args.batch_size * 2}),
        ]
        for name, kw in variants:
            r = measure_ours(cfg, td, cpu, 2, args.variant_steps, **kw)
            print(row(f"  OURS {name}", r, kw.get("batch_size", args.batch_size)), flush=True)
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
            r = measure_ours(cfg, td, cpu, 2, args.variant_steps)
            print(row("  OURS bf16, CL, 1 thread", r, args.batch_size), flush=True)
            torch.set_num_threads(threads)

    if args.bf16_arch:
        print(f"\n{args.bf16_arch} at {args.image_size}px, training step (data + forward + backward + AdamW), "
              "frozen below its fine-tuning stage:", flush=True)
        fp32 = measure_ours(cfg, td, cpu, 2, args.variant_steps, amp=False, arch=args.bf16_arch)
        print(row(f"  {args.bf16_arch} fp32", fp32, args.batch_size), flush=True)
        bf16 = measure_ours(cfg, td, cpu, 2, args.variant_steps, arch=args.bf16_arch)
        print(row(f"  {args.bf16_arch} bf16 autocast{'' if cpu_has_bf16() else ' (no CPU bf16: fp32)'}", bf16,
                  args.batch_size), flush=True)
        print(f"  bf16 / fp32 = {bf16['img_s'] / fp32['img_s']:.2f}x", flush=True)

    print(f"\nbaseline = workers={best_w} (the faster of {', '.join(f'workers={w}' for w in workers)})")
    print(f"ratio (CPU): OURS / BASELINE = {ours['img_s']:.1f} / {base[best_w]['img_s']:.1f} img/s = {ratio:.2f}x "
          f"(goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'MISSED'})")
    b = base[best_w]
    print(f"per step: OURS data {ours['data_s']:.3f} s + compute {ours['compute_s']:.3f} s; BASELINE data "
          f"{b['data_s']:.3f} s + compute {b['compute_s']:.3f} s: the compute ratio alone is "
          f"{b['compute_s'] / ours['compute_s']:.2f}x, the data ratio {b['data_s'] / max(ours['data_s'], 1e-9):.1f}x "
          f"(data is {b['data_s'] / b['step_s']:.0%} of the baseline's step)")
    if not args.no_roofline:
        print("\n" + "\n".join(roofline(args.image_size, ours["img_s"], b["img_s"], cpu_has_bf16())), flush=True)

    accel = torch.device(args.accel_device)
    if accel.type == "cuda" and not torch.cuda.is_available():
        print("GPU: skipped (no CUDA device here)")
    else:
        name = torch.cuda.get_device_name(accel) if accel.type == "cuda" else f"{accel} (code check, not a GPU)"
        print(f"\nGPU: {name}\n{HEADER}", flush=True)
        g_res = measure_accel(cfg, td, accel, args.gpu_batch_size, 5, args.gpu_steps, args.compile)
        tag = ", torch.compile" if args.compile else ""
        print(row(f"OURS tiles resident on the device, bf16, CL{tag}", g_res, args.gpu_batch_size), flush=True)
        g_base = {w: measure_baseline(samples, args.image_size, args.batch_size, w, accel, args.warmup,
                                      args.gpu_steps, pin=False) for w in workers}
        for w, r in g_base.items():
            print(row(f"BASELINE on the device, fp32, workers={w}", r, args.batch_size), flush=True)
        gb = max(g_base.values(), key=lambda r: r["img_s"])
        print(f"ratio (GPU): OURS / BASELINE = {g_res['img_s']:.1f} / {gb['img_s']:.1f} img/s = "
              f"{g_res['img_s'] / gb['img_s']:.2f}x (goal >= {GPU_GOAL_IMG_S:,} img/s: "
              f"{'met' if g_res['img_s'] >= GPU_GOAL_IMG_S else 'MISSED'})")
        print(f"20 epochs over the full v3.2 training set ({V32_TRAIN_TILES:,} tiles): "
              f"{epochs_minutes(g_res['img_s'], V32_TRAIN_TILES):.1f} min at this rate (goal < 5 min; "
              "validation passes not included)")

    if busy_rows:
        print(f"\nWARNING: other processes used more than {BUSY:.0%} of the CPU during: {'; '.join(busy_rows)}. "
              "Those figures are not reliable: rerun on an idle machine.")
    else:
        print(f"\nthe machine was otherwise idle (other processes < {BUSY:.0%} of the CPU in every measurement)")
    self_mib, child_mib = peak_rss_mib()
    print(f"\npeak RSS: {self_mib:,.0f} MiB (this process); largest DataLoader worker {child_mib:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
