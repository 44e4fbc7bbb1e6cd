"""Find the landmarks in whole observations (HiRISE browse JPEGs, JPEG 2000 RDRs at a resolution level,
GeoTIFFs, any large picture): windows at several sizes, each resized to a tile and classified through the one
inference path, the windows of one class that overlap merged into detections, with map coordinates and
latitude/longitude when the image has a PDS3 label or is georeferenced.

Why several sizes: the data set's tiles are square crops around a landmark plus a 30 px margin, resized to
227x227 from browse images where landmarks span roughly 60 to 600 pixels; a window much larger than a landmark
dilutes it into `other`, a much smaller one cuts it. Windows step by half their size (`--step`), so every
landmark lies well inside some window of a fitting size.

The work is cut into chunks (a few hundred windows of one size of one observation). In this process by default;
with `--cluster [ADDRESS]` the chunks go to Dask workers (a local cluster, or the scheduler at ADDRESS), each
loading the model once, and the results come back to be merged here: one path either way.

    python -m core.scan IMAGE|FOLDER ... --out DIR [--checkpoint F] [--sizes 96,192,384] [--threshold 0.9]
                        [--level N] [--label X.LBL] [--cluster [ADDRESS]]

writes DIR/detections.csv, DIR/detections.geojson, DIR/<image>.windows-<size>px.tif and DIR/<image>.overlay.png.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.checkpoint import CheckpointError, LoadedModel, load_checkpoint
from core.cliargs import add_engine_argument, number_in
from core.experiment.queue import Cancelled
from core.imageio import IMAGE_SUFFIXES
from core.progress import Counter
from core.scan.detections import ImageScan, WindowGrid, detections_of
from core.scan.georef import LabelError
from core.scan.raster import GDAL_SUFFIXES, Raster, RasterError, open_raster
from core.settings import (
    DEFAULT_CHECKPOINT,
    DEFAULT_SCAN_THRESHOLD,
    DEFAULT_TTA,
    SCAN_THRESHOLD_WHY,
    STANDARD_SCAN_THRESHOLD,
)
from core.tiling import Windows, count_windows

#: Window sides in image pixels: about the span of the data set's landmarks in browse images, a factor of two
#: apart. 96 px windows catch the smallest craters; 384 px ones the large dune fields.
DEFAULT_SIZES = (96, 192, 384)
MIN_WINDOW = 32
#: The largest window: 64 MiB of 8-bit pixels, read in pieces (core.scan.raster) and resized to a tile. A landmark larger
#: than this is scanned at a coarser resolution level, not with a window that alone would hold gigabytes.
MAX_WINDOW = 8192
#: Each window steps this fraction of its side: neighbours overlap by half, so a landmark no larger than half a
#: window lies whole inside one of them.
DEFAULT_STEP = 0.5
#: The JPL/PDS Imaging Atlas indexes tiles with a posterior of at least 0.9: the standard threshold here
#: (core.settings.STANDARD_SCAN_THRESHOLD). The default model's scans use its registry entry's, when it has one.
DEFAULT_THRESHOLD = STANDARD_SCAN_THRESHOLD
MAX_WINDOWS = 200_000  # a bound on the work one image may ask for; a finer scan is refused with the count
CHUNK = 256  # windows per unit of work: ~13 MB of tiles, a few seconds on one CPU core
SCAN_SUFFIXES = tuple(sorted(set(IMAGE_SUFFIXES) | set(GDAL_SUFFIXES)))


@dataclass(frozen=True)
class Source:
    """One observation to scan, as a worker anywhere can open it again: a path, a resolution level, a label."""

    path: str
    level: int = 0
    label: str | None = None

    def open(self) -> Raster:
        return open_raster(Path(self.path), self.level, Path(self.label) if self.label else None)


@dataclass(frozen=True)
class Chunk:
    """Windows [start, stop) of one size over observation number `image` of a scan: what one engine task
    classifies. `source` says how a worker elsewhere opens the observation (None: an image held in this process,
    which only the in-process engine can scan)."""

    source: Source | None
    image: int
    size: int
    stride: int
    start: int
    stop: int
    tta: bool = False  # each window's probabilities from the mean logits of its 8 flips and 90-degree turns


def check_sizes(sizes: Sequence[int], shape: tuple[int, int]) -> list[str]:
    """Problems with `sizes` for an image of `shape` (H, W), one sentence each; [] when every size fits."""
    h, w = shape
    problems = []
    for s in sorted({s for s in sizes if list(sizes).count(s) > 1}):
        problems.append(f"window size {s} px is given more than once")
    for s in dict.fromkeys(sizes):
        if s < MIN_WINDOW:
            problems.append(f"window {s} px is below the smallest, {MIN_WINDOW} px")
        elif s > MAX_WINDOW:
            problems.append(f"window {s} px is above the largest, {MAX_WINDOW} px (read the image at a coarser "
                            "resolution level)")
        elif s > min(h, w):
            problems.append(f"window {s} px is larger than the {w}x{h} image")
    return problems


def stride_of(size: int, step: float) -> int:
    return max(1, round(size * step))


def plan(raster: Raster, sizes: Sequence[int], step: float = DEFAULT_STEP) -> list[Windows]:
    """The windows of every size over `raster`; ValueError (one line) for sizes that do not fit or a scan over
    MAX_WINDOWS."""
    problems = check_sizes(sizes, raster.shape)
    if problems:
        raise ValueError(f"{raster.name}: " + "; ".join(problems))
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step {step} is not in (0, 1]")
    # counted from the image's size before any window is listed: a header declaring 100,000 x 100,000 px costs
    # nothing to refuse
    total = sum(count_windows(raster.shape, s, stride_of(s, step)) for s in sizes)
    if total > MAX_WINDOWS:
        raise ValueError(f"{raster.name}: {raster.width}x{raster.height} at window sizes {', '.join(map(str, sizes))} "
                         f"makes {total:,} windows, over the {MAX_WINDOWS:,} limit: use larger windows or a "
                         "coarser resolution level")
    return [Windows(raster, s, stride_of(s, step)) for s in sizes]


def chunks_of(source: Source | None, image: int, grids: list[Windows], chunk: int | None = None,
              tta: bool = False) -> list[Chunk]:
    chunk = chunk or CHUNK
    return [Chunk(source, image, g.size, g.stride, start, min(start + chunk, len(g)), tta)
            for g in grids for start in range(0, len(g), chunk)]


# --- what a worker does (in this process, or in a Dask worker) -------------------------------------------------
_MODELS: dict[str | None, LoadedModel] = {}
_OPEN: dict[Source, Raster] = {}


def worker_model(checkpoint: str | None) -> LoadedModel:
    """The model, loaded once per process (a Dask worker keeps it between tasks)."""
    if checkpoint not in _MODELS:
        from core.checkpoint import load_checkpoint

        _MODELS[checkpoint] = load_checkpoint(checkpoint) if checkpoint else load_checkpoint()
    return _MODELS[checkpoint]


def _opened(source: Source) -> Raster:
    """The observation, kept open between its chunks (only the last one: chunks come observation by observation)."""
    if source not in _OPEN:
        for old in _OPEN.values():
            old.close()
        _OPEN.clear()
        _OPEN[source] = source.open()
    return _OPEN[source]


def classify(loaded: LoadedModel, raster: Raster, chunk: Chunk, batch_size: int = 32
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, C) calibrated probabilities and (n,) typicality (None without a reference) of a chunk's windows."""
    from core.predict import proba_and_typicality

    windows = Windows(raster, chunk.size, chunk.stride)
    probs, typical = proba_and_typicality(loaded, windows[chunk.start:chunk.stop], batch_size, tta=chunk.tta)
    return probs.astype(np.float32), None if typical is None else np.asarray(typical, np.float32)


