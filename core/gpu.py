"""Whether torch can use a GPU here, asked without importing torch when no GPU driver is present: importing torch
takes seconds, and the pages that only describe the device (Home, Train's form) draw without it."""
from __future__ import annotations

import functools
from pathlib import Path

#: Present wherever a CUDA (NVIDIA) or ROCm (AMD, which torch also serves as 'cuda') driver is loaded.
DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


@functools.cache
def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch on a machine with no GPU driver."""
    if not any(Path(p).exists() for p in DRIVER_FILES):
        return False
    import torch

    return torch.cuda.is_available()
