"""The LR range test (Smith, 2015) on a run's own model, data and optimizer: the engine's `set_up` and step, with
`core.training.optim.lr_range_test` sweeping the learning rate over the batches training takes (`ModelBatches`, mixing included);
the Train page draws its progress as it does an epoch's."""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from core.experiment.queue import Cancelled
from core.experiment.runs import Run
from core.training.batches import TrainData
from core.training.config import RunConfig
from core.training.engine import optimizer_step, set_up
from core.training.optim import lr_range_test
from core.training.process import Dist, StopFlag


def find_lr(cfg: RunConfig, td: TrainData, d: Dist, device: torch.device, log, stop: StopFlag,
            num_steps: int = 100, run: Run | None = None) -> dict:
    """The LR range test on this run's model, data and optimizer (`set_up`, as training); its progress goes to
    `run`'s status (batch i of `num_steps`, images/s, ETA) the way an epoch's does, so the app draws it the same way."""
    t = set_up(cfg, td, d, device, log)
    batches = t.batches.forever()
    t.model.train()

    def step(lr: float) -> float:
        if stop:
            raise Cancelled()
        x, target, _ = next(batches)
        for g in t.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        return float(optimizer_step(t.model, t.criterion, t.optimizer, x, target, device, t.amp)[1].detach())

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
