"""Optimizers, LR schedules, class weights and the LR range test, built from a RunConfig.

`OPTIMIZERS` and `SCHEDULERS` are the registries of those choices: RunConfig's field choices (hence its
validation, the CLI flags and the app's form) are their keys."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.models import head_parameters

if TYPE_CHECKING:
    from core.training.config import RunConfig

LRScheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


def parameter_groups(cfg: RunConfig, model: nn.Module) -> list[dict]:
    """The optimizer's parameter groups, the way nanoGPT's `configure_optimizers` makes them.

    Weights of convolutions and linear layers decay; biases and normalisation parameters (1-D) do not.
    The classifier head learns at `lr`, the backbone at `lr * backbone_lr_scale` (discriminative LRs).
    Every parameter goes in (frozen ones have no gradient and are skipped), so unfreezing needs no
    rebuild. Each group carries its `lr_scale`, which schedules and the LR finder multiply by."""
    head = head_parameters(model, cfg.model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        groups.setdefault((id(p) in head, p.dim() >= 2), []).append(p)
    out = []
    for (is_head, decays), params in sorted(groups.items(), reverse=True):  # head first: its LR is the one logged
        scale = 1.0 if is_head else cfg.backbone_lr_scale
        out.append({"params": params, "lr": cfg.lr * scale, "lr_scale": scale,
                    "weight_decay": cfg.weight_decay if decays else 0.0})
    return out


def _sgd(cfg: RunConfig, groups: list[dict], **kw) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **kw)


# name -> builder(cfg, parameter groups, fused kwargs): the one list of optimizers (RunConfig's choices, the
# form's, the CLI's)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda cfg, groups, **kw: torch.optim.Adam(groups, lr=cfg.lr, **kw),
    "nadam": lambda cfg, groups, **kw: torch.optim.NAdam(groups, lr=cfg.lr),  # no fused kernel
    "adamw": lambda cfg, groups, **kw: torch.optim.AdamW(groups, lr=cfg.lr, **kw),
    "sgd": _sgd,
}


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over `parameter_groups`; on CUDA the fused kernels update every parameter
    in one launch."""
    groups = parameter_groups(cfg, model)
    params = [p for g in groups for p in g["params"]]
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    return OPTIMIZERS[cfg.optimizer](cfg, groups, **fused)


def _cosine(cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LRScheduler:
    warm = min(cfg.warmup_epochs, cfg.epochs - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs - warm), eta_min=cfg.min_lr)
    if warm <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warm)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm])


@dataclass(frozen=True)
class SchedulerChoice:
    """How to build one LR schedule (None: a constant LR), when it steps (after every "batch", every "epoch", or
    every epoch with the validation "metric"), and whether it is laid out over the run's epochs (a resumed
    run cannot then change them)."""

    build: Callable[[RunConfig, torch.optim.Optimizer, int], LRScheduler | None]
    steps: str = "epoch"
    spans_run: bool = False


# name -> how to build and step it: the one list of schedules (RunConfig's choices, the form's, the CLI's)
SCHEDULERS: dict[str, SchedulerChoice] = {
    "none": SchedulerChoice(lambda cfg, opt, n: None),
    "step": SchedulerChoice(lambda cfg, opt, n: torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size,
                                                                                gamma=cfg.gamma)),
    "plateau": SchedulerChoice(lambda cfg, opt, n: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience), steps="metric"),
    "onecycle": SchedulerChoice(lambda cfg, opt, n: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[cfg.lr * g["lr_scale"] for g in opt.param_groups], epochs=cfg.epochs, steps_per_epoch=n,
        pct_start=cfg.pct_start), steps="batch", spans_run=True),
    "cosine": SchedulerChoice(_cosine, spans_run=True),
}


class Schedule:
    """A scheduler and when to step it: after every batch (OneCycleLR) or after every epoch."""

    def __init__(self, cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        if cfg.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {cfg.scheduler!r}")
        choice = SCHEDULERS[cfg.scheduler]
        self.per_batch, self.on_metric = choice.steps == "batch", choice.steps == "metric"
        self.scheduler = choice.build(cfg, optimizer, steps_per_epoch)

    def after_batch(self) -> None:
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def after_epoch(self, metric: float | None) -> None:
        if self.scheduler is None or self.per_batch:
            return
        if self.on_metric:
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def class_weights(labels: np.ndarray, num_classes: int, power: float = 1.0) -> torch.Tensor:
    """'Balanced' weights n / (k * n_c) for the classes present (absent classes get weight 1), to `power`.

    At power 0.5, their square root: rare classes still count more, but an 80%-majority class is not
    pushed down so far that the model stops answering it.
    """
    from sklearn.utils.class_weight import compute_class_weight  # scikit-learn only when training
    present = np.unique(labels)
    weights = np.ones(num_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.from_numpy(weights ** np.float32(power))


def loss_weights(imbalance: str, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """The cross-entropy class weights an imbalance policy asks for (None: unweighted)."""
    from core.choices import IMBALANCE_POLICIES
    power = IMBALANCE_POLICIES[imbalance].weight_power
    return class_weights(labels, num_classes, power) if power else None


def lr_range_test(step_fn: Callable[[float], float], start_lr: float = 1e-7, end_lr: float = 1.0,
                  num_steps: int = 100, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Leslie Smith's range test: raise the LR exponentially, one batch per step, and watch the loss.

    `step_fn(lr)` trains one batch at `lr` and returns its loss. Stops once the smoothed loss is 4x
    its best. The suggestion is the LR of the steepest fall of the smoothed loss (a common rule).
    """
    lrs, losses, smoothed = [], [], []
    best, avg = math.inf, 0.0
    gamma = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    for i in range(num_steps):
        lr = start_lr * gamma**i
        loss = float(step_fn(lr))
        if not math.isfinite(loss):
            break
        avg = 0.9 * avg + 0.1 * loss
        value = avg / (1 - 0.9 ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if on_step:
            on_step(i + 1, num_steps)
        if value > 4 * best and i > 10:
            break
    suggestion = None
    if len(smoothed) > 5:
        grads = np.gradient(np.array(smoothed), np.log10(np.array(lrs)))
        lo, hi = max(1, len(grads) // 10), max(2, len(grads) - len(grads) // 10)
        suggestion = float(lrs[lo + int(np.argmin(grads[lo:hi]))])
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "suggested_lr": suggestion}
