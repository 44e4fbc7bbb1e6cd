"""`python -m core.train --data PATH [--data PATH ...] --run-dir DIR [options]`: train and write a run.

`--grid FIELD=V1,V2 [FIELD=...]` trains every combination (an ablation grid, core.grid) one after another, or
queues them as jobs with `--queue`; `--grid-report ID` prints a grid's results table.

Every option of `core.config.RunConfig` is a flag (or comes from `--config FILE`). With
`torchrun --nproc_per_node N -m core.train ...` it trains with DistributedDataParallel (NCCL on
GPUs, gloo on CPU); only rank 0 writes the run folder.
"""
from __future__ import annotations

import signal

# A job cancelled while the imports below still load (seconds) must still end 'cancelled': run as a program,
# it notes SIGTERM from here on and StopFlag reads the note. Imported as a library, nothing changes.
_EARLY_SIGTERM: list[int] = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: _EARLY_SIGTERM.append(1))

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import augment
from .checkpoint import CheckpointError, checkpoint_payload, model_from_payload, read_checkpoint, save_checkpoint
from .classes import CLASS_NAMES, NUM_CLASSES
from .config import ConfigError, RunConfig, add_arguments, config_from_args
from .data import (DataError, DeviceBatches, HiriseData, RecordTiles, TileDataset, begin_epoch, load_dataset,
                   split_manifest, training_batches)
from .errors import first_line
from .evaluate import evaluation_records, report_from_logits, save_report
from .imageio import TILE_SIZE
from .inference import predict_features, probabilities, training_model_logits
from .jobs import JobError, device_key, process_start
from .queue import Cancelled, device_turn
from .metrics import classification_metrics, headline
from .models import (WeightsUnavailable, build_model, freeze_batchnorm_of_frozen, frozen_stages, require_imagenet,
                     set_frozen, spec, unfrozen_after)
from .ood import OODError, fit_reference
from .optim import SCHEDULERS, Schedule, build_optimizer, loss_weights, lr_range_test
from .precision import autocast, bf16_native
from .preprocess import to_model_input
from .runs import Run, RunBusy, RunLock, best_epoch_row, now_iso, write_json_atomic


class StopFlag:
    """Set by SIGTERM (also one that came while the program was still importing) or the run's CANCEL file;
    checked before the run starts, while it is queued, and between steps."""

    def __init__(self, run: Run | None):
        self.run, self.set = run, bool(_EARLY_SIGTERM)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        self.set = True

    def __bool__(self) -> bool:
        if not self.set and self.run is not None and self.run.cancel_requested():
            self.set = True
        return self.set


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on any (so all ranks stop together)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t)
        return bool(t.item() > 0)


