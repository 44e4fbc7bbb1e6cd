"""Plan manifests: the one file that lists a plan's runs (a grid's cells, a cross-validation's folds).

    <runs>/.cv/<id>.json      a cross-validation (core.experiment.cv)
    <runs>/.grids/<id>.json   a grid (core.experiment.grid)

A plan is a list of `Task`s (a run's config, what the manifest records about it, and its name in messages).
`Manifests` is the one writer and reader of one kind's files:

- ids are made here, unique (the file is created exclusively), and checked on every read (`safe_name`): no
  path, no NUL, no leading dot;
- every change is a read-modify-write under an flock on `<id>.json.lock` (threads of the app and other
  processes alike), written atomically (readers see the old file or the new one);
- every read is checked by the kind's `problem` function, so a hand-edited file is refused or skipped by name.

Running a plan is the same for every kind: `launch` queues each task as a job (core.experiment.jobs: the device queue,
one turn at a time), `run_in_process` trains them one after another here, and `run_on_cluster` hands them to the
workers of a Dask cluster (core.experiment.cluster), the run folders on a file system every worker shares. Each records every
run in the manifest before it trains, so a plan never loses a run it started.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.experiment.runs import Run, now_iso, read_json, runs_root, write_json_atomic

if TYPE_CHECKING:
    import argparse

    from core.training.config import RunConfig


def safe_name(name: Any) -> bool:
    """A manifest's id or run name that names one entry of its folder: no path, no NUL, no leading dot."""
    return isinstance(name, str) and bool(name) and len(name) <= 200 and "/" not in name and "\\" not in name \
        and "\0" not in name and not name.startswith(".")


