"""Labelling queues: the windows of a source that a person should label, ranked by a strategy, each with its tile,
its context in the image around it and what the model said about it.

A queue is a folder: `queue.json` (what made it: source, strategy, model, classes; and its candidates) with
`tiles/NNNNN.png` (the window as the model saw it) and `context/NNNNN.png` (the window outlined in the image
around it). It is written whole into a hidden folder beside its place and renamed there: a queue is there
complete or not at all. The candidates are read one pass over the source: every window's calibrated
probabilities, features and typicality from one forward pass of the model (`core.inference`)."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.classes import CLASS_NAMES
from core.digest import file_digest
from core.experiment.runs import now_iso
from core.imageio import IMAGE_SUFFIXES, TILE_SIZE

from .strategies import STRATEGIES, Pool, StrategyError, rank

FORMAT = "hirise-studio-queue/1"
#: The most windows one queue reads from its source (a uniform sample beyond it, said in the queue's notes): a
#: whole observation holds tens of thousands of tiles; features of 5,000 take 25 MB and one k-center pass 5 s.
MAX_WINDOWS = 5000
MAX_BUDGET = 1000
CONTEXT_SIDE = 3  # the context shows this many windows across, the candidate in the middle
_OBSERVATION = re.compile(r"^([A-Z]{3}_\d{6}_\d{4})(?:_([A-Z0-9]+))?", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class QueueError(ValueError):
    """A queue that cannot be made or read: one line saying why; nothing half-made is left."""


@dataclass(frozen=True)
class Window:
    image: Path  # the file it is cut from
    x: int
    y: int
    size: int


@dataclass
class Queue:
    """A queue read back from its folder (`load`)."""

    path: Path
    meta: dict[str, Any]
    candidates: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.path.name

    def tile(self, index: int) -> np.ndarray:
        """The candidate's tile (QueueError when its file was deleted or damaged)."""
        return _read_png(self.path / self.candidates[index]["tile"], f"candidate {index + 1}'s tile")

    def context(self, index: int) -> np.ndarray | None:
        try:
            return _read_png(self.path / self.candidates[index]["context"], "its context", "RGB")
        except QueueError:
            return None

    def window_problem(self, index: int) -> str | None:
        """Why candidate `index`'s window is not a window of its image (a queue edited by hand), or None. An image
        that is gone since is no problem: the queue keeps the tile itself."""
        c = self.candidates[index]
        image = Path(c["image"])
        if not image.is_file():
            return None
        try:
            width, height = _image_size(image)
        except (OSError, ValueError):
            return None
        if c["x"] + c["size"] > width or c["y"] + c["size"] > height:
            return (f"candidate {index + 1}'s window (x {c['x']}, y {c['y']}, {c['size']} px) lies outside its image "
                    f"{image.name} ({width}x{height} px): the queue was changed by hand; skip it")
        return None

    def whole_image(self, index: int) -> Path | None:
        """The image file when candidate `index` is all of it (a tile of a folder of tiles), else None: its label
        then keeps the file's own bytes, so merging it with a data set that holds the same tile finds the copy
        (and a label conflict) by content, as for any two sources."""
        c = self.candidates[index]
        image = Path(c["image"])
        if c["x"] or c["y"] or not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
            return None
        try:
            return image if _image_size(image) == (c["size"], c["size"]) else None
        except (OSError, ValueError):
            return None

    def problems(self, class_names: Sequence[str] = CLASS_NAMES, model_digest: str | None = None) -> list[str]:
        """What a labeller should know before starting: another class list (refuse), another model (a note)."""
        said = []
        if list(self.meta.get("class_names", [])) != list(class_names):
            said.append(f"this queue was made for the classes {', '.join(self.meta.get('class_names', []))}, not "
                        f"the studio's ({', '.join(class_names)}); its labels would not mean the same")
        if model_digest and self.meta.get("model", {}).get("digest") != model_digest:
            said.append(f"this queue was ranked by {self.meta.get('model', {}).get('name', 'another model')}, not "
                        "the current default: its order reflects what that model was unsure of (the labels are "
                        "as good)")
        return said


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header: PIL for plain images, GDAL for observations (never decoded)."""
    from core.scan.raster import GDAL_SUFFIXES, open_raster

    if path.suffix.lower() in GDAL_SUFFIXES:
        with open_raster(path) as raster:
            h, w = raster.shape
            return w, h
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def parse_budget(text: str) -> int:
    """A budget as typed (page or CLI): a whole number from 1 to MAX_BUDGET, or QueueError saying why not."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise QueueError(f"budget {str(text).strip()[:20]!r} is not a whole number: give 1 to {MAX_BUDGET}") from None
    if not 1 <= value <= MAX_BUDGET:
        raise QueueError(f"budget {value}: give 1 to {MAX_BUDGET} windows")
    return value


