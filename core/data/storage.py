"""Read files from a folder or straight from a zip, addressed by relative POSIX paths."""
from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from core.errors import first_line
from core.imageio import MAX_FILE_BYTES

from .records import DataError

CHUNK = 1 << 20
#: What reading a zip member can raise: a bad CRC, damaged deflate data, a truncated archive, an
#: unsupported method, an encrypted member.
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


class UnreadableFile(DataError):
    """One file of a source cannot be read (damaged, or larger than any tile may be): its tile is skipped
    with this reason, the rest of the source is used."""


def _too_large(rel: str, size: int | None = None) -> UnreadableFile:
    """`size`: what the file (or zip header) says; None when the bytes ran past the limit regardless."""
    told = f"{size / 2**20:,.1f} MiB" if size is not None else "more bytes than its header said"
    return UnreadableFile(f"{rel}: {told}, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit for one file (a damaged "
                          "file or a decompression bomb); skipped")


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
            if not os.access(p, os.R_OK | os.X_OK):
                raise DataError(f"{p}: the folder cannot be read (permission denied)")
            return FolderStorage(p)
        if zipfile.is_zipfile(p):
            return ZipStorage(p)
        if p.suffix.lower() == ".zip":
            raise DataError(f"{p} is not a readable zip file ({'empty' if p.stat().st_size == 0 else 'damaged or not a zip'})")
        raise DataError(f"{p} is neither a folder nor a zip file")

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def at(self, root: str) -> Storage:
        return type(self)(self.location, root)  # type: ignore[call-arg]

    def read(self, rel: str) -> bytes:
        return b"".join(self._chunks(rel))

    def digest(self, rel: str) -> str:
        """SHA-1 of the file's bytes, streamed: a large member is never held whole."""
        h = hashlib.sha1()
        for chunk in self._chunks(rel):
            h.update(chunk)
        return h.hexdigest()

    # Subclasses implement these. `_chunks` (and so `read` and `digest`) raise UnreadableFile for a damaged or
    # oversized file, having read at most MAX_FILE_BYTES of it, whatever its header claims.
    def _chunks(self, rel: str) -> Iterator[bytes]: ...
    def exists(self, rel: str) -> bool: ...
    def list_dir(self, rel: str) -> list[str]: ...
    def subdirs(self, rel: str) -> list[str]: ...
    def find(self, file_name: str, max_depth: int = 2) -> str | None: ...
    def stat_key(self, rel: str) -> str: ...

    def describe(self) -> str:
        return str(self.location) + (f"!/{self.root}" if self.root else "")


class FolderStorage(Storage):
    def _path(self, rel: str) -> Path:
        return self.location / self._full(rel)

    def _inside(self, path: Path) -> bool:
        """Whether `path`, links followed, lies inside the data folder: a symlink in a data folder is not a way to
        read files elsewhere on the machine (a link within the folder is fine)."""
        try:
            return path.resolve().is_relative_to(self.location.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            return False

    def exists(self, rel: str) -> bool:
        path = self._path(rel)
        return path.is_file() and self._inside(path)

    def _chunks(self, rel: str):
        if not self._inside(self._path(rel)):
            raise UnreadableFile(f"{rel}: a link to a file outside the data folder: not read")
        try:
            with open(self._path(rel), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    raise _too_large(rel, size)
                yield from _capped(iter(lambda: f.read(CHUNK), b""), rel)
        except OSError as exc:
            raise UnreadableFile(f"{rel}: cannot be read ({exc.strerror or first_line(exc)})") from exc

    def list_dir(self, rel: str) -> list[str]:
        d = self._path(rel)
        if not d.is_dir():
            return []
        return sorted(e.name for e in os.scandir(d) if e.is_file() and (not e.is_symlink() or self._inside(Path(e.path))))

    def subdirs(self, rel: str) -> list[str]:
        """The sub-folders of `rel`; none for a folder that cannot be listed (searching for a layout's files
        passes by what it may not read, such as /proc/1/cwd under a source of /)."""
        d = self._path(rel)
        try:
            return sorted(e.name for e in os.scandir(d) if e.is_dir()) if d.is_dir() else []
        except OSError:
            return []

    def find(self, file_name: str, max_depth: int = 2) -> str | None:
        """Return the relative folder holding `file_name`, searching shallow levels first."""
        level = [""]
        for _ in range(max_depth + 1):
            for rel in level:
                try:
                    if self._path(f"{rel}/{file_name}" if rel else file_name).is_file():
                        return rel
                except OSError:  # a folder it may not look into (/proc/1/cwd): not this one
                    continue
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

    def _chunks(self, rel: str):
        """The member's bytes, a chunk at a time: its declared size is checked before anything is
        decompressed, and the reading stops at the limit if the declaration lied."""
        try:
            info = self._infos[self._full(rel)]
        except KeyError as exc:
            raise DataError(f"{rel} is not in {self.describe()}") from exc
        if info.file_size > MAX_FILE_BYTES:
            raise _too_large(rel, info.file_size)
        try:
            with self._zip.open(info) as f:
                yield from _capped(iter(lambda: f.read(CHUNK), b""), rel)
        except ZIP_READ_ERRORS as exc:
            raise UnreadableFile(f"{rel}: damaged in {self.location.name} ({first_line(exc, 120)})") from exc

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


def _capped(chunks, rel: str):
    """Pass chunks on until they pass MAX_FILE_BYTES in all, then refuse (a file that grew, a lying header)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise _too_large(rel)
        yield chunk


def content_digest(chunks: list[str]) -> str:
    h = hashlib.sha1()
    for c in chunks:
        h.update(c.encode())
        h.update(b"\0")
    return h.hexdigest()