def init_distributed(cfg: RunConfig) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_key(cfg.device) == "cuda"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but no GPU is available (use auto or cpu)")
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        d = Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))
    else:
        d = Dist()
    device = torch.device(f"cuda:{d.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return d, device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# ---- data --------------------------------------------------------------------------------------------

@dataclass
class TrainData:
    data: HiriseData
    train: TileDataset
    val: TileDataset
    mean: float
    std: float
    train_labels: np.ndarray
    batch_augment: nn.Module | None = None  # online transforms done on whole batches on the device


def prepare_data(cfg: RunConfig, log) -> TrainData:
    data = load_dataset(cfg.data_spec)
    for w in data.warnings:
        log(f"warning: {w}")
    log(f"split: {data.split_method}")
    if data.overrides is not None:  # issue 16
        log(f"label overrides: {data.overrides.describe()}")
    if data.leakage:
        message = "the split leaks: " + "; ".join(data.leakage)
        if not cfg.allow_leakage:
            raise DataError(message + " (fix the data, or pass --allow-leakage to train anyway)")
        log(f"warning: {message} (allowed by --allow-leakage)")
    # official mode trains on the data set's own augmented copies; the others on originals only
    train_records = data.select("train", originals_only=cfg.augment not in ("official", "official_online"))
    val_records = data.select("val", originals_only=True)
    if not train_records:
        raise DataError("the training split is empty")
    if not val_records and not cfg.data_spec.refit:
        raise DataError("the validation split is empty: add data or raise val_fraction")
    if not val_records:
        log(f"no validation split (val_fraction 0, test_fraction 0): a refit on all the data for a fixed "
            f"{cfg.epochs} epochs; no early stopping and no best-epoch choice, the last epoch is the model"
            + (f"; calibration from cross-validation {cfg.calibrate_from}" if cfg.calibrate_from else
               "; no cross-validation named (calibrate_from), so it stays uncalibrated"))
    mean, std = input_normalisation(cfg, data, train_records)
    log(f"input normalisation: mean {mean:.4f}, std {std:.4f}")
    online = cfg.augment in ("online", "official_online")
    batched, per_tile = augment.split_online(cfg.transforms) if online else ([], [])
    transform = augment.online_transform(per_tile, TILE_SIZE) if per_tile else None  # on the tiles, before resizing
    copies = augment.expand_copies(cfg.transforms, TILE_SIZE) if cfg.augment == "expand" else []
    train = TileDataset(data.tiles(train_records), data.labels(train_records), transform, copies)
    val = TileDataset(data.tiles(val_records), data.labels(val_records))
    counts = np.bincount(data.labels(train_records), minlength=NUM_CLASSES)
    log(f"train {len(train_records)} tiles ({len(train)} per epoch, augment={cfg.augment}), val {len(val_records)} "
        f"originals; train per class: " + ", ".join(f"{c} {n}" for c, n in zip(CLASS_NAMES, counts)))
    return TrainData(data, train, val, mean, std, data.labels(train_records),
                     augment.BatchAugment(batched) if batched else None)


def input_normalisation(cfg: RunConfig, data: HiriseData, train_records: list) -> tuple[float, float]:
    """The (mean, std) the model's input is standardised with, stored in every checkpoint.

    ImageNet weights keep the scaling they were trained with; weights from an earlier run keep that run's;
    a model from scratch gets the training tiles' own statistics."""
    if cfg.init == "imagenet":
        return spec(cfg.model).imagenet_norm or data.pixel_stats(train_records)
    if cfg.init == "run":
        payload = read_checkpoint(_init_checkpoint(cfg))
        return float(payload["mean"]), float(payload["std"])
    return data.pixel_stats(train_records)


def _init_checkpoint(cfg: RunConfig) -> Path:
    path = Path(cfg.init_from)
    return path / "best.pt" if path.is_dir() else path


def train_batches(cfg: RunConfig, td: TrainData, d: Dist, device: torch.device) -> DeviceBatches | DataLoader:
    """This rank's training batches: tiles resident on the device unless per-tile transforms need a DataLoader."""
    return training_batches(td.train, cfg.batch_size, device, balanced=cfg.imbalance == "balanced_sampler",
                            num_classes=NUM_CLASSES, seed=cfg.seed, rank=d.rank, world=d.world,
                            num_workers=cfg.num_workers)


def describe_batches(batches: DeviceBatches | DataLoader) -> str:
    """One log line saying which data path this run takes."""
    if isinstance(batches, DeviceBatches):
        mib = batches.tiles.numel() / 2**20
        return (f"data: {len(batches.labels)} tiles ({mib:,.0f} MiB uint8) resident on {batches.device}, "
                "batches drawn there")
    return f"data: DataLoader with {batches.num_workers} worker processes (per-tile transforms run per item)"


# ---- model -------------------------------------------------------------------------------------------

def build_initial_model(cfg: RunConfig, log) -> nn.Module:
    model = build_model(cfg.model, NUM_CLASSES, pretrained=cfg.init == "imagenet")
    if cfg.init == "run":
        path = _init_checkpoint(cfg)
        payload = read_checkpoint(path)
        if payload["arch"] != cfg.model:
            raise CheckpointError(f"{path} holds a {payload['arch']}, but this run trains a {cfg.model}")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
        log(f"starting from the weights of {path}")
    return model


def use_bf16(cfg: RunConfig, device: torch.device, log) -> bool:
    """Whether this run trains under bf16 autocast, saying why when it was asked for and is declined."""
    if not cfg.amp:
        return False
    if not spec(cfg.model).bf16_safe:
        log(f"bf16 autocast: off ({cfg.model} changes its predictions under bf16; it trains in fp32)")
        return False
    log(f"bf16 autocast: {'on' if bf16_native(device) else 'off (this CPU has no bf16)'}")
    return bf16_native(device)


def optimizer_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   target: torch.Tensor, device: torch.device, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: forward (bf16 autocast where enabled), loss in fp32, backward, update."""
    with autocast(device, amp):
        logits = model(x)
        loss = criterion(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss


def finite_loss(loss: torch.Tensor, epoch: int, index: int) -> float:
    """The loss as a float; a NaN or infinite loss stops the run with what to do about it."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss became {value} by epoch {epoch + 1}, step {index + 1}: "
                                 "lower the learning rate")
    return value


# ---- the run -----------------------------------------------------------------------------------------

