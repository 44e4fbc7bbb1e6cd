"""The training engine, in torchvision's shape: `fit` runs `train_one_epoch`, `evaluate` and
`save_checkpoints` epoch after epoch; `set_up` builds what they train with, once, for training and the LR range
test (`find_lr`) alike. What the kept model gets afterwards (calibration, the out-of-distribution reference, its
report, a fold's all-files scores) is the run lifecycle's (`core.training.finish`), not the engine's.

The command line is `python -m core.train ...` (core.training.runner: a run's lifecycle, the grid and the
cross-validation); with `torchrun --nproc_per_node N -m core.train ...` it trains with DistributedDataParallel
(NCCL on GPUs, gloo on CPU), only rank 0 writing the run folder.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from core.bootstrap import intervals
from core.checkpoint import (
    CheckpointError,
    TrainState,
    checkpoint_payload,
    read_checkpoint,
)
from core.choices import HEADLINE
from core.classes import NUM_CLASSES
from core.data import split_manifest
from core.experiment.runs import Run, best_epoch_row, now_iso
from core.inference import probabilities, training_model_logits
from core.metrics import classification_metrics, headline
from core.models import build_model, freeze_batchnorm_of_frozen, frozen_stages, set_frozen, spec, unfrozen_after
from core.precision import autocast, bf16_native
from core.training.batches import ModelBatches, TrainData
from core.training.config import RunConfig
from core.training.optim import Schedule, build_optimizer, loss_weights
from core.training.process import Dist, StopFlag


def build_initial_model(cfg: RunConfig, td: TrainData, log) -> nn.Module:
    """The model before its first step: ImageNet weights, a run's weights (read once, by `prepare_data`), or new."""
    if td.init is not None:
        log(f"starting from the weights of {td.init.path}")
        return td.init.model
    return build_model(cfg.model, NUM_CLASSES, pretrained=cfg.init == "imagenet")


def use_bf16(cfg: RunConfig, device: torch.device, log) -> bool:
    """Whether this run trains under bf16 autocast, saying why when it was asked for and is declined."""
    if not cfg.amp:
        return False
    on = bf16_native(device)
    note = "" if spec(cfg.model).bf16_safe or not on else \
        f" for training steps; {cfg.model} is evaluated in fp32 (bf16 changes its predictions)"
    log(f"bf16 autocast: {'on' + note if on else 'off (this CPU has no bf16)'}")
    return on


def eval_bf16(cfg: RunConfig, train_amp: bool) -> bool:
    """Validation runs under bf16 only for models whose predictions bf16 leaves alone: the training steps of the
    others (EfficientNet-Lite) tolerate bf16's rounding, since SGD noise dwarfs it, but their scores must not."""
    return train_amp and spec(cfg.model).bf16_safe


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


# ---- one set-up, shared by fit and the LR range test ------------------------------------------------

@dataclass
class Trainer:
    """What training and the LR range test train with: built once, by `set_up`."""

    model: nn.Module
    batches: ModelBatches  # model-ready (x, target, labels), augmentation, normalisation and mixing included
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    amp: bool  # bf16 autocast (see `use_bf16`)
    initial_frozen: list[str]


def set_up(cfg: RunConfig, td: TrainData, d: Dist, device: torch.device, log) -> Trainer:
    """The model (initial weights, layout, frozen stages), this rank's batches, the optimizer and the loss."""
    model = build_initial_model(cfg, td, log).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    initial_frozen = frozen_stages(cfg.model, cfg.freeze, cfg.freeze_below)
    set_frozen(model, cfg.model, initial_frozen)
    batches = ModelBatches(cfg, td, device, d.rank, d.world)
    log(batches.describe())
    optimizer = build_optimizer(cfg, model)
    weights = loss_weights(cfg.imbalance, td.train_labels, NUM_CLASSES)
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                                    label_smoothing=cfg.label_smoothing)
    return Trainer(model, batches, optimizer, criterion, use_bf16(cfg, device, log), initial_frozen)


@dataclass
class Position:
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
    schedule = Schedule(cfg, t.optimizer, len(t.batches))
    progress = resume_from(run, t, schedule, log) if resume else Position()
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
        stats = train_one_epoch(cfg, t, ddp_model, schedule, epoch, progress, d, run, stop)
        if stats is None:
            log(f"stopping at epoch {epoch + 1}: cancel requested (last.pt keeps the last finished epoch)")
            return True
        lr_now = t.optimizer.param_groups[0]["lr"]
        row = {"kind": "epoch", "epoch": epoch + 1, "step": progress.step, "train_loss": stats.train_loss,
               "train_accuracy": stats.train_accuracy, "lr": lr_now, "images_per_s": stats.images_per_s,
               "seconds": stats.seconds}
        val: dict | None = None
        if len(td.val):
            val, val_loss = evaluate(cfg, model, td, device, eval_bf16(cfg, t.amp))
            score = val[cfg.early_stopping_metric]
            schedule.after_epoch(score)
            # a cross-validation fold is scored at its last epoch, as its refit will be: choosing the best epoch on
            # the fold it is scored on would flatter the out-of-fold figures (core.experiment.cv)
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
    return False


