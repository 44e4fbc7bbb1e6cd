"""Training jobs as separate processes: launched, queued one per device (core.experiment.queue), cancelled, found lost.

A job is a run folder plus a `python -m core.train` process started in its own session, so it
outlives the app that launched it (a browser refresh or an app restart loses nothing). The trainer
owns status.json and the metrics; the app writes only a new run's config.json, a CANCEL request, and
deletions the user asks for. Jobs for one device run one at a time, oldest first; a queued job
waits for its turn by itself (a file lock per device, released by the OS if the holder dies).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from core.experiment.pids import pid_alive
from core.experiment.runs import ACTIVE_STATES, Run, RunBusy, RunLock, new_run_dir, now_iso, runs_root
from core.gpu import cuda_available
from core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from core.training.config import RunConfig


def device_key(device: str) -> str:
    """The device a job will hold: 'cuda' when asked for (or auto) and present, else 'cpu'."""
    return "cuda" if device in ("auto", "cuda") and cuda_available() else "cpu"


def device_choices() -> tuple[str, ...]:
    """The devices a run may ask for on this machine (the form offers no cuda without a GPU)."""
    return ("auto", "cpu", "cuda") if cuda_available() else ("auto", "cpu")


def describe_device() -> str:
    if cuda_available():
        import torch

        props = torch.cuda.get_device_properties(0)
        return f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"CPU ({os.cpu_count()} cores; no GPU found)"


def observed_status(run: Run, status: dict | None = None) -> dict:
    """The run's status as a reader should see it (pass `status` when it is already read).

    A queued or running run whose trainer no longer holds the run lock vanished without saying so: it
    is 'lost' ('cancelled' when a cancel was asked for, which is how it ended). That is derived here and
    never written: the trainer owns status.json, and a reader may not even be allowed to write it.
    """
    status = dict(run.status() if status is None else status)
    status.setdefault("state", "lost")
    if status["state"] in ACTIVE_STATES and not run.trainer_alive():
        status = {"state": "lost", **run.status()}  # a trainer writes its last state before it lets go of the lock
        if status["state"] in ACTIVE_STATES:
            if run.cancel_requested():
                status.update(state="cancelled", error=None)
            else:
                status.update(state="lost", error=f"the training process (pid {status.get('pid', '?')}) "
                                                  "vanished without finishing")
    return status


def job_state(run: Run, status: dict | None = None) -> str:
    """The run's state, noticing a trainer that vanished ('lost'); a query: it writes nothing (see
    `observed_status`). Pass `status` when it is already read."""
    return observed_status(run, status)["state"]


class JobError(RuntimeError):
    """A job could not be launched; the message says why in one line."""


def launch(cfg: RunConfig, runs_dir: Path | None = None, lr_find: bool = False, resume: Run | None = None) -> Run:
    """Start a training (or LR-finder) job in the background and return its run at once.

    The run lock is taken here and handed to the job (`--lock-fd`), so a second trainer on the same run
    (a double click, a CLI `--resume`) is refused from the first instant, and readers never see a
    queued job without its lock. Nothing is queued unless the configuration is valid and ready (data found,
    weights here): ConfigError otherwise."""
    cfg.validate().check_ready(resume=resume is not None)
    where = resume.path if resume is not None else runs_root(runs_dir)
    try:
        if resume is not None:
            run = resume
        else:
            hint = (f"{cfg.name}-lrfind" if cfg.name else f"{cfg.model}-lrfind") if lr_find else \
                (cfg.name or f"{cfg.model}-{cfg.optimizer}")  # an LR test never takes the run's own name
            run = new_run_dir(hint, runs_dir)
        lock = RunLock.acquire(run)
    except RunBusy as exc:
        raise JobError(str(exc)) from None
    except OSError as exc:
        raise JobError(f"cannot write to {where}: {exc.strerror or exc}") from None
    try:
        if resume is not None:
            run.cancel_file.unlink(missing_ok=True)
        run.begin(None if resume is not None else cfg.to_dict(), kind="lr_find" if lr_find else "train",
                  resume=resume is not None, device=device_key(cfg.device))
        # it waits for its turn in a process without torch (core.experiment.queue), then becomes the trainer
        cmd = [sys.executable, "-m", "core.experiment.queue", str(run.path), device_key(cfg.device), "--",
               "lr-find" if lr_find else "run", "--run-dir", str(run.path), "--config", str(run.config_file),
               "--queue", "--lock-fd", str(lock.fd)]
        if resume is not None and not lr_find:
            cmd.append("--resume")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(PROJECT_ROOT)}
        with open(run.log_file, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                    pass_fds=(lock.fd,))
    except OSError as exc:
        lock.release()
        raise JobError(f"cannot write to {run.path}: {exc.strerror or exc}") from None
    lock.hand_over()  # the job holds the lock now, until it exits
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends, no zombie
    return run


def cancel(run: Run) -> None:
    """Ask the job to stop: it finishes the current step, keeps its last checkpoint and exits.

    The CANCEL file is what every trainer checks (a queued job while it waits, a starting one before
    its first step); a running trainer also gets SIGTERM. With no trainer alive, an active status is
    settled as cancelled under the run lock, so no trainer can start meanwhile."""
    run.request_cancel()
    if not run.trainer_alive():
        try:
            with RunLock.acquire(run):
                if run.status().get("state") in ACTIVE_STATES:
                    run.update_status(state="cancelled", ended_at=now_iso())
            return
        except RunBusy:
            pass  # a trainer started meanwhile: it sees the CANCEL file
    status = run.status()
    if status.get("state") == "running" and pid_alive(status.get("pid"), status.get("pid_start")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(status["pid"], signal.SIGTERM)


def progress_column(status: dict, config: dict) -> str:
    """What the jobs table says of a job's progress: `epoch 3/10` while it runs, `batch 40/100` for an LR range
    test (which has no epochs), and for a job that ended, where it ended: never a bare `None`, a misleading
    `0/10`, or a cancelled run's unfinished epoch read as done."""
    state = status.get("state")
    step, steps = status.get("step_in_epoch") or 0, status.get("steps_per_epoch")
    if status.get("kind") == "lr_find":
        if state == "completed":
            return f"LR test done, {step}/{steps} batches (loss diverged)" if steps and step < steps else \
                f"LR test done, {step} batches"
        if state in ("cancelled", "failed"):
            return f"LR test, {state} at batch {step}" + (f"/{steps}" if steps else "")
        return f"LR test, batch {step}/{steps}" if steps else "LR test, starting"
    epoch, epochs = status.get("epoch") or 0, config.get("epochs", "?")
    if state in ("cancelled", "failed", "lost") and not epoch:
        return f"{state} before its first epoch"
    if state in ("cancelled", "failed", "lost"):
        mid = steps and step < steps  # stopped inside the epoch: that epoch did not finish
        return (f"{state} in epoch {epoch}/{epochs} ({epoch - 1} finished)" if mid else
                f"{state} after epoch {epoch}/{epochs}")
    if state == "completed" and epoch:
        return f"done, {epoch}/{epochs} epochs" + (" (stopped early)" if isinstance(epochs, int) and epoch < epochs
                                                     else "")
    return f"epoch {epoch}/{epochs}"


def progress_text(status: dict, config: dict, epoch_seconds: list[float]) -> str | None:
    """The live progress line of a running job, or None when no bar belongs on screen (queued, or ended:
    a cancelled job's last ETA is not an estimate of anything). Rates appear once measured, not as 0."""
    total = status.get("steps_per_epoch")
    if status.get("state") != "running" or not total:
        return None
    done = status.get("step_in_epoch") or 0
    where = (f"LR range test · batch {done}/{total}" if status.get("kind") == "lr_find"
             else f"epoch {status.get('epoch')}/{config.get('epochs')} · batch {done}/{total}")
    rate = status.get("images_per_s") or 0
    if done == 0 or rate <= 0:
        return where + " · measuring speed…"
    eta = status.get("eta_epoch_s") or 0
    text = f"{where} · {rate:,.0f} images/s · ETA {eta:,.0f} s" + ("" if status.get("kind") == "lr_find" else
                                                                  " for this epoch")
    if epoch_seconds and status.get("kind") != "lr_find" and status.get("epoch"):
        left = (config.get("epochs", 0) - status["epoch"]) * sum(epoch_seconds) / len(epoch_seconds) + eta
        text += f" · about {left / 60:.1f} min left in the run"
    return text