def train(cfg: RunConfig, run: Run | None, resume: bool = False, lr_find: bool = False, queue: bool = False,
          lock: RunLock | None = None) -> int:
    """Train (or run the LR range test). Returns the process exit code; the run folder says the rest.

    A run folder has one trainer: its lock is taken here (2, with a one-line error, if another trainer
    holds it) unless the caller already holds it (`lock`), and let go only after the final status write."""
    own_lock = None
    if run is not None and lock is None:
        try:
            own_lock = RunLock.acquire(run)
        except (RunBusy, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return _train_locked(cfg, run, resume, lr_find, queue)
    finally:
        if own_lock is not None:
            own_lock.release()


def _train_locked(cfg: RunConfig, run: Run | None, resume: bool, lr_find: bool, queue: bool) -> int:
    """`train`, with the run lock held. Every way out leaves a final state in status.json."""
    d, writer = Dist(), run

    def log(msg: str) -> None:
        if d.main:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    stop = StopFlag(run)
    try:
        if stop:
            raise Cancelled()  # cancelled while it was starting
        d, device = init_distributed(cfg)
        writer = run if d.main else None
        held = device_turn(run, device_key(cfg.device), stop=lambda: bool(stop)) \
            if (queue and run is not None and d.world == 1) else contextlib.nullcontext()
        with held:
            if writer:
                writer.update_status(state="running", pid=os.getpid(), pid_start=process_start(os.getpid()),
                                     started_at=now_iso(), ended_at=None, error=None, epochs=cfg.epochs,
                                     device=str(device), host=os.uname().nodename, world_size=d.world)
            log(f"device {device}, world size {d.world}")
            seed_everything(cfg.seed)
            td = prepare_data(cfg, log)
            if writer:
                write_json_atomic(writer.splits_file, split_manifest(td.data))
                if td.data.overrides is not None:  # issue 16: the label corrections this run trained with
                    write_json_atomic(writer.label_overrides_file, td.data.overrides.as_dict())
            if lr_find:
                result = find_lr(cfg, td, d, device, log, stop, run=writer)
                if writer:
                    write_json_atomic(writer.lr_find_file, result)
                    writer.update_status(state="completed", ended_at=now_iso())
                return 0
            cancelled = fit(cfg, td, d, device, writer, resume, log, stop)
        if writer:
            writer.update_status(state="cancelled" if cancelled else "completed", ended_at=now_iso())
        return 0
    except Cancelled:
        log("cancelled")
        if writer:
            writer.update_status(state="cancelled", ended_at=now_iso())
        return 0
    except (ConfigError, DataError, CheckpointError, WeightsUnavailable) as exc:
        log(f"error: {exc}")
        if writer:
            writer.update_status(state="failed", ended_at=now_iso(), error=str(exc))
        return 2
    except Exception as exc:  # noqa: BLE001 - any crash must land in status.json (one line), its traceback in the log
        traceback.print_exc()
        if writer:
            writer.update_status(state="failed", ended_at=now_iso(), error=f"{type(exc).__name__}: {first_line(exc)}")
        return 1
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---- one set-up, shared by fit and the LR range test ------------------------------------------------

@dataclass
class Trainer:
    """What training and the LR range test train with: built once, by `set_up`."""

    model: nn.Module
    loader: DeviceBatches | DataLoader
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    amp: bool  # bf16 autocast (see `use_bf16`)
    initial_frozen: list[str]


def set_up(cfg: RunConfig, td: TrainData, d: Dist, device: torch.device, log) -> Trainer:
    """The model (initial weights, layout, frozen stages), this rank's batches, the optimizer and the loss."""
    model = build_initial_model(cfg, log).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    initial_frozen = frozen_stages(cfg.model, cfg.freeze, cfg.freeze_below)
    set_frozen(model, cfg.model, initial_frozen)
    loader = train_batches(cfg, td, d, device)
    log(describe_batches(loader))
    optimizer = build_optimizer(cfg, model)
    weights = loss_weights(cfg.imbalance, td.train_labels, NUM_CLASSES)
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                                    label_smoothing=cfg.label_smoothing)
    return Trainer(model, loader, optimizer, criterion, use_bf16(cfg, device, log), initial_frozen)