def valid_name(name: str) -> str:
    """A queue's folder name as typed by a person: letters, digits, '_', '-', '.'; never a path."""
    name = (name or "").strip()
    if not _NAME.match(name) or name in (".", ".."):
        raise QueueError(f"queue name {name[:40]!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
                         "letter or digit")
    return name


def observation_of(image: Path) -> str | None:
    """The HiRISE observation an image belongs to, from its name (ESP_011283_2265_RED.JP2, ESP_011283_2265_RED-0030
    .jpg): new tiles are then grouped with their observation when they train. None for other names."""
    m = _OBSERVATION.match(image.name)
    return m.group(0).upper() if m else None


def find_inputs(source: Path) -> tuple[list[Path], list[str]]:
    """The images of a source: an image, a folder of images, or a scan's folder (its observations)."""
    from core.scan.scanner import find_sources

    source = Path(source)
    request = source / "request.json"
    if request.is_file():  # a scan job's folder: the observations it scanned
        try:
            inputs = [Path(p) for p in json.loads(request.read_text()).get("inputs", [])]
        except (OSError, ValueError, AttributeError) as exc:
            raise QueueError(f"{request}: not a scan's request ({exc})") from None
        if not inputs:
            raise QueueError(f"{source}: this scan lists no observations")
    else:
        inputs = [source]
    sources, problems = find_sources(inputs, 0, None)
    return [Path(s.path) for s in sources], problems


def plan_windows(images: Sequence[Path], max_windows: int = MAX_WINDOWS, seed: int = 0
                 ) -> tuple[list[Window], list[str]]:
    """Every tile-sized window of every image (a tile-sized image is one window), sampled down to
    `max_windows` uniformly at random when there are more, with a note."""
    from core.scan.raster import RasterError, open_raster
    from core.tiling import window_starts

    windows, notes = [], []
    for path in images:
        try:
            with open_raster(path) as raster:
                h, w = raster.shape
        except (RasterError, OSError, ValueError) as exc:
            notes.append(f"{path.name}: skipped ({exc})")
            continue
        if min(h, w) < TILE_SIZE:
            notes.append(f"{path.name}: skipped, {w}x{h} px is smaller than a {TILE_SIZE} px tile")
            continue
        windows += [Window(path, x, y, TILE_SIZE) for y in window_starts(h, TILE_SIZE, TILE_SIZE)
                    for x in window_starts(w, TILE_SIZE, TILE_SIZE)]
    if len(windows) > max_windows:
        keep = np.sort(np.random.default_rng(seed).choice(len(windows), max_windows, replace=False))
        notes.append(f"the source holds {len(windows):,} windows; a uniform sample of {max_windows:,} was read")
        windows = [windows[i] for i in keep]
    return windows, notes


