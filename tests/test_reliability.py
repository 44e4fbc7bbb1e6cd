"""Issue 13: one trainer per run, status files that threads cannot corrupt, and no traceback for bad input.

Each test here failed before the fix it names (item numbers are the issue's)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from core import appstate, jobs
from core.checkpoint import CheckpointError, checkpoint_payload, read_checkpoint, save_checkpoint
from core.config import ConfigError, RunConfig
from core.models import build_model
from core.runs import Run, RunBusy, RunLock
from core.settings import PROJECT_ROOT
from core.train import main as train_cli
from core.train import train
from tests import model_fixtures, synthetic

TINY = dict(model="simple_cnn", image_size=32, batch_size=16, log_every=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return synthetic.write_folder(tmp_path_factory.mktemp("reliability-data"),
                                  synthetic.official_files("3.2", n_obs=12, per_obs=8, missing=0))


def tiny_run(path: Path, data_dir: Path, **overrides) -> Run:
    cfg = RunConfig(data=[str(data_dir)], **{**TINY, "epochs": 1, "max_steps_per_epoch": 2, **overrides}).validate()
    run = Run(path)
    run.path.mkdir(parents=True)
    cfg.save(run.config_file)
    assert train(cfg, run) == 0, run.status()
    return run


def wait_for(predicate, timeout: float = 180.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def epoch_rows(run: Run) -> list[int]:
    return [r["epoch"] for r in run.metrics() if r["kind"] == "epoch"]


# ---- 2: status writes from threads ------------------------------------------------------------------------

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
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
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


def test_app_state_saved_from_threads_keeps_every_key(tmp_path, monkeypatch):
    monkeypatch.setattr(appstate, "APP_STATE_FILE", tmp_path / "state.json")
    errors: list[BaseException] = []

    def save(i: int) -> None:
        try:
            for j in range(25):
                appstate.save_state(**{f"k{i}_{j}": j})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(appstate.load_state()) == 100


# ---- 1: one trainer per run ------------------------------------------------------------------------------

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


def test_a_second_trainer_is_refused_without_touching_the_run(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setattr(RunLock, "RETRY_SECONDS", 0.1)
    run = tiny_run(tmp_path / "r", data_dir)
    capsys.readouterr()
    before = {f: (run.path / f).read_bytes() for f in ("status.json", "metrics.jsonl", "config.json")}
    with RunLock.acquire(run):  # stands for a live trainer, whatever started it
        assert train_cli(["--run-dir", str(run.path), "--resume", "--epochs", "3"]) == 2
        assert "already has a trainer" in one_line_error(capsys)
        cfg = RunConfig.load(run.config_file)
        assert train(cfg, run, resume=True) == 2
        with pytest.raises(jobs.JobError, match="already has a trainer"):
            jobs.launch(cfg, resume=run)  # the Train page's Resume button
    assert {f: (run.path / f).read_bytes() for f in before} == before


@pytest.mark.slow
def test_cli_resume_beside_an_app_launched_run_is_refused(tmp_path, data_dir, capsys):
    cfg = RunConfig(data=[str(data_dir)], **TINY, epochs=400, max_steps_per_epoch=2, scheduler="none", patience=0)
    run = jobs.launch(cfg, runs_dir=tmp_path)
    assert run.trainer_alive()  # held from the launch on, before the job has even imported torch
    wait_for(lambda: run.last_checkpoint.is_file(), what="a first epoch")
    pid = run.status()["pid"]
    capsys.readouterr()
    assert train_cli(["--run-dir", str(run.path), "--resume", "--epochs", "500"]) == 2
    assert "already has a trainer" in one_line_error(capsys)
    with pytest.raises(jobs.JobError):
        jobs.launch(RunConfig.load(run.config_file), resume=run)
    status = run.status()
    assert status["pid"] == pid and status["state"] == "running" and RunConfig.load(run.config_file).epochs == 400
    jobs.cancel(run)
    wait_for(lambda: jobs.job_state(run) == "cancelled", what="cancelled")
    epochs = epoch_rows(run)
    assert epochs == list(range(1, len(epochs) + 1))  # each epoch written once, by one trainer
    steps = [r["step"] for r in run.metrics() if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # the step counter never went backwards


@pytest.mark.slow
def test_a_queued_job_holds_its_run_and_is_not_lost(tmp_path, data_dir):
    cfg = RunConfig(data=[str(data_dir)], **TINY, epochs=3, max_steps_per_epoch=2)
    first = jobs.launch(cfg, runs_dir=tmp_path)
    second = jobs.launch(cfg, runs_dir=tmp_path)
    wait_for(lambda: first.status().get("state") == "running", what="first running")
    assert jobs.job_state(second) == "queued" and second.trainer_alive()
    wait_for(lambda: jobs.job_state(second) == "completed", what="both jobs")


# ---- 3: cancelling a job in its first seconds --------------------------------------------------------------

@pytest.mark.slow
def test_cancelling_a_job_that_is_still_starting_ends_cancelled(tmp_path, data_dir):
    cfg = RunConfig(data=[str(data_dir)], **TINY, epochs=50, max_steps_per_epoch=2)
    run = jobs.launch(cfg, runs_dir=tmp_path)
    jobs.cancel(run)  # the job is still importing torch
    wait_for(lambda: not run.trainer_alive(), what="the job to end")
    assert run.status()["state"] == "cancelled"  # written by the job itself, not derived
    assert not run.metrics()


@pytest.mark.slow
def test_sigterm_while_importing_ends_cancelled(tmp_path, data_dir):
    run_dir = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "core.train", "--run-dir", str(run_dir), "--data", str(data_dir),
                             "--model", "simple_cnn", "--image-size", "32", "--epochs", "50"],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.5)  # python is up; torch is still importing
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=180)[0].decode()
    assert proc.returncode == 0, out
    assert Run(run_dir).status()["state"] == "cancelled"


# ---- 4: --device cuda without a GPU -----------------------------------------------------------------------

def test_cuda_without_a_gpu_is_refused_in_one_line(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no GPU"):
        RunConfig(data=["x"], device="cuda").validate()
    assert train_cli(["--run-dir", str(tmp_path / "cli"), "--data", str(data_dir), "--device", "cuda"]) == 2
    assert "no GPU" in one_line_error(capsys)
    assert jobs.device_choices() == ("auto", "cpu")
    # a config that skipped validation (an old config.json) fails the run, with the reason, instead of a traceback
    run = Run(tmp_path / "direct")
    run.path.mkdir()
    cfg = RunConfig(data=[str(data_dir)], **TINY, device="cuda")
    assert train(cfg, run) == 2
    assert run.status()["state"] == "failed" and "no GPU" in run.status()["error"]


# ---- 9: configuration validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "lr: nan is not a finite number"), (["--lr", "inf"], "lr: inf is not a finite number"),
    (["--weight-decay", "nan"], "weight_decay: nan"), (["--mixup-alpha", "nan"], "mixup_alpha: nan"),
    (["--scheduler", "plateau", "--plateau-factor", "5"], "plateau_factor"),
    (["--scheduler", "step", "--gamma", "-5"], "gamma"), (["--lr", "0"], "lr: 0.0 must be above 0"),
    (["--scheduler", "cosine", "--min-lr", "-1"], "min_lr")])
def test_cli_refuses_non_finite_and_out_of_range_options(tmp_path, data_dir, capsys, flags, message):
    assert train_cli(["--run-dir", str(tmp_path / "r"), "--data", str(data_dir), *flags]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("content, message", [
    (b'{"data": ["x"], "epochs": true}', "epochs: True is not a valid int"),
    (b'["--lr", "0.1"]', "a JSON object of options, not a list"),
    (bytes(range(256)) * 4, "not a text file"),
    (b'{"data": ["x"], "name": ["a"]}', "name: ['a'] is not a valid str")])
def test_cli_refuses_bad_config_files_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    assert train_cli(["--run-dir", str(tmp_path / "r"), "--config", str(path)]) == 2
    assert message in one_line_error(capsys)


# ---- 10: CLI --resume -------------------------------------------------------------------------------------

def test_cli_resume_clears_cancel_records_overrides_and_stale_errors(tmp_path, data_dir, capsys):
    run = tiny_run(tmp_path / "r", data_dir, scheduler="none")
    run.cancel_file.touch()  # cancelled in the app earlier
    run.update_status(state="lost", error="the training process (pid 1) vanished without finishing")
    (run.path / "last.pt.tmp").write_bytes(b"half a checkpoint")  # left by a kill -9
    (run.path / ".status.json.abc.tmp").write_text("{")
    assert train_cli(["--run-dir", str(run.path), "--resume", "--epochs", "2"]) == 0
    status = run.status()
    assert status["state"] == "completed" and status["error"] is None, status
    assert epoch_rows(run) == [1, 2] and not run.cancel_file.exists()
    assert RunConfig.load(run.config_file).epochs == 2  # the app shows 2/2, not 2/1
    assert not list(run.path.glob("*.tmp"))


def test_cli_resume_refuses_another_model_in_one_line(tmp_path, data_dir, capsys):
    run = tiny_run(tmp_path / "r", data_dir)
    capsys.readouterr()
    before = run.status_file.read_bytes()
    assert train_cli(["--run-dir", str(run.path), "--resume", "--model", "resnet18"]) == 2
    assert "model: this run was trained with 'simple_cnn'" in one_line_error(capsys)
    assert train_cli(["--run-dir", str(run.path), "--resume", "--epochs", "3"]) == 2  # cosine: laid out over 1
    assert "the cosine schedule is laid out over the run's 1 epochs" in one_line_error(capsys)
    assert run.status_file.read_bytes() == before and RunConfig.load(run.config_file).model == "simple_cnn"


def test_an_unexpected_crash_stores_one_short_line(tmp_path, data_dir, monkeypatch):
    def crash(*_args, **_kw):
        raise RuntimeError("Error(s) in loading state_dict:\n" + "\tsize mismatch for a weight\n" * 200)

    monkeypatch.setattr("core.train.fit", crash)
    run = Run(tmp_path / "r")
    run.path.mkdir()
    assert train(RunConfig(data=[str(data_dir)], **TINY).validate(), run) == 1
    error = run.status()["error"]
    assert error.startswith("RuntimeError: Error(s) in loading state_dict") and "\n" not in error and len(error) < 400


# ---- 5, 13: checkpoints: empty, hand-made, every field checked --------------------------------------------

def _hand_made(tmp_path: Path, name: str, **changes) -> Path:
    payload = checkpoint_payload(build_model("simple_cnn"), arch="simple_cnn", image_size=32, mean=0.4, std=0.1,
                                 config={})
    payload.update(changes)
    return save_checkpoint(tmp_path / f"{name}.pt", payload)


@pytest.mark.parametrize("changes, message", [
    ({"image_size": "32"}, "image_size '32' is not a whole number"),
    ({"image_size": 200_000}, "image_size 200000 is not a whole number of pixels from 32 to 512"),
    ({"state_dict": [1, 2]}, "state_dict is not a dictionary of named weight tensors"),
    ({"class_names": "other"}, "class_names"), ({"mean": float("nan")}, "mean nan is not a finite number"),
    ({"std": 0.0}, "std 0.0 is not positive"), ({"temperature": "hot"}, "temperature"),
    ({"train_state": {"epoch": "3"}}, "train_state lacks a valid optimizer"), ({"in_chans": 3}, "in_chans 3")])
def test_hand_made_checkpoints_are_refused_field_by_field(tmp_path, changes, message):
    with pytest.raises(CheckpointError, match="not a usable checkpoint") as err:
        read_checkpoint(_hand_made(tmp_path, "hand", **changes))
    assert message in str(err.value)


def test_an_empty_checkpoint_is_refused_everywhere_in_one_line(tmp_path, data_dir, capsys):
    from core import evaluate, predict
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        read_checkpoint(empty)
    tile = tmp_path / "t.jpg"
    tile.write_bytes(synthetic.jpeg(synthetic.tile(1, 1)))
    assert predict.main(["--checkpoint", str(empty), str(tile)]) == 2
    assert "is empty" in one_line_error(capsys)
    assert evaluate.main(["--checkpoint", str(empty), "--data", str(data_dir)]) == 2
    assert "is empty" in one_line_error(capsys)
    run = Run(tmp_path / "init-from")
    run.path.mkdir()
    assert train(RunConfig(data=[str(data_dir)], **TINY, init="run", init_from=str(empty)).validate(), run) == 2
    assert run.status()["error"] == "empty.pt is empty (0 bytes): not a checkpoint"


def test_a_truncated_checkpoint_is_refused(tmp_path):
    good = model_fixtures.tiny_checkpoint().read_bytes()
    for n in (1, 10, len(good) // 2):
        cut = tmp_path / f"cut{n}.pt"
        cut.write_bytes(good[:n])
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            read_checkpoint(cut)


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fail(_payload, path):
        Path(path).write_bytes(b"part")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last.pt", {"format": "x"})
    assert not list(tmp_path.iterdir())