def worker_task(chunk: Chunk, checkpoint: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A chunk on a Dask worker: the model loaded once per worker, one torch thread (a worker has one core)."""
    import torch

    torch.set_num_threads(1)
    return classify(worker_model(checkpoint), _opened(chunk.source), chunk)


#: chunk index -> its (probabilities, typicality), or the reason it is missing
Results = dict[int, "tuple[np.ndarray, np.ndarray | None] | str"]


class Stopped(RuntimeError):
    """The scan was cancelled; nothing is written."""


def run_in_process(chunks: list[Chunk], loaded: LoadedModel, images: Sequence[Source | Raster],
                   on_chunk: Callable[[int], None], should_stop: Callable[[], bool] = lambda: False) -> Results:
    """Every chunk here. A file is opened when its first chunk comes and closed when the next file's does (one
    observation in memory at a time, as on a worker); an image already open is read where it is."""
    results: Results = {}
    try:
        for k, chunk in enumerate(chunks):
            if should_stop():
                raise Stopped("cancelled")
            item = images[chunk.image]
            results[k] = classify(loaded, item if isinstance(item, Raster) else _opened(item), chunk)
            on_chunk(chunk.stop - chunk.start)
    finally:
        for raster in _OPEN.values():
            raster.close()
        _OPEN.clear()
    return results


# --- a whole scan ---------------------------------------------------------------------------------------------
def scan(images: Sequence[Source | Raster], loaded: LoadedModel | None = None, checkpoint: str | None = None,
         sizes: Sequence[int] = DEFAULT_SIZES, step: float = DEFAULT_STEP, threshold: float = DEFAULT_THRESHOLD,
         cluster: str | None = None, workers: int = 2, on_progress: Callable[[int, int, str], None] | None = None,
         should_stop: Callable[[], bool] = lambda: False, tta: bool = False) -> list[ImageScan]:
    """Scan every observation: plan (every image opened and checked first, so a bad one fails before any work),
    classify every chunk on the engine, then assemble each image's window grids and detections.

    `images`: Sources (files) or Rasters already open (in this process only). `cluster`: None scans in this
    process; "local" on a Dask cluster of `workers` processes started here; anything else is a scheduler address.
    A chunk lost for good on the cluster leaves its windows NaN and a note on its image, never a silent gap."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not in (0, 1]")
    if cluster is not None and not all(isinstance(i, Source) for i in images):
        raise ValueError("a cluster scans files; an image held in memory is scanned in this process")
    scans, chunks = [], []
    for i, item in enumerate(images):  # every observation checked before any work; none held open meanwhile
        raster = item if isinstance(item, Raster) else item.open()
        try:
            grids = plan(raster, sizes, step)
        finally:
            if raster is not item:
                raster.close()
        scans.append(ImageScan(raster.name, raster.width, raster.height, raster.georef, [],
                               [WindowGrid(g.size, list(g.rows), list(g.cols), np.empty((0, 0)), None)
                                for g in grids], notes=list(raster.notes)))
        chunks += chunks_of(item if isinstance(item, Source) else None, i, grids, tta=tta)
    total = sum(c.stop - c.start for c in chunks)
    if cluster is None:
        loaded = loaded if loaded is not None else worker_model(checkpoint)
        names = list(loaded.class_names)
        with Counter(total, "windows", on_progress, desc="scan") as progress:
            results = run_in_process(chunks, loaded, images, progress.add, should_stop)
    else:
        from core.experiment.cluster import connect, run_on_dask

        names = class_names_of(checkpoint)  # a bad checkpoint is said here, once, not by every task
        with connect(cluster, workers) as client, Counter(total, "windows", on_progress, desc="scan") as progress:
            results = run_on_dask(client, worker_task, chunks, checkpoint, progress.add, should_stop,
                                  fatal=(RasterError, ValueError))
        if results is None:
            raise Stopped("cancelled")
    for s in scans:
        s.class_names = names
        for g in s.grids:
            g.probabilities = np.full((len(g.rows) * len(g.cols), len(names)), np.nan, np.float32)
    for k, c in enumerate(chunks):
        grid = next(g for g in scans[c.image].grids if g.size == c.size)
        result = results.get(k, "never returned")
        if isinstance(result, str):
            scans[c.image].notes.append(f"windows {c.start}-{c.stop - 1} of size {c.size} px were not classified: "
                                        f"{result}")
            continue
        grid.probabilities[c.start:c.stop] = result[0]
        if result[1] is not None:
            if grid.typicality is None:
                grid.typicality = np.full(len(grid.probabilities), np.nan, np.float32)
            grid.typicality[c.start:c.stop] = result[1]
    for s in scans:
        s.detections = detections_of(s, threshold)
    return scans