def resume_from(run: Run | None, t: Trainer, schedule: Schedule, log) -> Position:
    """Load last.pt's weights, optimizer, schedule and RNG state into `t`; where the run stood."""
    if run is None or not run.last_checkpoint.is_file():
        raise CheckpointError("nothing to resume: the run has no last.pt yet")
    last = read_checkpoint(run.last_checkpoint)  # one read: weights and optimizer/scheduler state
    state = TrainState.of(last, run.last_checkpoint)
    t.model.load_state_dict(last["state_dict"])
    t.optimizer.load_state_dict(state.optimizer)
    schedule.load_state_dict(state.scheduler)
    torch.set_rng_state(state.rng)
    run.keep_metrics_through(state.epoch + 1)
    run.update_status(best=best_epoch_row(run.metrics()))
    log(f"resuming after epoch {state.epoch + 1}")
    return Position(start_epoch=state.epoch + 1, best_score=state.best_score, best_epoch=state.best_epoch,
                    bad_epochs=state.bad_epochs, step=state.step)


def train_one_epoch(cfg: RunConfig, t: Trainer, model: nn.Module, schedule: Schedule, epoch: int,
                    progress: Position, d: Dist, run: Run | None, stop: StopFlag) -> EpochStats | None:
    """One pass over this rank's batches (`progress.step` counts them); None when a cancel stopped it."""
    steps = len(t.batches)
    device = t.batches.device
    if run:
        run.update_status(epoch=epoch + 1, step_in_epoch=0, steps_per_epoch=steps, epoch_started_at=now_iso())
    # Sums stay on the device: reading a value back stalls a GPU, so it happens once per log_every steps.
    t0, seen = time.perf_counter(), 0
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not d.main,
               mininterval=2.0, dynamic_ncols=True)
    try:
        for i, (x, target, y) in enumerate(t.batches.epoch(epoch)):
            # a cancel is a file on disk; with several ranks agreeing on it is a collective, so less often
            if (d.world == 1 or i % cfg.log_every == 0) and d.any(bool(stop), device):
                return None
            logits, loss = optimizer_step(model, t.criterion, t.optimizer, x, target, device, t.amp)
            schedule.after_batch()
            progress.step += 1
            seen += len(y)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            bar.update(1)
            if progress.step % cfg.log_every == 0 or i == steps - 1:
                loss_value = finite_loss(loss, epoch, i)
                if run:
                    elapsed = time.perf_counter() - t0
                    run.append_metrics({"kind": "step", "epoch": epoch + 1, "step": progress.step,
                                        "train_loss": loss_value, "lr": t.optimizer.param_groups[0]["lr"]})
                    run.update_status(step_in_epoch=i + 1, images_per_s=seen * d.world / elapsed,
                                      eta_epoch_s=elapsed / (i + 1) * (steps - i - 1))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return EpochStats(train_loss=finite_loss(loss_sum / max(1, seen), epoch, steps - 1),
                      train_accuracy=None if t.batches.mixes else int(correct) / max(1, seen),
                      images_per_s=seen * d.world / seconds, seconds=seconds)


def evaluate(cfg: RunConfig, model: nn.Module, td: TrainData, device: torch.device, amp: bool) -> tuple[dict, float]:
    """The model's validation metrics (`core.metrics.classification_metrics`) and loss, after an epoch."""
    logits = training_model_logits(model, td.val.tiles, NUM_CLASSES, td.mean, td.std, cfg.input_size, device,
                                   cfg.batch_size * 2, amp, cfg.channels_last)
    probs = probabilities(logits)
    val = classification_metrics(td.val.labels.numpy(), probs)
    if td.val_groups and len(td.val_groups) == len(probs):  # each epoch's figures with their 95% intervals
        val["intervals"] = intervals(td.val.labels.numpy(), probs.argmax(1), td.val_groups, NUM_CLASSES)
    return val, float(nn.functional.cross_entropy(torch.from_numpy(logits), td.val.labels))


def val_row(val: dict, val_loss: float) -> dict:
    """An epoch row's validation fields."""
    return {"val_loss": val_loss, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "val_balanced_accuracy": val["balanced_accuracy"],
            "val_recall": {c["class"]: c["recall"] if c["support"] else None for c in val["per_class"]},
            "val_support": {c["class"]: c["support"] for c in val["per_class"]},
            **({"val_intervals": {k: val["intervals"].get(k) for k in HEADLINE}} if val.get("intervals") else {})}


def save_checkpoints(run: Run, cfg: RunConfig, t: Trainer, schedule: Schedule, td: TrainData, val: dict | None,
                     epoch: int,
                     progress: Position, best_row: dict | None) -> None:
    """last.pt after every epoch (with what resuming needs); best.pt too when the epoch improved (`best_row`)."""
    payload = _payload(cfg, t.model, td, val, epoch + 1)
    if best_row is not None:
        run.save_checkpoint("best", payload)
        run.update_status(best=best_row)
    payload["train_state"] = TrainState(t.optimizer.state_dict(), schedule.state_dict(), epoch, progress.best_score,
                                        progress.best_epoch, progress.bad_epochs, progress.step,
                                        torch.get_rng_state()).to_dict()
    run.save_checkpoint("last", payload)


def _payload(cfg: RunConfig, model: nn.Module, td: TrainData, val: dict | None, epoch: int) -> dict:
    if val is None:  # a refit: its figures are the cross-validation's (`finish` records them)
        metrics: dict = {"split": None}
    else:
        metrics = {k: val[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                       "majority_baseline", "per_class", "n")}
        metrics["split"] = "val"
    return checkpoint_payload(model, arch=cfg.model, image_size=cfg.input_size, mean=td.mean, std=td.std,
                              config=cfg.to_dict(), metrics=metrics, epoch=epoch, splits=split_manifest(td.data))