def training_input(cfg: RunConfig, td: TrainData, tiles: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of uint8 training tiles -> model input on `device` (batch augmentation included)."""
    x = to_model_input(tiles.to(device, non_blocking=True), td.mean, td.std, cfg.input_size, td.batch_augment)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


@dataclass
class Progress:
    """Where a run stands between epochs: what last.pt keeps to resume it."""

    start_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    step: int = 0


@dataclass
class EpochStats:
    train_loss: float
    train_accuracy: float | None  # None with mixup/cutmix (targets are mixed)
    images_per_s: float
    seconds: float


# ---- training: fit = train_one_epoch + evaluate + save_checkpoints, epoch after epoch ------------------

def fit(cfg: RunConfig, td: TrainData, d: Dist, device: torch.device, run: Run | None, resume: bool, log,
        stop: StopFlag) -> bool:
    """Train, writing metrics and checkpoints into `run` (rank 0); True when a cancel stopped it."""
    on_cuda = device.type == "cuda"
    t = set_up(cfg, td, d, device, log)
    model = t.model
    steps_per_epoch = len(t.loader) if not cfg.max_steps_per_epoch else min(len(t.loader), cfg.max_steps_per_epoch)
    schedule = Schedule(cfg, t.optimizer, steps_per_epoch)
    mixer = augment.batch_mixer(cfg.mixup_alpha, cfg.cutmix_alpha, NUM_CLASSES)
    progress = resume_from(run, t, schedule, log) if resume else Progress()
    if run is not None:  # what it trains with, where the configuration leaves it to the model or the machine
        run.update_status(effective={"amp": t.amp, "input_size": cfg.input_size, "frozen": t.initial_frozen})

    compiled = torch.compile(model) if (cfg.compile and on_cuda) else model
    if cfg.compile and not on_cuda:
        log("note: compile is for CUDA (torch.compile trained slower on this project's CPU); not compiling")
    frozen: list[str] | None = None
    ddp_model: nn.Module = compiled
    for epoch in range(progress.start_epoch, cfg.epochs):
        now_frozen = unfrozen_after(cfg.model, t.initial_frozen, epoch, cfg.unfreeze_every, cfg.unfreeze_all_at)
        if now_frozen != frozen:
            frozen = now_frozen
            set_frozen(model, cfg.model, frozen)
            if frozen != t.initial_frozen or epoch == progress.start_epoch:
                log(f"epoch {epoch + 1}: frozen stages: {', '.join(frozen) or 'none'}")
            if d.world > 1:  # DDP records which parameters train when it is built
                ddp_model = DistributedDataParallel(compiled, device_ids=[device.index] if on_cuda else None)
        ddp_model.train()
        freeze_batchnorm_of_frozen(model, cfg.model, frozen or [])
        stats = train_one_epoch(cfg, t, ddp_model, td, d, device, schedule, mixer, epoch, steps_per_epoch,
                                progress, run, stop)
        if stats is None:
            log(f"stopping at epoch {epoch + 1}: cancel requested (last.pt keeps the last finished epoch)")
            return True
        lr_now = t.optimizer.param_groups[0]["lr"]
        row = {"kind": "epoch", "epoch": epoch + 1, "step": progress.step, "train_loss": stats.train_loss,
               "train_accuracy": stats.train_accuracy, "lr": lr_now, "images_per_s": stats.images_per_s,
               "seconds": stats.seconds}
        val: dict | None = None
        if len(td.val):
            val, val_loss = evaluate(cfg, model, td, device, t.amp)
            score = val[cfg.early_stopping_metric]
            schedule.after_epoch(score)
            # a cross-validation fold is scored at its last epoch, as its refit will be: choosing the best epoch on
            # the fold it is scored on would flatter the out-of-fold figures (core.cv)
            improved = score > progress.best_score or bool(cfg.cv_folds)
            row.update(val_row(val, val_loss))
        else:  # a refit: no validation, every epoch's weights replace the last; the final epoch is the model
            schedule.after_epoch(None)
            improved = True
        if improved:
            progress.best_score, progress.best_epoch, progress.bad_epochs = row.get(
                f"val_{cfg.early_stopping_metric}", -math.inf), epoch + 1, 0
        else:
            progress.bad_epochs += 1
        row["best"] = improved
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, " +
            (f"val loss {row['val_loss']:.4f}, {headline(val)}" if val else "no validation") +
            f", {row['images_per_s']:.0f} img/s" + (" *" if improved and val else ""))
        if run:
            written = run.append_metrics(row)
            save_checkpoints(run, cfg, t, schedule, td, val, epoch, progress, best_row=written if improved else None)
        if val and not cfg.cv_folds and cfg.patience and progress.bad_epochs >= cfg.patience:
            log(f"early stopping: no {cfg.early_stopping_metric} gain in {cfg.patience} epochs")
            break
    if run and run.best_checkpoint.is_file():
        finish(run, cfg, td, device, log)
    return False


def resume_from(run: Run | None, t: Trainer, schedule: Schedule, log) -> Progress:
    """Load last.pt's weights, optimizer, schedule and RNG state into `t`; where the run stood."""
    if run is None or not run.last_checkpoint.is_file():
        raise CheckpointError("nothing to resume: the run has no last.pt yet")
    last = read_checkpoint(run.last_checkpoint)  # one read: weights and optimizer/scheduler state
    state = last["train_state"]
    t.model.load_state_dict(last["state_dict"])
    t.optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    _drop_metrics_after(run, state["epoch"])
    run.update_status(best=best_epoch_row(run.metrics()))
    log(f"resuming after epoch {state['epoch'] + 1}")
    return Progress(start_epoch=state["epoch"] + 1, best_score=state["best_score"], best_epoch=state["best_epoch"],
                    bad_epochs=state["bad_epochs"], step=state["step"])


def train_one_epoch(cfg: RunConfig, t: Trainer, ddp_model: nn.Module, td: TrainData, d: Dist, device: torch.device,
                    schedule: Schedule, mixer: nn.Module | None, epoch: int, steps_per_epoch: int, progress: Progress,
                    run: Run | None, stop: StopFlag) -> EpochStats | None:
    """One pass over this rank's batches (`progress.step` counts them); None when a cancel stopped it."""
    begin_epoch(t.loader, epoch)
    if run:
        run.update_status(epoch=epoch + 1, step_in_epoch=0, steps_per_epoch=steps_per_epoch,
                          epoch_started_at=now_iso())
    # Sums stay on the device: reading a value back stalls a GPU, so it happens once per log_every steps.
    t0, seen = time.perf_counter(), 0
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not d.main, mininterval=2.0, dynamic_ncols=True)
    try:
        for i, (x, y) in enumerate(t.loader):
            if i >= steps_per_epoch:
                break
            # a cancel is a file on disk; with several ranks agreeing on it is a collective, so less often
            if (d.world == 1 or i % cfg.log_every == 0) and d.any(bool(stop), device):
                return None
            x = training_input(cfg, td, x, device)
            y = y.to(device, non_blocking=True)
            target = y
            if mixer is not None:
                x, target = mixer(x, y)
            logits, loss = optimizer_step(ddp_model, t.criterion, t.optimizer, x, target, device, t.amp)
            schedule.after_batch()
            progress.step += 1
            seen += len(y)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            bar.update(1)
            if progress.step % cfg.log_every == 0 or i == steps_per_epoch - 1:
                loss_value = finite_loss(loss, epoch, i)
                if run:
                    elapsed = time.perf_counter() - t0
                    run.append_metrics({"kind": "step", "epoch": epoch + 1, "step": progress.step,
                                        "train_loss": loss_value, "lr": t.optimizer.param_groups[0]["lr"]})
                    run.update_status(step_in_epoch=i + 1, images_per_s=seen * d.world / elapsed,
                                      eta_epoch_s=elapsed / (i + 1) * (steps_per_epoch - i - 1))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return EpochStats(train_loss=finite_loss(loss_sum / max(1, seen), epoch, steps_per_epoch - 1),
                      train_accuracy=None if mixer else int(correct) / max(1, seen),
                      images_per_s=seen * d.world / seconds, seconds=seconds)