def class_names_of(checkpoint: str | None) -> list[str]:
    """The class names a checkpoint predicts, read without building its model (the workers built it)."""
    from core.checkpoint import read_checkpoint
    from core.settings import DEFAULT_CHECKPOINT

    return list(read_checkpoint(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)["class_names"])


# --- outputs --------------------------------------------------------------------------------------------------
def output_names(scans: list[ImageScan]) -> list[str]:
    """A file-name stem per image: its name with anything but letters, digits, '.', '_' and '-' replaced, and
    numbered (-2, -3, ...) until no other image has it, ignoring case: `a-2.jpg`, `a.jpg` and `a.png` give `a-2`,
    `a` and `a-3`, never two images writing one file."""
    return output_stems([s.name for s in scans])


def output_stems(names: Sequence[str]) -> list[str]:
    import re

    stems: list[str] = []
    used = {re.sub(r"[^A-Za-z0-9._-]", "_", Path(n).stem).lstrip(".").lower() or "image" for n in names}
    taken: set[str] = set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem).lstrip(".") or "image"
        stem, n = base, 1
        while stem.lower() in taken or (n > 1 and stem.lower() in used - {base.lower()}):
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


STAGE_PREFIX = ".scan-"  # the hidden folder a scan's outputs are written in before they are moved into place


