"""One way to report progress on long operations: tqdm on a terminal, or a callback for the app."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
#: Called as on_progress(done, total, description) after each step.
ProgressCallback = Callable[[int, int, str], None]


def track(items: Iterable[T], total: int, desc: str, on_progress: ProgressCallback | None = None) -> Iterator[T]:
    """Yield `items`, showing a tqdm bar (count, rate, ETA) or calling `on_progress` when given."""
    if on_progress is None:
        yield from tqdm(items, total=total, desc=desc, unit="tile", dynamic_ncols=True, mininterval=0.5)
        return
    on_progress(0, total, desc)
    step = max(1, total // 200)
    done = 0
    for done, item in enumerate(items, 1):
        yield item
        if done % step == 0 or done == total:
            on_progress(done, total, desc)


class Tiles(Protocol):
    """Anything that has a length and slices into uint8 tiles: an array, a tensor, `core.data.RecordTiles`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> Any: ...


def in_batches(tiles: Tiles, batch_size: int, desc: str, on_progress: ProgressCallback | None = None,
               show_progress: bool = True) -> Iterator[tuple[slice, Any]]:
    """(rows, tiles[rows]) `batch_size` at a time, with a progress bar that counts tiles (or `on_progress`;
    none at all without `show_progress`)."""
    n = len(tiles)
    steps = track(range(n), total=n, desc=desc, on_progress=on_progress) if show_progress else range(n)
    start = 0
    for i in steps:
        if i + 1 - start < batch_size and i < n - 1:
            continue
        yield slice(start, i + 1), tiles[start:i + 1]
        start = i + 1


class Counter:
    """A count of work done so far, reported as it grows: a tqdm bar (count, rate, ETA) on a terminal, or the
    app's callback (`on_progress(done, total, unit)`). Used as a context manager; `add(n)` after each piece."""

    def __init__(self, total: int, unit: str, on_progress: ProgressCallback | None = None, desc: str = ""):
        self.total, self.unit, self.done, self.callback, self.bar = total, unit, 0, on_progress, None
        if on_progress is None:
            self.bar = tqdm(total=total, desc=desc or unit, unit=unit.rstrip("s"), dynamic_ncols=True,
                            mininterval=0.5)
        else:
            on_progress(0, total, unit)

    def add(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            self.callback(self.done, self.total, self.unit)

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.close()