def new_manifest_id(folder: Path) -> str:
    """A fresh id (`20261121-201500-3fa2`) for a manifest in `folder` (a grid's, a cross-validation's), its file
    `<id>.json` created exclusively so that no two launches share one."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        manifest_id = f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        try:
            os.close(os.open(folder / f"{manifest_id}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return manifest_id
        except FileExistsError:
            continue


@dataclass(frozen=True)
class Task:
    """One run of a plan: its config, what the manifest records about it, its name in messages, its tag note."""
    config: RunConfig
    entry: dict[str, Any]
    label: str
    note: str


@dataclass(frozen=True)
class Manifests:
    """The manifests of one kind of plan, in `<runs>/<folder>/`."""
    folder: str
    noun: str
    tag_prefix: str
    problem: Callable[[Any, str], str | None]
    error: type[Exception]

    def dir(self, runs_dir: Path | None = None) -> Path:
        return runs_root(runs_dir) / self.folder

    def path(self, plan_id: str, runs_dir: Path | None = None) -> Path:
        """The manifest's file; the error type when `plan_id` is not a name of one file of the folder."""
        if not safe_name(plan_id):
            raise self.error(f"{plan_id!r} is not a {self.noun} id")
        return self.dir(runs_dir) / f"{plan_id}.json"

    def create(self, header: dict[str, Any], runs_dir: Path | None = None) -> tuple[str, Path]:
        """A new manifest holding `header` and no runs yet; its id is fresh (the file is created exclusively)."""
        plan_id = new_manifest_id(self.dir(runs_dir))
        path = self.path(plan_id, runs_dir)
        write_json_atomic(path, {"id": plan_id, "created_at": now_iso(), **header, "runs": []})
        return plan_id, path

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path.with_name(path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def change(self, path: Path, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read the manifest, let `edit` change it in place, write it back: one writer at a time."""
        with self._locked(path):
            manifest = read_json(path, {})
            manifest = manifest if isinstance(manifest, dict) else {}
            edit(manifest)
            write_json_atomic(path, manifest)
            return manifest

    def add_run(self, path: Path, entry: dict[str, Any]) -> None:
        """Append one entry to the manifest's runs."""
        self.change(path, lambda m: m.__setitem__("runs", [*m.get("runs", []), entry]))

    def record(self, path: Path, run: Run, task: Task) -> None:
        """List `run` in the manifest as `task`'s run, and tag it with the plan."""
        self.add_run(path, {"run": run.name, **task.entry})
        run.add_tag(self.tag_prefix + path.stem, task.note)

    def list(self, runs_dir: Path | None = None, skipped: list[str] | None = None) -> list[dict[str, Any]]:
        """The manifests that read as manifests, newest first; the others named in `skipped` ("file: why")."""
        found = []
        folder = self.dir(runs_dir)
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            raw = read_json(path)
            why = "not JSON" if raw is None else self.problem(raw, path.stem)
            if why:
                if skipped is not None:
                    skipped.append(f"{path.name}: {why}")
                continue
            found.append(raw)
        return sorted(found, key=lambda m: m["id"], reverse=True)

    def load(self, plan_id: str, runs_dir: Path | None = None) -> dict[str, Any]:
        """A manifest, checked; FileNotFoundError, or the kind's error, in one line."""
        path = self.path(plan_id, runs_dir) if safe_name(plan_id) else None
        manifest = read_json(path) if path else None
        if manifest is None:
            known = ", ".join(m["id"] for m in self.list(runs_dir)[:5]) or "none yet"
            raise FileNotFoundError(f"no {self.noun} {plan_id!r} in {self.dir(runs_dir)} (latest: {known})")
        problem = self.problem(manifest, path.stem)
        if problem:
            raise self.error(f"{self.noun} {plan_id}: its manifest {path} is damaged ({problem})")
        return manifest

    def launch(self, plan_id: str, tasks: Sequence[Task], runs_dir: Path | None = None) -> list[Run]:
        """Queue every task as a job (core.experiment.jobs: one per device at a time, oldest first). A launch failing half
        way (a full disk) raises JobError naming the runs already queued; the manifest lists those."""
        from core.experiment.jobs import JobError
        from core.experiment.jobs import launch as launch_job
        from core.training.config import ConfigError
        path = self.path(plan_id, runs_dir)
        runs: list[Run] = []
        for task in tasks:
            try:
                run = launch_job(task.config, runs_dir)
            except (ConfigError, JobError) as exc:
                done = f"; queued before it: {', '.join(r.name for r in runs)}" if runs else ""
                raise JobError(f"{self.noun} {plan_id}: {task.label} not queued: {exc}{done}") from None
            self.record(path, run, task)
            runs.append(run)
        return runs

    def run_in_process(self, plan_id: str, tasks: Sequence[Task], train: Callable[..., int],
                       runs_dir: Path | None = None, say: Callable[[str], None] = print,
                       result: Callable[[Run, dict], str] = lambda run, status: "") -> int:
        """Train the tasks one after another in this process (`train` is `core.training.runner.train`, passed in so that
        the plan modules do not import the engine), a progress line each, `result(run, status)` appended to its
        last. Returns an exit code; a cancelled run stops the rest (Ctrl-C is not caught: the run is then
        `lost`, resumable)."""
        from core.experiment.runs import RunLock, new_run_dir
        path = self.path(plan_id, runs_dir)
        short = self.tag_prefix.rstrip(":")
        code = 0
        for i, task in enumerate(tasks, 1):
            run = new_run_dir(task.config.name, runs_dir)
            with RunLock.acquire(run) as lock:
                run.begin(task.config.to_dict())
                self.record(path, run, task)
                say(f"[{short} {i}/{len(tasks)}] {task.label} -> {run.path}")
                rc = train(task.config, run, lock=lock)
            status = run.status()
            say(_ended(short, i, len(tasks), task, run, status, result))
            code = code or rc
            if status.get("state") == "cancelled":
                say(f"{self.noun} {plan_id}: stopped after a cancel; {len(tasks) - i} not started")
                return 1
        return code

    def run_on_cluster(self, plan_id: str, tasks: Sequence[Task], train: Callable[..., int], client: Any,
                       threads: int = 0, runs_dir: Path | None = None, say: Callable[[str], None] = print,
                       result: Callable[[Run, dict], str] = lambda run, status: "") -> int:
        """Train the tasks side by side on a Dask cluster (`client`: core.experiment.cluster.connect), each in its run folder,
        which every worker must see at the same path (a shared file system); `threads`: torch threads per task (0:
        the worker's default). A worker that dies mid-task has its task rerun on another (Dask's allowed-failures):
        the rerun resumes from the run's last.pt, or starts clean when no epoch had finished, so no epoch is
        counted twice. Returns an exit code."""
        from dask.distributed import as_completed

        from core.experiment.cluster import describe_error
        from core.experiment.jobs import job_state
        from core.experiment.runs import new_run_dir, runs_root
        path = self.path(plan_id, runs_dir)
        short = self.tag_prefix.rstrip(":")
        futures = {}
        for i, task in enumerate(tasks, 1):
            run = new_run_dir(task.config.name, runs_dir)
            run.begin(task.config.to_dict())
            run.update_status(state="submitted")  # not queued here: no local trainer is coming for it
            self.record(path, run, task)
            future = client.submit(train_on_worker, train, task.config.to_dict(), str(run.path.resolve()), threads,
                                   pure=False, key=f"{short}-{plan_id}-{run.name}")
            futures[future] = (i, task, run)
        say(f"{self.noun} {plan_id}: {len(tasks)} tasks on the Dask cluster (run folders in "
            f"{runs_root(runs_dir).resolve()})")
        code = 0
        for future in as_completed(futures):
            i, task, run = futures[future]
            try:
                rc = future.result()
            except Exception as exc:  # a task whose workers died each time, or that raised
                rc = 1
                if job_state(run) not in ("completed", "failed", "cancelled"):
                    run.update_status(state="failed", error=f"on the cluster: {describe_error(exc)}")
            say(_ended(short, i, len(tasks), task, run, run.status(), result))
            code = code or rc
        return code


def _ended(short: str, i: int, n: int, task: Task, run: Run, status: dict,
           result: Callable[[Run, dict], str]) -> str:
    """A task's last progress line, the same in this process and on a cluster: its state, `result`, its error."""
    from core.experiment.jobs import job_state
    return (f"[{short} {i}/{n}] {task.label}: {job_state(run, status)}{result(run, status)}"
            + (f": {status.get('error')}" if status.get("error") else ""))


def train_on_worker(train: Callable[..., int], config: dict[str, Any], run_path: str, threads: int) -> int:
    """One plan task on a Dask worker: the run folder's one trainer (its lock). A rerun after a worker died resumes
    from last.pt, or starts clean (the dead attempt's rows dropped) when no epoch had finished."""
    from core.experiment.runs import RunLock
    from core.training.config import RunConfig
    if threads:
        import torch
        torch.set_num_threads(threads)
    run, cfg = Run(Path(run_path)), RunConfig.from_dict(config)
    resume = run.last_checkpoint.is_file()
    with RunLock.acquire(run) as lock:
        if not resume:
            run.keep_metrics_through(0)
        return train(cfg, run, resume=resume, lock=lock)


def queue_or_run(args: argparse.Namespace, what: str, unit: str, see: str, launch: Callable[[], tuple[str, list]],
                 run: Callable[[], tuple[str, int]], report: Callable[[str], object]) -> int:
    """The end every plan command shares (`cv`, `grid`): with --queue, queue its runs and say how to `see` the
    result; else train them here or on --cluster, then print the report. `what` names the plan ("grid"), `unit`
    its runs ("folds"); a queue or cluster problem is one line."""
    from core.cliargs import refuse
    from core.experiment.cluster import ClusterError
    from core.experiment.jobs import JobError
    if args.queue and args.cluster:
        return refuse("--queue and --cluster: the device queue is this machine's; a cluster has its own scheduler")
    try:
        if args.queue:
            plan_id, runs = launch()
            print(f"{what} {plan_id}: queued {len(runs)} {unit}: {', '.join(r.name for r in runs)}\n{see} {plan_id}")
            return 0
        plan_id, code = run()
    except (JobError, ClusterError) as exc:
        return refuse(str(exc))
    report(plan_id)
    return code