def _umask() -> int:
    """This process's umask, read without changing it (os.umask sets it, and other threads may be creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_outputs(out: Path, scans: list[ImageScan], rasters: Sequence[Raster | Source]) -> list[Path]:
    """Every output of a scan, written into a hidden folder first and moved into `out` only when all are written,
    all or nothing: a failure while moving puts back what was there (the files of an earlier scan) and removes
    what was new, so `out` is left as it was. The files are readable by all (0644 under the usual umask), as
    files a program writes are."""
    import shutil
    import tempfile

    from core.scan.detections import overlay_image, write_csv, write_geojson, write_png, write_window_grid

    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
    try:
        files = [stage / "detections.csv", stage / "detections.geojson"]
        write_csv(files[0], scans)
        write_geojson(files[1], scans)
        for s, stem, item in zip(scans, output_names(scans), rasters, strict=True):
            for g in s.grids:
                files.append(stage / f"{stem}.windows-{g.size}px.tif")
                write_window_grid(files[-1], s, g)
            raster = item.open() if isinstance(item, Source) else item
            try:
                preview, scale = raster.preview()
            finally:
                if raster is not item:
                    raster.close()
            files.append(stage / f"{stem}.overlay.png")
            write_png(files[-1], overlay_image(preview, s, scale))
        if len({f.name.lower() for f in files}) != len(files):  # output_stems makes them unique; never overwrite one
            raise OSError(f"two outputs would have one name: {sorted(f.name for f in files)}")
        mode = 0o666 & ~_umask()
        for f in files:
            os.chmod(f, mode)
        try:
            return _place(files, out, stage / ".previous")
        except OSError as exc:
            name = Path(exc.filename).name if exc.filename else "a file"
            raise ScanRefused(f"cannot write the outputs to {out}: {name}: {exc.strerror or exc}; nothing there was "
                              "changed") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _place(files: list[Path], out: Path, previous: Path) -> list[Path]:
    """Move `files` into `out`, all or none: each file already there is first kept (a hard link in `previous`),
    and a failure puts every moved file back as it was."""
    import contextlib
    import shutil

    previous.mkdir()
    placed: list[tuple[Path, bool]] = []
    try:
        for f in files:
            target = out / f.name
            kept = os.path.lexists(target)
            if kept:
                try:
                    os.link(target, previous / f.name, follow_symlinks=False)
                except OSError:  # a file system without hard links: a copy (a folder in the way stops here)
                    if target.is_dir() and not target.is_symlink():
                        raise
                    shutil.copy2(target, previous / f.name, follow_symlinks=False)
            os.replace(f, target)
            placed.append((target, kept))
    except BaseException:
        for target, kept in reversed(placed):
            with contextlib.suppress(OSError):
                if kept:
                    os.replace(previous / target.name, target)
                else:
                    target.unlink()
        raise
    return [target for target, _ in placed]


class OutputFolder:
    """`--out`, made ready before any work and held for the scan: created if needed (its path made absolute first,
    so `X/a/../../out` creates `out`, not a stray `X/a`), locked so that a second scan into it is refused instead of
    mixing its files with this one's, cleared of the hidden stage folders a killed scan left, and checked writable.
    `release(failed=True)` removes the folders it created when nothing was written: a refusal leaves no empty
    `--out` behind."""

    def __init__(self, out: Path):
        import errno
        import fcntl
        import re
        import shutil
        import tempfile

        self.path = Path(os.path.realpath(out))
        self.created: list[Path] = []
        self.fd: int | None = None
        missing = []
        here = self.path
        while not os.path.lexists(here):
            missing.append(here)
            here = here.parent
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self.created.append(folder)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ScanRefused(f"another scan is writing its outputs to {self.path}; wait for it to finish or "
                                  "give another --out") from None
            except OSError as exc:  # a file system without locks: the scan goes on unlocked, as before
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise
            for old in self.path.iterdir():  # a killed scan's stage: only a scan holding the lock writes one
                if re.fullmatch(re.escape(STAGE_PREFIX) + r"[A-Za-z0-9_]{8}", old.name) and old.is_dir() \
                        and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except ScanRefused:
            self.release(failed=True)
            raise
        except OSError as exc:
            self.release(failed=True)
            raise ScanRefused(f"cannot write the outputs to {out}: {exc.strerror or exc}") from None

    def release(self, failed: bool = False) -> None:
        if self.fd is not None:
            os.close(self.fd)  # and the lock with it
            self.fd = None
        if failed:
            for folder in reversed(self.created):
                try:
                    folder.rmdir()  # only when empty: nothing of anyone's is removed
                except OSError:
                    break
            self.created = []


class ScanRefused(OSError):
    """The scan cannot start; the message says why in one line."""


def check_writable(out: Path) -> None:
    """Refuse a folder that cannot take the outputs before any work is done (ScanRefused with the reason); creates
    nothing that is not there."""
    OutputFolder(out).release(failed=True)


# --- command line ---------------------------------------------------------------------------------------------
def _allowing(parse: Callable[[str], float], allowed: str) -> Callable[[str], float]:
    """`parse`, its refusals ending with what is allowed (the page shows them under the field's name)."""

    def checked(text: str) -> float:
        try:
            return parse(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}; {allowed}") from None

    return checked


THRESHOLD_RANGE = "give a probability above 0 and at most 1"
STEP_RANGE = "give a fraction of the window side from 0.05 to 1"
LEVEL_RANGE = "give a whole number from 0 to 10"
SIZES_RANGE = f"give window sides in pixels, each at least {MIN_WINDOW}, comma-separated"  # and at most MAX_WINDOW


def _threshold(text: str) -> float:
    """--threshold: a probability in (0, 1]. 0 would call every window a landmark: refused here, as the argument
    is read, not later by `scan`."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty; {THRESHOLD_RANGE}")
    value = _allowing(number_in(float), THRESHOLD_RANGE)(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"{text.strip()} is above the maximum 1; {THRESHOLD_RANGE}")
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"{text.strip()} is not above 0; {THRESHOLD_RANGE}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    parse = _allowing(number_in(int, MIN_WINDOW, MAX_WINDOW), SIZES_RANGE)
    sizes = tuple(int(parse(part)) for part in text.split(",") if part.strip())
    twice = sorted({s for s in sizes if sizes.count(s) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(map(str, twice))} given more than once; {SIZES_RANGE}")
    return sizes


#: The first bytes of every kind of image this scans (a PDS .IMG may be raw pixels behind a label: not sniffed)
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
              b"II+\x00": "TIFF", b"MM\x00+": "TIFF", b"\x00\x00\x00\x0cjP  \r\n\x87\n": "JPEG 2000",
              b"\xffO\xffQ": "JPEG 2000", b"BM": "BMP", b"GIF87a": "GIF", b"GIF89a": "GIF", b"RIFF": "WebP"}


def observation_problem(path: Path, named: bool = True) -> str | None:
    """Why the file at `path` cannot be scanned, in one sentence (None when it can): checked when the scan is asked
    for, before anything is queued or opened. A missing file, a symbolic-link loop (said as such), a FIFO or
    device (never opened: reading a FIFO waits for a writer), a name this does not scan (`named`: given by name),
    an empty file, a file whose first bytes are no image's, a label with no image beside it."""
    import errno
    import glob
    import stat

    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"{path}: no such file or folder" + (" (a symbolic link to nothing)" if path.is_symlink() else "")
        return f"{path}: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        return f"{path}: {kind}, not an image file"
    suffix = path.suffix.lower()
    if named and suffix == ".lbl":  # a detached label: the image beside it is scanned
        image = next((p for p in sorted(path.parent.glob(glob.escape(path.stem) + ".*"))
                      if p.suffix.lower() != ".lbl"), None)
        if image is None:
            return f"{path}: a label, and no image named {path.stem}.* beside it"
        return observation_problem(image, named=False)
    if named and suffix not in SCAN_SUFFIXES:
        return f"{path}: not an observation this reads ({', '.join(SCAN_SUFFIXES)}, or a folder of them)"
    if st.st_size == 0:
        return f"{path}: an empty file (0 bytes)"
    if suffix == ".img":
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"{path}: cannot read it ({exc.strerror or exc})"
    if not any(head.startswith(magic) and (kind != "WebP" or head[8:12] == b"WEBP")
               for magic, kind in SIGNATURES.items()):
        return (f"{path}: not an image (its first bytes are those of no "
                f"{', '.join(dict.fromkeys(SIGNATURES.values()))} file)")
    return None


def find_sources(paths: Iterable[Path], level: int, label: Path | None) -> tuple[list[Source], list[str]]:
    """The observations named, and those directly inside folders named (sorted; labels are not observations), each
    checked (`observation_problem`) before any is opened."""
    sources, problems = [], []
    for p in paths:
        problem = observation_problem(p)
        if problem:
            problems.append(problem)
        elif p.is_dir():
            try:
                found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SCAN_SUFFIXES)
            except OSError as exc:
                problems.append(f"{p}: cannot list it ({exc.strerror or exc})")
                continue
            if not found:
                problems.append(f"{p}: no images in this folder ({', '.join(SCAN_SUFFIXES)})")
            problems += [problem for problem in map(observation_problem, found) if problem]
            sources += [Source(str(f), level) for f in found]
        else:
            sources.append(Source(str(p), level, str(label) if label else None))
    return sources, problems


