"""Scan chunks on Dask: a local cluster of worker processes, or a running scheduler anywhere.

Why Dask: its scheduler runs as plain Python processes (`pip install dask distributed`, no other service), a
LocalCluster starts here in seconds, and the same `Client(address)` code drives a real cluster (`dask scheduler` and
`dask worker ADDRESS` on each machine, or dask-jobqueue / dask-kubernetes). Each worker loads the model once
(core.scan keeps it per process) and opens an observation once for all its chunks. A worker that dies mid-task
has its tasks rerun elsewhere (Dask retries a task up to `distributed.scheduler.allowed-failures` times); a chunk
that still fails is reported by its windows, never dropped in silence.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from typing import Any

CONNECT_TIMEOUT_S = 10


class ClusterError(RuntimeError):
    """The cluster cannot be used; the message says why in one line."""


@contextmanager
def connect(address: str, workers: int) -> Iterator:
    """A client of the scheduler at `address`, or of a new local cluster ("local") of `workers` processes with one
    thread each (torch in a worker uses that one thread); closed (and the local cluster stopped) on leaving."""
    client = _client(address, workers)
    try:
        yield client
    finally:
        local = getattr(client, "cluster", None) if address == "local" else None
        client.close()
        if local is not None:
            local.close()


def _client(address: str, workers: int):  # noqa: ANN202 - a dask.distributed Client
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ClusterError(f"Dask is not installed ({exc}); pip install -r requirements.txt") from None
    if address == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=50)
        return Client(cluster)
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach a Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'})") from None


def run_on_dask(client, task: Callable, chunks: list, checkpoint: str | None,  # noqa: ANN001 - a dask Client
                on_chunk: Callable[[int], None], should_stop: Callable[[], bool] = lambda: False
                ) -> dict[int, Any] | None:
    """`task(chunk, checkpoint)` for every chunk on the cluster: chunk index -> its result, or the reason it failed
    for good (a string; its windows go unscanned, and the caller says so). An error in the data (a damaged
    observation) is raised as it would be in this process. None when `should_stop` said stop (the tasks are
    cancelled). The task comes from core.scan, which imports this module, not the other way round."""
    from dask.distributed import as_completed
    from distributed.scheduler import KilledWorker

    from .raster import RasterError

    index = {}
    futures = []
    for k, chunk in enumerate(chunks):
        future = client.submit(task, chunk, checkpoint, pure=False, key=f"scan-chunk-{k}-{time.time_ns()}")
        index[future.key] = k
        futures.append(future)
    results: dict[int, Any] = {}
    for future in as_completed(futures):
        if should_stop():
            client.cancel(futures)
            return None
        k = index[future.key]
        try:
            results[k] = future.result()
        except (RasterError, ValueError):
            client.cancel(futures)
            raise
        except KilledWorker as exc:
            results[k] = f"its worker died each time it ran ({str(exc).splitlines()[0][:120]})"
        except Exception as exc:  # noqa: BLE001 - any other failure of one task is reported with its windows
            results[k] = f"{type(exc).__name__}: {exc}"
        on_chunk(chunks[k].stop - chunks[k].start)
    return results