class _Cut:
    """The windows' tiles, cut when a batch asks (`core.inference` reads tiles in slices): one image open at a
    time, never every tile of the source in memory."""

    def __init__(self, windows: Sequence[Window]):
        self.windows = windows
        self._open: tuple[Path, Any] | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def _raster(self, path: Path):
        from core.scan.raster import open_raster

        if self._open is None or self._open[0] != path:
            self.close()
            self._open = (path, open_raster(path))
        return self._open[1]

    def __getitem__(self, index: slice) -> np.ndarray:
        picked = self.windows[index]
        out = np.empty((len(picked), TILE_SIZE, TILE_SIZE), np.uint8)
        for i, w in enumerate(picked):
            out[i] = self._raster(w.image).read(w.x, w.y, w.x + w.size, w.y + w.size)
        return out

    def context(self, w: Window, side: int = 400) -> np.ndarray:
        """RGB: the window outlined in yellow, in the image around it (CONTEXT_SIDE windows across)."""
        from PIL import Image, ImageDraw

        raster = self._raster(w.image)
        h, width = raster.shape
        half = w.size * CONTEXT_SIDE // 2
        cx, cy = w.x + w.size // 2, w.y + w.size // 2
        x0, y0 = max(0, cx - half), max(0, cy - half)
        x1, y1 = min(width, cx + half), min(h, cy + half)
        crop = Image.fromarray(raster.read(x0, y0, x1, y1)).convert("RGB")
        scale = min(1.0, side / max(crop.size))
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
        ImageDraw.Draw(crop).rectangle([(w.x - x0) * scale, (w.y - y0) * scale, (w.x + w.size - x0) * scale - 1,
                                        (w.y + w.size - y0) * scale - 1], outline=(255, 214, 0), width=2)
        return np.asarray(crop)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def make_queue(source: Path, out: Path, strategy: str, budget: int, checkpoint: Path | None = None,
               max_windows: int = MAX_WINDOWS, seed: int = 0, labelled_features: np.ndarray | None = None,
               on_progress: Callable[[int, int, str], None] | None = None) -> Queue:
    """Rank `source`'s windows by `strategy` and write the best `budget` as a queue at `out` (which must not
    exist yet: a queue being labelled is never replaced)."""
    from core.checkpoint import load_checkpoint
    from core.inference import predict_features, probabilities

    if strategy not in STRATEGIES:
        raise QueueError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if not 1 <= budget <= MAX_BUDGET:
        raise QueueError(f"budget {budget}: give 1 to {MAX_BUDGET} windows")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QueueError(f"{out} already exists; a queue is never written over (another name, or remove it)")
    images, problems = find_inputs(source)
    if not images:
        raise QueueError("; ".join(problems) or f"{source}: no images")
    windows, notes = plan_windows(images, max_windows, seed)
    notes = problems + notes
    if not windows:
        raise QueueError("; ".join(notes) or f"{source}: no tile-sized window in it")
    loaded = load_checkpoint(checkpoint)
    if STRATEGIES[strategy].needs_typicality and loaded.ood is None:
        raise QueueError(f"strategy {strategy}: {Path(str(loaded.path)).name} has no out-of-distribution reference")
    cut = _Cut(windows)
    try:
        features, logits = predict_features(loaded, cut, batch_size=32, on_progress=on_progress)
        probs = probabilities(logits, loaded.temperature)
        typical = loaded.ood.typicality(features) if loaded.ood is not None else None
        try:
            order = rank(Pool(probs, features, typical, labelled_features), strategy, budget, seed)
        except StrategyError as exc:
            raise QueueError(str(exc)) from None
        parent = out.parent
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".queue-", dir=parent))
        try:
            _write(stage, cut, windows, order, probs, typical, loaded, source, strategy, budget, seed, notes,
                   len(windows))
            try:
                if out.is_dir():
                    out.rmdir()  # empty: checked above
                stage.rename(out)
            except OSError:  # made meanwhile by another session or process
                raise QueueError(f"{out} already exists; a queue is never written over (another name, or remove "
                                 "it)") from None
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    finally:
        cut.close()
    return load(out)