def summary(scan_: ImageScan, threshold: float) -> str:
    counts: dict[str, int] = {}
    for d in scan_.detections:
        counts[d.label] = counts.get(d.label, 0) + 1
    where = f", georeferenced by {scan_.georef.source}" if scan_.georef else ", no georeferencing"
    return (f"{scan_.name}: {scan_.width}x{scan_.height}{where}; {len(scan_.detections)} detections "
            f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'}) at probability >= {threshold}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.scan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path,
                        help="observations (browse JPEG, JPEG 2000, GeoTIFF, PDS .IMG, PNG, ...) or folders of them")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs (created if needed)")
    parser.add_argument("--checkpoint", help="model (default: the shipped one)")
    add_engine_argument(parser)
    parser.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES,
                        help=f"window sides in pixels, comma-separated (default: {','.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--step", type=_allowing(number_in(float, 0.05, 1.0), STEP_RANGE), default=DEFAULT_STEP,
                        help=f"each window steps this fraction of its side (default: {DEFAULT_STEP})")
    parser.add_argument("--threshold", type=_threshold, default=None,
                        help="smallest calibrated probability kept, above 0 and at most 1 (default: "
                             f"{DEFAULT_SCAN_THRESHOLD} with the default model: {SCAN_THRESHOLD_WHY}; "
                             f"{DEFAULT_THRESHOLD} with any other)")
    parser.add_argument("--level", type=_allowing(number_in(int, 0, 10), LEVEL_RANGE), default=0,
                        help="read JPEG 2000 / tiled TIFF at this resolution level: 1/2**N of full size (default 0)")
    parser.add_argument("--label", type=Path, help="the PDS3 label of the one image given (default: X.LBL beside it)")
    parser.add_argument("--cluster", nargs="?", const="local", metavar="ADDRESS",
                        help="scan on Dask: a local cluster without ADDRESS, or the scheduler at ADDRESS "
                             "(e.g. tcp://10.0.0.5:8786); the files must be readable by the workers at the same paths")
    parser.add_argument("--workers", type=number_in(int, 1, 64), default=2,
                        help="worker processes of a local cluster (default 2)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=DEFAULT_TTA,
                        help="average each window's 8 flips and 90-degree turns (8x the compute; default: "
                             f"{'on' if DEFAULT_TTA else 'off'}, as the registry of defaults decided)")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # the app's scan job: status.json and CANCEL
    return parser


