"""Process plumbing of a training run: how a cancel reaches it (StopFlag), its place among distributed ranks
(Dist), and its seeds. Kept apart from the engine so that the engine reads as the loop it is."""
from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from core.experiment.jobs import device_key
from core.experiment.runs import Run
from core.training.config import ConfigError, RunConfig


class StopFlag:
    """Set by SIGTERM (also one that came while the program was still importing) or the run's CANCEL file;
    checked before the run starts, while it is queued, and between steps. In a thread other than the main one (a
    Dask worker's task) only the CANCEL file stops it: signals belong to the main thread."""

    def __init__(self, run: Run | None):
        early = getattr(sys.modules.get("__main__"), "_EARLY_SIGTERM", None)  # `python -m core.train` notes it
        self.run, self.set = run, bool(early)
        if threading.current_thread() is threading.main_thread():
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
