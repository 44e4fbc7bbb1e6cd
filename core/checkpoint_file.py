"""A checkpoint file's container: written atomically (`save_checkpoint`), and checked before anything is unpickled
and without importing torch: there, not empty, not a zip that inflates beyond what any checkpoint here holds. `core.checkpoint.read_checkpoint` checks the
rest (what the file holds); the Home page checks this much, so a broken default is named even where the registry
describes the model without reading it."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from core.atomic import atomic_path
from core.errors import CheckpointError

#: What a checkpoint may unpack to: the largest model here (ResNet-152) with its optimizer state is about 700 MiB.
#: Checked on the zip's directory before anything is read, so a small file that inflates to gigabytes costs nothing.
MAX_UNPACKED_BYTES = 1024 * 2**20


def check_container(path: Path, limit: int | None = None) -> None:
    """CheckpointError, in one line, when `path` is missing, empty or unpacks to more than `limit` bytes (default
    MAX_UNPACKED_BYTES). A file that is not a zip passes here: torch.load says why it cannot read it."""
    path = Path(path)
    limit = MAX_UNPACKED_BYTES if limit is None else limit
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): not a checkpoint")
    unpacked = unpacked_size(path)
    if unpacked > limit:
        raise CheckpointError(f"{path.name} unpacks to {unpacked / 2**20:,.0f} MiB, over the {limit / 2**20:,.0f}"
                              " MiB a checkpoint may hold here (a model and its training state are far smaller): "
                              "not loaded")


def unpacked_size(path: Path) -> int:
    """The total uncompressed size of a zip-format checkpoint's records (0 when it is not a zip: torch says why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically (a crash mid-write never leaves half a checkpoint behind)."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:  # a kill -9 leaves its temporary file: the run's next trainer clears it
        torch.save(payload, tmp)
    return path