def evaluate(cfg: RunConfig, model: nn.Module, td: TrainData, device: torch.device, amp: bool) -> tuple[dict, float]:
    """The model's validation metrics (`core.metrics.classification_metrics`) and loss, after an epoch."""
    logits = training_model_logits(model, td.val.tiles, NUM_CLASSES, td.mean, td.std, cfg.input_size, device,
                                   cfg.batch_size * 2, amp, cfg.channels_last)
    val = classification_metrics(td.val.labels.numpy(), probabilities(logits))
    return val, float(nn.functional.cross_entropy(torch.from_numpy(logits), td.val.labels))


def val_row(val: dict, val_loss: float) -> dict:
    """An epoch row's validation fields."""
    return {"val_loss": val_loss, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "val_balanced_accuracy": val["balanced_accuracy"],
            "val_recall": {c["class"]: c["recall"] if c["support"] else None for c in val["per_class"]},
            "val_support": {c["class"]: c["support"] for c in val["per_class"]}}


def save_checkpoints(run: Run, cfg: RunConfig, t: Trainer, schedule: Schedule, td: TrainData, val: dict | None,
                     epoch: int,
                     progress: Progress, best_row: dict | None) -> None:
    """last.pt after every epoch (with what resuming needs); best.pt too when the epoch improved (`best_row`)."""
    payload = _payload(cfg, t.model, td, val, epoch + 1)
    if best_row is not None:
        save_checkpoint(run.best_checkpoint, payload)
        run.update_status(best=best_row)
    payload["train_state"] = {"optimizer": t.optimizer.state_dict(), "scheduler": schedule.state_dict(),
                              "epoch": epoch, "best_score": progress.best_score, "best_epoch": progress.best_epoch,
                              "bad_epochs": progress.bad_epochs, "step": progress.step,
                              "rng": torch.get_rng_state()}
    save_checkpoint(run.last_checkpoint, payload)


def _payload(cfg: RunConfig, model: nn.Module, td: TrainData, val: dict | None, epoch: int) -> dict:
    if val is None:  # a refit: its figures are the cross-validation's (`finish` records them)
        metrics: dict = {"split": None}
    else:
        metrics = {k: val[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                       "majority_baseline", "per_class", "n")}
        metrics["split"] = "val"
    return checkpoint_payload(model, arch=cfg.model, image_size=cfg.input_size, mean=td.mean, std=td.std,
                              config=cfg.to_dict(), metrics=metrics, epoch=epoch, splits=split_manifest(td.data))


def finish(run: Run, cfg: RunConfig, td: TrainData, device: torch.device, log) -> None:
    """Calibrate the best checkpoint on validation and save its evaluation for the app (on the training device)."""
    if not len(td.val):
        return finish_refit(run, cfg, td, device, log)
    payload = read_checkpoint(run.best_checkpoint)
    loaded = model_from_payload(payload, run.best_checkpoint, device)
    # one pass over val: its logits fit the temperature and make the report, its features calibrate the OOD check
    records, tiles_from = evaluation_records(loaded, td.data, "val", originals_only=True)
    features, logits = predict_features(loaded, RecordTiles(td.data, records), batch_size=cfg.batch_size * 2)
    report = report_from_logits(loaded, td.data, records, logits, split="val", originals_only=True,
                                tiles_from=tiles_from, calibrate=True)
    temperature = loaded.temperature
    payload["temperature"] = float(temperature)
    try:  # what the app tells an input unlike the training tiles by (core.ood); a run never fails for it
        payload["ood"] = fit_reference(loaded, td.data, known=(records, features), with_train_quantiles=True).to_dict()
    except OODError as exc:
        log(f"warning: no out-of-distribution reference: {exc}")
    save_checkpoint(run.best_checkpoint, payload)
    save_report(report, run.eval_file)
    log(f"calibration temperature {temperature:.3f}; best checkpoint on val: {headline(report)}")


