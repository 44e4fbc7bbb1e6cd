"""A run's folder (core.experiment.runs): status and config files that threads cannot corrupt, and the lock that lets one
trainer in."""
from __future__ import annotations

import threading

import pytest

from core.experiment import jobs
from core.experiment.runs import Run, RunBusy, RunLock
from core.training.config import ConfigError, RunConfig

# ---- status and config files written from several threads -----------------------------------------------------

def test_status_writes_from_threads_lose_nothing_and_readers_never_write(tmp_path):
    run = Run(tmp_path / "dead")
    run.path.mkdir()
    run.update_status(state="running", pid=2**22 + 7)  # a trainer that died without a word (no lock held)
    errors: list[BaseException] = []

    def reader_and_writer(i: int) -> None:
        try:
            for j in range(40):
                assert jobs.job_state(run) == "lost"
                run.update_status(**{f"t{i}_{j}": j})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader_and_writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    status = run.status()
    assert all(f"t{i}_{j}" in status for i in range(6) for j in range(40))  # no update lost another's keys
    assert status["state"] == "running"  # readers derive 'lost'; they never rewrite the trainer's file
    assert "vanished" in jobs.observed_status(run)["error"]
    assert not list(run.path.glob("*.tmp"))


def test_config_json_is_never_read_half_written(tmp_path):
    """Found by tools/soak_kill_resume.py: a trainer refused by the lock read config.json while the lock's
    holder rewrote it (a resume records its overrides)."""
    run = Run(tmp_path / "r")
    run.path.mkdir()
    values = RunConfig(data=[f"/data/source-{i}" for i in range(50)]).to_dict()
    run.save_config(values)
    done, errors = threading.Event(), []

    def reader() -> None:
        while not done.is_set():
            try:
                RunConfig.load(run.config_file)
            except ConfigError as exc:
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for epochs in range(1, 400):
        run.save_config({**values, "epochs": epochs})
    done.set()
    thread.join()
    assert not errors, errors[:1]


# ---- one trainer per run: the lock ----------------------------------------------------------------------------

def test_run_lock_is_exclusive_and_tells_readers_a_trainer_lives(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "RETRY_SECONDS", 0.1)
    run = Run(tmp_path / "r")
    run.path.mkdir()
    assert not run.trainer_alive()  # no lock file yet
    with RunLock.acquire(run):
        assert run.trainer_alive()
        with pytest.raises(RunBusy, match="already has a trainer"):
            RunLock.acquire(run)
        run.update_status(state="running")
        assert jobs.job_state(run) == "running"
    assert not run.trainer_alive() and jobs.job_state(run) == "lost"
    with RunLock.acquire(run):  # free again
        pass
