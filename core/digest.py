"""A file's digest, read a MiB at a time: the one way files are fingerprinted (a download against Zenodo's MD5, an
ONNX twin against its checkpoint, a labelling queue against its model, Explore's feature cache)."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of the file at `path` (`algorithm`: any hashlib name), read once per version of the file
    (a model is loaded by every page, scan worker and CLI: its twin's check must not reread it each time)."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), algorithm, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, algorithm: str, size: int, mtime_ns: int) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