def finish_refit(run: Run, cfg: RunConfig, td: TrainData, device: torch.device, log) -> None:
    """A run with no validation split: its temperature and out-of-distribution calibration come from the
    out-of-fold predictions of the cross-validation it names (`calibrate_from`), so nothing is fitted on tiles
    this model trained on, and its checkpoint records that cross-validation's figures (`core.cv.refit_record`)."""
    from . import cv
    payload = read_checkpoint(run.best_checkpoint)
    if not cfg.calibrate_from:
        log("no calibration: name a cross-validation (calibrate_from) to calibrate a refit on its out-of-fold "
            "predictions; the temperature stays 1 and there is no out-of-distribution reference")
        return
    try:
        record = cv.refit_record(cfg.calibrate_from, run.path.parent)
    except (FileNotFoundError, cv.CVError) as exc:
        log(f"warning: no calibration from cross-validation {cfg.calibrate_from}: {exc}")
        return
    payload["temperature"] = record["temperature"]
    payload["metrics"] = {**record["metrics"], "split": "out-of-fold"}
    payload["cv"] = record["cv"]
    loaded = model_from_payload(payload, run.best_checkpoint, device)
    try:
        density = fit_reference(loaded, td.data, with_train_quantiles=True, val_from_ratio=record["ood_ratio"])
        payload["ood"] = density.to_dict()
    except OODError as exc:
        log(f"warning: no out-of-distribution reference: {exc}")
    save_checkpoint(run.best_checkpoint, payload)
    log(f"calibration from cross-validation {cfg.calibrate_from}: temperature {record['temperature']:.3f} "
        f"(fitted on {record['cv']['tiles']} out-of-fold tiles); out-of-fold {headline(record['metrics'])}")


def _drop_metrics_after(run: Run, last_epoch_index: int) -> None:
    """On resume, forget the rows of the epoch that was interrupted (it is trained again)."""
    rows = [r for r in run.metrics() if r.get("epoch", 0) <= last_epoch_index + 1]
    tmp = run.metrics_file.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(run.metrics_file)


