"""Work on Dask (scan chunks, a plan's folds and grid cells): a local cluster of worker processes, or a running
scheduler anywhere.

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
#: The most worker processes a local cluster is given (a typing slip beyond it, not a plan).
MAX_LOCAL_WORKERS = 64
#: The protocols a scheduler address may name: Dask's TCP (a bare HOST:PORT is TCP too) and TLS.
SCHEMES = ("tcp", "tls")


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


def check(address: str) -> None:
    """ClusterError (one line, within CONNECT_TIMEOUT_S) unless `address` is "local" or answers as a Dask
    scheduler: what the app checks before it hands a plan to a cluster in the background."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ClusterError(f"Dask is not installed ({exc}); pip install -r requirements.txt") from None
    if address != "local":
        _handshake(address, CONNECT_TIMEOUT_S)


def _client(address: str, workers: int):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ClusterError(f"Dask is not installed ({exc}); pip install -r requirements.txt") from None
    if address == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=50)
        return Client(cluster)
    timeout = CONNECT_TIMEOUT_S
    _handshake(address, timeout)
    try:
        return Client(address, timeout=timeout)
    except Exception as exc:
        raise ClusterError(f"cannot reach a Dask scheduler at {address} within {timeout} s ({describe_error(exc)})") from None


def describe_error(exc: BaseException) -> str:
    """`Type: first line of the message` (struct.error named as such), at most a line's worth."""
    kind = type(exc)
    name = kind.__name__
    if name == "error":  # struct.error, select.error: say whose
        name = f"{kind.__module__.lstrip('_')}.error"
    elif name.startswith("_"):  # numpy's _ArrayMemoryError: the MemoryError it is
        name = next(k.__name__ for k in kind.__mro__ if k.__module__ == "builtins")
    text = (str(exc).strip().splitlines() or ["no message"])[0]
    return f"{name}: {text[:160]}"


def _handshake(address: str, timeout: float) -> None:
    """Connect to `address` and exchange Dask's handshake, all within `timeout` seconds, or ClusterError in one line.

    Dask's own connect bounds only the TCP connection: a port that accepts and never answers hangs its handshake for
    ever, an HTTP server's reply is read as a frame of exabytes (MemoryError), a bogus frame is a struct.error, an
    unknown scheme a TypeError. Here each is one line within the timeout, before a Client is made."""
    import asyncio
    import socket

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location) if scheme in SCHEMES else (None, None)
    except Exception as exc:
        raise ClusterError(f"{address}: not a Dask scheduler address ({describe_error(exc)}); give tcp://HOST:PORT") from None
    if scheme not in SCHEMES:
        raise ClusterError(f"{address}: the {scheme}:// protocol is not one Dask work here uses "
                           f"({', '.join(SCHEMES)}); give tcp://HOST:PORT")
    try:  # nothing listening is said as such (Dask's own connect retries a refused port until the timeout)
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach a Dask scheduler at {address}: nothing answers there "
                           f"({describe_error(exc)})") from None

    async def exchange() -> None:
        comm = await connect(address, timeout=timeout)
        try:
            if not isinstance(comm.remote_info, dict) or "compression" not in comm.remote_info:
                raise ClusterError("it answered, but not as a Dask scheduler")
        finally:
            comm.abort()

    try:
        asyncio.run(asyncio.wait_for(exchange(), timeout))
    except ClusterError as exc:
        raise ClusterError(f"cannot use {address} as a Dask scheduler: {exc}") from None
    except TimeoutError:
        raise ClusterError(f"cannot reach a Dask scheduler at {address} within {timeout} s (something accepted the "
                           "connection but gave no Dask answer: is it a Dask scheduler's address?)") from None
    except OSError as exc:  # refused, unreachable, timed out connecting
        raise ClusterError(f"cannot reach a Dask scheduler at {address} within {timeout} s ({describe_error(exc)})") from None
    except Exception as exc:
        raise ClusterError(f"cannot use {address} as a Dask scheduler: it answered, but not as Dask does "
                           f"({describe_error(exc)})") from None


def threads_per_task(address: str, workers: int) -> int:
    """Torch threads for each task of a plan: this machine's cores shared by a local cluster's workers; a real
    cluster's workers keep their own default (0)."""
    import os
    return max(1, (os.cpu_count() or 1) // max(1, workers)) if address == "local" else 0


def run_on_dask(client, task: Callable, chunks: list, checkpoint: str | None,
                on_chunk: Callable[[int], None], should_stop: Callable[[], bool] = lambda: False,
                fatal: tuple[type[BaseException], ...] = (ValueError,)) -> dict[int, Any] | None:
    """`task(chunk, checkpoint)` for every chunk on the cluster: chunk index -> its result, or the reason it failed
    for good (a string; its windows go unscanned, and the caller says so). An error in the data (`fatal`: a damaged
    observation) is raised as it would be in this process. None when `should_stop` said stop (the tasks are
    cancelled). The task comes from core.scan, which imports this module, not the other way round."""
    from dask.distributed import as_completed
    from distributed.scheduler import KilledWorker

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
        except fatal:
            client.cancel(futures)
            raise
        except KilledWorker as exc:
            results[k] = f"its worker died each time it ran ({str(exc).splitlines()[0][:120]})"
        except Exception as exc:
            results[k] = f"{type(exc).__name__}: {exc}"
        on_chunk(chunks[k].stop - chunks[k].start)
    return results
