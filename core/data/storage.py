"""Read files from a folder or straight from a zip, addressed by relative POSIX paths."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from .records import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def safe_relpath(rel: str, where: str) -> str:
    """Reject absolute paths and `..` in paths that come from label files (no escaping the source)."""
    rel = rel.replace("\\", "/").strip()
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or rel.startswith("/") or ".." in parts or ":" in parts[0]:
        raise DataError(f"{where}: unsafe or empty path {rel!r} (must be relative, inside the data folder)")
    return "/".join(parts)


class Storage:
    """A folder or a zip. `root` is a prefix inside it (the zip's top folder, or '')."""

    def __init__(self, location: Path, root: str = ""):
        self.location = location
        self.root = root.strip("/")

    @staticmethod
    def open(path: str | os.PathLike) -> Storage:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"data path not found: {p}")
        if p.is_dir():
            return FolderStorage(p)
        if zipfile.is_zipfile(p):
            return ZipStorage(p)
        raise DataError(f"{p} is neither a folder nor a zip file")

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def at(self, root: str) -> Storage:
        return type(self)(self.location, root)  # type: ignore[call-arg]

    # Subclasses implement these.
    def exists(self, rel: str) -> bool: ...
    def read(self, rel: str) -> bytes: ...
    def list_dir(self, rel: str) -> list[str]: ...
    def subdirs(self, rel: str) -> list[str]: ...
    def find(self, file_name: str, max_depth: int = 2) -> str | None: ...
    def stat_key(self, rel: str) -> str: ...

    def describe(self) -> str:
        return str(self.location) + (f"!/{self.root}" if self.root else "")


class FolderStorage(Storage):
    def _path(self, rel: str) -> Path:
        return self.location / self._full(rel)

    def exists(self, rel: str) -> bool:
        return self._path(rel).is_file()

    def read(self, rel: str) -> bytes:
        return self._path(rel).read_bytes()

    def list_dir(self, rel: str) -> list[str]:
        d = self._path(rel)
        if not d.is_dir():
            return []
        return sorted(e.name for e in os.scandir(d) if e.is_file())

    def subdirs(self, rel: str) -> list[str]:
        d = self._path(rel)
        return sorted(e.name for e in os.scandir(d) if e.is_dir()) if d.is_dir() else []

    def find(self, file_name: str, max_depth: int = 2) -> str | None:
        """Return the relative folder holding `file_name`, searching shallow levels first."""
        level = [""]
        for _ in range(max_depth + 1):
            for rel in level:
                if self._path(f"{rel}/{file_name}" if rel else file_name).is_file():
                    return rel
            level = [f"{r}/{d}" if r else d for r in level for d in self.subdirs(r) if not d.startswith(".")]
        return None

    def stat_key(self, rel: str) -> str:
        st = self._path(rel).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


class ZipStorage(Storage):
    def __init__(self, location: Path, root: str = ""):
        super().__init__(location, root)
        try:
            self._zip = zipfile.ZipFile(location)
            self._infos = {i.filename: i for i in self._zip.infolist() if not i.is_dir()}
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot read zip {location}: {exc}") from exc

    def at(self, root: str) -> Storage:
        clone = object.__new__(ZipStorage)
        clone.location, clone.root, clone._zip, clone._infos = self.location, root.strip("/"), self._zip, self._infos
        return clone

    def exists(self, rel: str) -> bool:
        return self._full(rel) in self._infos

    def read(self, rel: str) -> bytes:
        try:
            return self._zip.read(self._infos[self._full(rel)])
        except KeyError as exc:
            raise DataError(f"{rel} is not in {self.describe()}") from exc

    def list_dir(self, rel: str) -> list[str]:
        prefix = self._full(rel).rstrip("/") + "/" if self._full(rel) else ""
        return sorted(n[len(prefix):] for n in self._infos if n.startswith(prefix) and "/" not in n[len(prefix):])

    def subdirs(self, rel: str) -> list[str]:
        prefix = self._full(rel).rstrip("/") + "/" if self._full(rel) else ""
        return sorted({n[len(prefix):].split("/", 1)[0] for n in self._infos if n.startswith(prefix) and "/" in n[len(prefix):]})

    def find(self, file_name: str, max_depth: int = 2) -> str | None:
        hits = [n for n in self._infos if n.rsplit("/", 1)[-1] == file_name and n.count("/") <= max_depth]
        if not hits:
            return None
        best = min(hits, key=lambda n: n.count("/"))
        folder = best.rsplit("/", 1)[0] if "/" in best else ""
        if self.root and folder.startswith(self.root):
            folder = folder[len(self.root):].strip("/")
        return folder

    def stat_key(self, rel: str) -> str:
        info = self._infos[self._full(rel)]
        return f"{info.file_size}:{info.CRC:08x}"


def content_digest(chunks: list[str]) -> str:
    h = hashlib.sha1()
    for c in chunks:
        h.update(c.encode())
        h.update(b"\0")
    return h.hexdigest()