def find_lr(cfg: RunConfig, td: TrainData, d: Dist, device: torch.device, log, stop: StopFlag,
            num_steps: int = 100, run: Run | None = None) -> dict:
    """The LR range test on this run's model, data and optimizer (`set_up`, as training); its progress goes to
    `run`'s status (batch i of `num_steps`, images/s, ETA) the way an epoch's does, so the app draws it the same way."""
    t = set_up(cfg, td, d, device, log)
    batches = iter(t.loader)
    t.model.train()

    def step(lr: float) -> float:
        nonlocal batches
        if stop:
            raise Cancelled()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(t.loader)
            x, y = next(batches)
        for g in t.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        x = training_input(cfg, td, x, device)
        return float(optimizer_step(t.model, t.criterion, t.optimizer, x, y.to(device), device, t.amp)[1].detach())

    bar = tqdm(total=num_steps, desc="LR range test", unit="batch", mininterval=2.0)
    start = time.perf_counter()
    if run:
        run.update_status(epoch=None, step_in_epoch=0, steps_per_epoch=num_steps)

    def on_step(i: int, n: int) -> None:
        bar.update(1)
        if run and (i % max(1, n // 20) == 0 or i == n):
            elapsed = time.perf_counter() - start
            run.update_status(step_in_epoch=i, images_per_s=i * cfg.batch_size / elapsed,
                              eta_epoch_s=elapsed / i * (n - i))

    result = lr_range_test(step, num_steps=num_steps, on_step=on_step)
    bar.close()
    if run:
        run.update_status(step_in_epoch=len(result["lrs"]), eta_epoch_s=0)
    log(f"LR range test: suggested lr {result['suggested_lr']}")
    return result


#: What a resumed run may change: how long and how it runs, not what it trains (that is a new run).
RESUME_CHANGEABLE = ("epochs", "patience", "log_every", "num_workers", "device", "amp", "channels_last", "compile",
                     "name")


def check_resume_changes(stored: RunConfig, cfg: RunConfig) -> None:
    """Refuse, in one line, a resume that changes what the run trains (its model, data, optimizer ...):
    its checkpoint and optimizer state would not fit, or would silently mean something else."""
    for f in fields(RunConfig):
        old, new = getattr(stored, f.name), getattr(cfg, f.name)
        if old != new and f.name not in RESUME_CHANGEABLE:
            raise ConfigError(f"{f.name}: this run was trained with {old!r}, and a resumed run keeps it (not {new!r}); "
                              "start a new run, with --init run --init-from the run folder to keep its weights")
    if SCHEDULERS[cfg.scheduler].spans_run and cfg.epochs != stored.epochs:
        raise ConfigError(f"epochs: the {cfg.scheduler} schedule is laid out over the run's {stored.epochs} epochs "
                          "and a resumed run keeps them (schedules "
                          f"{', '.join(n for n, c in SCHEDULERS.items() if not c.spans_run)} can run longer)")


def prepare_run_folder(run: Run, cfg: RunConfig, args: argparse.Namespace) -> None:
    """With the run lock held: refuse what cannot start, clear what a dead writer left, record the config
    (overrides of a resume included: the app reads it) and who the trainer is."""
    if args.resume:
        check_resume_changes(RunConfig.load(run.config_file), cfg)
        if not args.queue:
            run.cancel_file.unlink(missing_ok=True)  # the app clears it when it launches; from the CLI, here
    elif run.metrics_file.exists() and not args.queue:
        raise ConfigError(f"{run.path} already holds a run; use --resume or a new --run-dir")
    run.remove_stale_temps()
    run.save_config(cfg.to_dict())
    me = {"pid": os.getpid(), "pid_start": process_start(os.getpid())}
    if args.queue:  # the launcher wrote `queued` already
        run.update_status(**me)
    else:
        run.update_status(state="queued", queued_at=now_iso(), kind="lr_find" if args.lr_find else "train",
                          error=None, ended_at=None, **me)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="the run folder to create (or resume); required except with --grid")
    parser.add_argument("--config", help="a config.json to start from; flags override it")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last.pt")
    parser.add_argument("--lr-find", action="store_true", help="run the LR range test instead of training")
    parser.add_argument("--queue", action="store_true", help="wait for the device's turn (used by app jobs)")
    parser.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # the run lock, handed over by jobs.launch
    # the device's turn, already taken by core.queue (which this process was before its exec): held until exit
    parser.add_argument("--device-lock-fd", type=int, help=argparse.SUPPRESS)
    add_grid_arguments(parser)
    add_cv_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.cv_report is not None:
        return cv_report(args.cv_report, Path(args.runs_dir) if args.runs_dir else None, args.against)
    if args.grid or args.grid_report is not None:
        return grid_main(args)
    if args.cv is not None:
        return cv_main(args)
    if not args.run_dir:
        parser.error("the following arguments are required: --run-dir (or --grid FIELD=V1,V2)")
    run_dir = Path(args.run_dir)
    try:
        base = RunConfig.load(args.config) if args.config else (
            RunConfig.load(run_dir / "config.json") if args.resume else None)
        cfg = config_from_args(args, base)
        if cfg.init == "imagenet":  # before anything is written: which weights, or what is missing
            print(require_imagenet(cfg.model), flush=True)
    except (ConfigError, WeightsUnavailable) as exc:
        handed = RunLock.adopt(Run(run_dir.resolve()), args.lock_fd)  # a job the app launched: say why it failed
        return refuse(str(exc), handed)
    if int(os.environ.get("RANK", "0")) != 0:
        return train(cfg, None, resume=args.resume, lr_find=args.lr_find, queue=args.queue)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        run = Run(run_dir.resolve())
        lock = RunLock.adopt(run, args.lock_fd) or RunLock.acquire(run)
    except RunBusy as exc:
        return refuse(str(exc))
    except OSError as exc:
        return refuse(f"cannot write the run folder {run_dir}: {exc.strerror or exc}")
    with lock:
        try:
            prepare_run_folder(run, cfg, args)
        except ConfigError as exc:
            return refuse(str(exc), lock if args.queue else None)
        except OSError as exc:
            return refuse(f"cannot write the run folder {run_dir}: {exc.strerror or exc}")
        return train(cfg, run, resume=args.resume, lr_find=args.lr_find, lock=lock,
                     queue=args.queue and args.device_lock_fd is None)


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The ablation grid's flags (core.grid)."""
    parser.add_argument("--grid", nargs="+", action="extend", default=[], metavar="FIELD=V1,V2",
                        help="train every combination of up to three options' values, everything else equal "
                             "(one run folder each under --runs-dir), one after another in this process; with "
                             "--queue, queue them as jobs (as the app does) and return")
    parser.add_argument("--runs-dir", help="where a grid's run folders go (default: HIRISE_RUNS_DIR or runs/)")
    parser.add_argument("--grid-report", nargs="?", const="", metavar="ID",
                        help="print a grid's results table (without ID: list the grids)")


def add_cv_arguments(parser: argparse.ArgumentParser) -> None:
    """Cross-validation's flags (core.cv)."""
    parser.add_argument("--cv", metavar="K", help="K-fold cross-validation grouped by observation (K from 3 to 10): "
                        "one run per fold under --runs-dir, in this process (or queued with --queue), then the "
                        "pooled out-of-fold report; with --grid, every combination is cross-validated")
    parser.add_argument("--cv-seed", type=int, default=0, metavar="S", help="seed of the fold assignment (default 0)")
    parser.add_argument("--cv-report", nargs="?", const="", metavar="ID",
                        help="print a cross-validation's pooled out-of-fold report (without ID: list them)")
    parser.add_argument("--against", metavar="ID", help="with --cv-report ID: compare it with this cross-validation "
                        "on the out-of-fold tiles both scored (paired bootstrap over observations)")


def _base_config(args: argparse.Namespace) -> RunConfig:
    """The recipe typed on the command line (over --config), not yet checked: a grid or a CV checks each run."""
    names = {f.name for f in fields(RunConfig)}
    values = (RunConfig.load(args.config) if args.config else RunConfig()).to_dict()
    values.update({k: v for k, v in vars(args).items() if k in names})
    return RunConfig.from_dict(values)


def cv_main(args: argparse.Namespace) -> int:
    """`--cv K`: every fold checked before the first one starts, then trained here (or queued), then reported."""
    from . import cv
    runs_dir = Path(args.runs_dir) if args.runs_dir else None
    clash = [flag for flag, on in (("--run-dir", args.run_dir), ("--resume", args.resume),
                                   ("--lr-find", args.lr_find), ("--lock-fd", args.lock_fd is not None)) if on]
    if clash:
        return refuse(f"--cv makes one run folder per fold under --runs-dir; it takes no {clash[0]}")
    try:
        configs = cv.plan(_base_config(args), args.cv, args.cv_seed)
        for line in cv.coverage(configs[0]):
            print(f"warning: {line}", flush=True)
    except (ConfigError, DataError) as exc:
        return refuse(str(exc))
    if args.queue:
        try:
            cv_id, runs = cv.launch(configs, runs_dir)
        except JobError as exc:
            return refuse(str(exc))
        print(f"cross-validation {cv_id}: queued {len(runs)} folds: {', '.join(r.name for r in runs)}\n"
              f"report: python -m core.train --cv-report {cv_id}")
        return 0
    cv_id, code = cv.run_in_process(configs, train, runs_dir)
    cv_report(cv_id, runs_dir)
    return code


def cv_report(cv_id: str, runs_dir: Path | None, against: str | None = None) -> int:
    """Print a cross-validation's report, or (no id) the cross-validations there are; with `against`, the paired
    comparison of the two."""
    from . import cv
    if against:
        try:
            print(cv.format_paired(cv.paired(cv_id, against, runs_dir)))
        except (FileNotFoundError, cv.CVError) as exc:
            return refuse(str(exc))
        return 0
    if not cv_id:
        found = cv.list_cvs(runs_dir)
        for m in found:
            print(f"{m['id']}  {m.get('folds')} folds  {len(m.get('runs', []))} queued  "
                  f"{(m.get('base') or {}).get('model')}" + (f"  grid {m['grid']}" if m.get("grid") else ""))
        if not found:
            print(f"no cross-validations in {cv.cv_dir(runs_dir)}")
        return 0
    try:
        print(cv.format_report(cv.report(cv_id, runs_dir)))
    except FileNotFoundError as exc:
        return refuse(str(exc))
    return 0


def grid_main(args: argparse.Namespace) -> int:
    """`--grid` and `--grid-report`: every combination checked before the first run starts."""
    from . import grid
    runs_dir = Path(args.runs_dir) if args.runs_dir else None
    if args.grid_report is not None:
        return grid_report(args.grid_report, runs_dir)
    clash = [flag for flag, on in (("--run-dir", args.run_dir), ("--resume", args.resume),
                                   ("--lr-find", args.lr_find), ("--lock-fd", args.lock_fd is not None)) if on]
    if clash:
        return refuse(f"--grid makes one run folder per combination under --runs-dir; it takes no {clash[0]}")
    try:
        axes = [grid.parse_axis(text) for text in args.grid]
        typed = [a.field for a in axes if a.field in vars(args)]
        if typed:
            raise grid.GridError(f"{typed[0]}: given both as --{typed[0].replace('_', '-')} and in --grid; "
                                 "give it once")
        p = grid.plan(_base_config(args), axes)  # the base alone is not checked: the grid may fix it
        if args.cv is not None:
            grid_id, code = grid.cross_validate(p, args.cv, args.cv_seed, runs_dir,
                                                train=None if args.queue else train)
            if args.queue:
                print(f"grid {grid_id}: queued {len(p)} cross-validations of {args.cv} folds\n"
                      f"results: python -m core.train --grid-report {grid_id}")
                return 0
            grid_report(grid_id, runs_dir)
            return code
    except ConfigError as exc:
        return refuse(str(exc))
    except JobError as exc:
        return refuse(str(exc))
    if args.queue:
        try:
            grid_id, runs = grid.launch(p, runs_dir)
        except JobError as exc:
            return refuse(str(exc))
        print(f"grid {grid_id}: queued {len(runs)} runs: {', '.join(r.name for r in runs)}\n"
              f"results: python -m core.train --grid-report {grid_id}")
        return 0
    grid_id, code = grid.run_in_process(p, runs_dir)
    grid_report(grid_id, runs_dir)
    return code


def grid_report(grid_id: str, runs_dir: Path | None) -> int:
    """Print a grid's results table, or (no id) the grids there are."""
    from . import grid
    if not grid_id:
        grids = grid.list_grids(runs_dir)
        for m in grids:
            print(f"{m['id']}  {len(m.get('runs', []))} runs  {grid.describe_values(m.get('values', {}))}")
        if not grids:
            print(f"no grids in {grid.grids_dir(runs_dir)}")
        return 0
    try:
        table, split = grid.report(grid_id, runs_dir)
    except FileNotFoundError as exc:
        return refuse(str(exc))
    print(f"grid {grid_id}: {split}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-") if len(table) else "(no runs)")
    return 0


def refuse(message: str, lock: RunLock | None = None) -> int:
    """Say why in one line and return 2. A job the app launched (it holds the run's `lock`) also records it
    as failed, so the app shows the reason rather than a lost job; otherwise the run folder is left as it was."""
    print(f"error: {message}", file=sys.stderr)
    if lock is not None:
        with lock, contextlib.suppress(OSError):
            lock.run.update_status(state="failed", ended_at=now_iso(), error=message)
    return 2


if __name__ == "__main__":
    sys.exit(main())