def default_threshold(checkpoint: str | Path | None) -> tuple[float, str]:
    """The threshold a scan uses unless told, and why: the default model's registry entry's (chosen out of fold),
    else the standard one."""
    if not checkpoint or Path(checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve():
        return DEFAULT_SCAN_THRESHOLD, SCAN_THRESHOLD_WHY
    return DEFAULT_THRESHOLD, "the scan's standard threshold"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threshold is None:
        args.threshold, why = default_threshold(args.checkpoint)
        print(f"threshold: {args.threshold} ({why})", flush=True)
    if not args.sizes:
        parser.error("--sizes: give at least one window size")
    if args.label and len(args.images) != 1:
        parser.error("--label: give exactly one image with it")
    sources, problems = find_sources(args.images, args.level, args.label)
    job = Job(args.job) if args.job else None
    out, files = None, []
    try:
        if problems:
            raise ValueError("; ".join(problems))
        out = OutputFolder(args.out)  # created, locked, cleared of a killed scan's stage, writable: or refused
        # the app's scans take the device's turn as training runs do (core.experiment.queue); a cluster's workers do the work
        loaded = None
        if not args.cluster:  # a cluster's workers load the model themselves (auto engine)
            loaded = load_checkpoint(args.checkpoint, engine=args.engine)
            print(f"engine: {loaded.engine_note}", flush=True)
        with job.device_turn() if job and not args.cluster else contextlib.nullcontext():
            scans = scan(sources, loaded=loaded, checkpoint=args.checkpoint, sizes=args.sizes, step=args.step,
                         threshold=args.threshold, cluster=args.cluster, workers=args.workers, tta=args.tta,
                         on_progress=job.progress if job else None, should_stop=job.stopped if job else lambda: False)
        files = write_outputs(out.path, scans, sources)
    except (Stopped, Cancelled):
        print("cancelled: nothing written", file=sys.stderr)
        if job:
            job.finish("cancelled")
        return 3
    except (CheckpointError, RasterError, LabelError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if job:
            job.finish("failed", error=str(exc))
        return 2
    finally:
        if out is not None:
            out.release(failed=not files)
    missing = 0
    for s in scans:
        print(summary(s, args.threshold), flush=True)
        for note in s.notes:
            print(f"  note: {note}")
        missing += s.missing
    print("-> " + ", ".join(str(f) for f in files))
    if job:
        job.finish("completed", missing=missing)
    if missing:
        print(f"error: {missing:,} windows were not classified (listed above); the outputs mark them", file=sys.stderr)
        return 4
    return 0


class Job:
    """The app's side of a scan run as a job: progress in status.json, a CANCEL file or SIGTERM to stop."""

    def __init__(self, folder: Path):
        from core.experiment.runs import now_iso

        self.folder, self.stop = folder, False
        self.t0, self.last = time.monotonic(), 0.0
        signal.signal(signal.SIGTERM, self._on_signal)
        from core.experiment.pids import process_start

        self._write(state="starting", started_at=now_iso(), pid=os.getpid(), pid_start=process_start(os.getpid()),
                    done=0, total=None)

    def _on_signal(self, *_: object) -> None:
        self.stop = True

    @contextlib.contextmanager
    def device_turn(self) -> Iterator[None]:
        """Queued until no job queued earlier wants this machine's device (training runs, CV folds, grid cells
        and other scans alike) and its lock is free; held while the scan works."""
        from core.experiment.jobs import device_key
        from core.experiment.queue import turn, waiting
        from core.experiment.runs import now_iso

        root, device = self.folder.parent.parent, device_key("auto")
        queued_at = now_iso()
        self._write(state="queued", device=device, queued_at=queued_at)
        me = (queued_at, f"scans/{self.folder.name}")

        def ahead() -> list[str]:
            return [name for key, name in waiting(root, device) if key < me and name != me[1]]

        with turn(root, device, ahead, self.stopped, poll_seconds=0.5):
            self._write(state="running", turn_at=now_iso())
            yield

    def stopped(self) -> bool:
        return self.stop or (self.folder / "CANCEL").exists()

    def progress(self, done: int, total: int, _: str) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and done < total:
            return
        self.last = now
        rate = done / (now - self.t0) if done else 0.0
        self._write(done=done, total=total, rate=round(rate, 2), eta_s=round((total - done) / rate) if rate else None)

    def finish(self, state: str, **more: object) -> None:
        from core.experiment.runs import now_iso

        self._write(state=state, ended_at=now_iso(), **more)

    def _write(self, **changes: object) -> None:
        from core.experiment.runs import update_json

        update_json(self.folder / "status.json", changes)