def _write(folder: Path, cut: _Cut, windows: Sequence[Window], order: np.ndarray, probs: np.ndarray,
           typical: np.ndarray | None, loaded, source: Path, strategy: str, budget: int, seed: int,
           notes: list[str], read: int) -> None:
    from PIL import Image

    (folder / "tiles").mkdir()
    (folder / "context").mkdir()
    names = list(loaded.class_names)
    candidates = []
    for k, i in enumerate(order):
        w = windows[int(i)]
        tile, context = f"tiles/{k:05d}.png", f"context/{k:05d}.png"
        Image.fromarray(cut[int(i):int(i) + 1][0]).save(folder / tile)
        Image.fromarray(cut.context(w)).save(folder / context)
        p = probs[int(i)]
        top = np.argsort(-p)[:3]
        candidates.append({"index": k, "tile": tile, "context": context, "image": str(w.image),
                           "observation": observation_of(w.image), "x": w.x, "y": w.y, "size": w.size,
                           "probabilities": [round(float(v), 5) for v in p],
                           "top3": [[names[j], round(float(p[j]), 4)] for j in top],
                           "typicality": None if typical is None else round(float(typical[int(i)]), 4)})
    checkpoint = Path(str(loaded.path)) if loaded.path else None
    meta = {"format": FORMAT, "created": now_iso(), "source": str(source), "strategy": strategy,
            "strategy_description": STRATEGIES[strategy].description, "budget": budget, "seed": seed,
            "windows_read": read, "notes": notes, "class_names": names,
            "model": {"name": checkpoint.name if checkpoint else "", "path": str(checkpoint or ""),
                      "digest": file_digest(checkpoint)[:16] if checkpoint else ""},
            "candidates": candidates}
    (folder / "queue.json").write_text(json.dumps(meta, indent=1))


def _read_png(path: Path, what: str, mode: str = "L") -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except FileNotFoundError:
        raise QueueError(f"{what} ({path.name}) was deleted from the queue's folder; skip it or make the queue "
                         "again") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise QueueError(f"{what} ({path.name}) is damaged: {exc}") from None


def load(path: Path) -> Queue:
    """A queue folder, checked: QueueError in one line when it is missing, not a queue, or damaged."""
    path = Path(path)
    meta_path = path / "queue.json"
    if not meta_path.is_file():
        raise QueueError(f"{path}: not a labelling queue (no queue.json); was it deleted?")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise QueueError(f"{meta_path}: damaged ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise QueueError(f"{meta_path}: not a queue this studio reads (format {str(meta.get('format'))[:40]!r})"
                         if isinstance(meta, dict) else f"{meta_path}: not a queue")
    candidates = meta.pop("candidates", None)
    if not isinstance(candidates, list):
        raise QueueError(f"{meta_path}: its candidates are missing")
    for k, c in enumerate(candidates):
        if not (isinstance(c, dict) and isinstance(c.get("tile"), str) and isinstance(c.get("image"), str)
                and all(isinstance(c.get(f), int) and c[f] >= 0 for f in ("x", "y", "size"))
                and not Path(c["tile"]).is_absolute() and ".." not in Path(c["tile"]).parts
                and not Path(str(c.get("context", ""))).is_absolute()
                and ".." not in Path(str(c.get("context", ""))).parts):
            raise QueueError(f"{meta_path}: candidate {k + 1} is damaged (tile, image and window expected)")
    return Queue(path, meta, candidates)


def list_queues(root: Path) -> tuple[list[Queue], list[str]]:
    """The queues under `root`, newest first, and one line for each folder there that is not a readable queue."""
    queues, problems = [], []
    if not root.is_dir():
        return queues, problems
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            queues.append(load(p))
        except QueueError as exc:
            problems.append(str(exc))
    queues.sort(key=lambda q: str(q.meta.get("created", "")), reverse=True)
    return queues, problems
