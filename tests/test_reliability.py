"""Issue 13: one trainer per run, status files that threads cannot corrupt, and no traceback for bad input.

Each test here failed before the fix it names (item numbers are the issue's)."""
from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from core import jobs
from core.checkpoint import CheckpointError, checkpoint_payload, read_checkpoint, save_checkpoint
from core.config import ConfigError, RunConfig
from core.models import build_model
from core.runs import Run, RunBusy, RunLock
from core.settings import PROJECT_ROOT
from core.runner import main as train_cli
from core.runner import train
from ui import appstate
from tests import model_fixtures, synthetic
from tests.helpers import run_page, texts, tiny, wait_for

TINY = tiny(image_size=32)


def tiny_run(path: Path, data_dir: Path, **overrides) -> Run:
    cfg = RunConfig(data=[str(data_dir)], **{**TINY, "epochs": 1, "max_steps_per_epoch": 2, **overrides}).validate()
    run = Run(path)
    run.path.mkdir(parents=True)
    cfg.save(run.config_file)
    assert train(cfg, run) == 0, run.status()
    return run




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
                             "--model", "simple_cnn", "--init", "scratch", "--image-size", "32", "--epochs", "50"],
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
    (b'{"data": ["x"], "epochs": true}', "epochs: True is not a whole number"),
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
    assert "the onecycle schedule is laid out over the run's 1 epochs" in one_line_error(capsys)
    assert run.status_file.read_bytes() == before and RunConfig.load(run.config_file).model == "simple_cnn"


def test_an_unexpected_crash_stores_one_short_line(tmp_path, data_dir, monkeypatch):
    def crash(*_args, **_kw):
        raise RuntimeError("Error(s) in loading state_dict:\n" + "\tsize mismatch for a weight\n" * 200)

    monkeypatch.setattr("core.runner.fit", crash)
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
    assert train(RunConfig(data=[str(data_dir)], **{**TINY, "init": "run", "init_from": str(empty)}).validate(), run) == 2
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


# ---- 6, 7: a damaged zip member, zip bombs ----------------------------------------------------------------

def _official_zip(path: Path) -> tuple[Path, list[str]]:
    """A small official v3.2 zip (members stored, not compressed); returns it and its tile members."""
    files = synthetic.official_files("3.2", n_obs=6, per_obs=4, augment=(), missing=0)
    synthetic.write_zip(path, files)
    return path, sorted(n for n in files if n.endswith(".jpg"))


def _data_offset(path: Path, member: str) -> int:
    """Where a member's bytes start in the zip (after its local header)."""
    with zipfile.ZipFile(path) as zf:
        start = zf.getinfo(member).header_offset
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[start + 26:start + 30])
    return start + 30 + name_len + extra_len


def _set_declared_size(path: Path, member: str, size: int) -> None:
    """Make the central directory lie about a member's uncompressed size (what an attacker controls)."""
    raw = bytearray(path.read_bytes())
    end = raw.rindex(b"PK\x05\x06")  # the end-of-central-directory record says where the directory starts
    entry = struct.unpack("<I", raw[end + 16:end + 20])[0]
    while True:
        name_len = struct.unpack("<H", raw[entry + 28:entry + 30])[0]
        if raw[entry + 46:entry + 46 + name_len].decode() == member:
            raw[entry + 24:entry + 28] = struct.pack("<I", size)
            break
        extra_len, comment_len = struct.unpack("<HH", raw[entry + 30:entry + 34])
        entry += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(raw))


def test_a_member_with_a_bad_crc_is_skipped_with_its_reason(tmp_path, capsys):
    from core.data import load_dataset
    from core.data.__main__ import main as data_cli
    from core import evaluate
    path, tiles = _official_zip(tmp_path / "bad-crc.zip")
    offset = _data_offset(path, tiles[3]) + 200
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF  # one flipped bit in the middle of a JPEG: only the CRC knows
    path.write_bytes(bytes(raw))
    data = load_dataset([str(path)])
    assert [f for f, _ in data.unreadable] == [f"bad-crc.zip:{tiles[3]}"]
    assert "Bad CRC-32" in data.unreadable[0][1]
    assert len(data.records) == len(tiles) - 1
    assert data_cli(["summary", str(path)]) == 0
    assert "1 unreadable tiles were skipped" in capsys.readouterr().out
    code = evaluate.main(["--checkpoint", str(model_fixtures.tiny_checkpoint()), "--data", str(path), "--split", "all"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_a_zip_bomb_member_is_refused_with_bounded_memory(tmp_path, declared):
    from core.data import load_dataset
    files = synthetic.official_files("3.2", n_obs=6, per_obs=4, augment=(), missing=0)
    bomb = "ESP_010000_2000_RED-0099.jpg"
    files["labels-map-proj_v3_2.txt"] += f"{bomb} 1\n".encode()
    files["labels-map-proj_v3_2_train_val_test.txt"] += f"{bomb} 1 train\n".encode()
    path = synthetic.write_zip(tmp_path / "bomb.zip", files)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open(f"map-proj-v3_2/{bomb}", "w") as out:  # 96 MiB of zeros, about 100 KB deflated
        for _ in range(96):
            out.write(bytes(1 << 20))
    if declared == "lying":
        _set_declared_size(path, f"map-proj-v3_2/{bomb}", 4096)  # claims 4 KiB: only a capped read stays bounded
    tracemalloc.start()
    try:
        data = load_dataset([str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reasons = dict(data.unreadable)
    assert list(reasons) == [f"bomb.zip:map-proj-v3_2/{bomb}"]
    assert ("96.0 MiB, over the 64 MiB limit" if declared == "honest" else "Bad CRC-32") in reasons[list(reasons)[0]]
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert len(data.records) == sum(n.endswith(".jpg") for n in files)


def test_an_oversized_file_in_a_folder_is_skipped_unread(tmp_path):
    from core.data import load_dataset
    root = synthetic.write_folder(tmp_path / "v32", synthetic.official_files("3.2", n_obs=6, per_obs=4,
                                                                            augment=(), missing=0))
    victim = sorted((root / "map-proj-v3_2").iterdir())[0]
    with open(victim, "r+b") as f:
        f.truncate(200 * 2**20)  # sparse: costs no disk, would cost 200 MiB to read
    tracemalloc.start()
    try:
        data = load_dataset([str(root)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert [f.split(":", 1)[1] for f, _ in data.unreadable] == [f"map-proj-v3_2/{victim.name}"]
    assert "200.0 MiB, over the 64 MiB limit" in data.unreadable[0][1]


# ---- 11: labels.csv naming a file twice ------------------------------------------------------------------

def test_labels_csv_refuses_one_file_with_several_labels(tmp_path):
    from core.data import DataError, read_source
    root = synthetic.write_plain(tmp_path / "own", n=4)
    rows = (root / "labels.csv").read_text().splitlines()
    name = rows[1].split(",")[0]
    (root / "labels.csv").write_text("\n".join(rows + [f"{name},1", f"{name},2"]) + "\n")
    with pytest.raises(DataError, match=r"labels.csv line 6: tiles/own-0.jpg is labelled crater here and other on "
                                        r"line 2; a file takes one label"):
        read_source(root)
    (root / "labels.csv").write_text("\n".join(rows + [f"{name},other", f"{name},0"]) + "\n")
    src = read_source(root)
    assert len(src.records) == 4 and any("2 files again with the same label" in w for w in src.warnings)


# ---- 8: a read-only runs folder ----------------------------------------------------------------------------

def unprivileged() -> list[str]:
    """A command prefix under which file modes apply. Root ignores them, so as root the command runs
    under setpriv with every capability dropped (it stays uid 0, owner of the project's files)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made to bite")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def test_a_read_only_runs_folder_is_reported_in_one_line(tmp_path, data_dir):
    runs = tmp_path / "runs"
    lost = Run(runs / "lost")
    lost.path.mkdir(parents=True)
    RunConfig(data=[str(data_dir)], **TINY).save(lost.config_file)
    lost.update_status(state="running", pid=2**22 + 9)
    (lost.path / "last.pt").write_bytes(b"x")
    for folder in (lost.path, runs):
        folder.chmod(0o555)
    cli = [*unprivileged(), sys.executable, "-m", "core.train"]
    try:
        new = subprocess.run([*cli, "--run-dir", str(runs / "new"), "--data", str(data_dir)], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=120)
        resumed = subprocess.run([*cli, "--run-dir", str(lost.path), "--resume"], cwd=PROJECT_ROOT,
                                 capture_output=True, text=True, timeout=120)
        script = ("import sys\nfrom pathlib import Path\nfrom core import jobs\nfrom core.config import RunConfig\n"
                  "from core.runs import Run\nrun = Run(Path(sys.argv[1]) / 'lost')\n"
                  "print(jobs.job_state(run), jobs.observed_status(run)['error'])\n"
                  "try:\n    jobs.launch(RunConfig.load(run.config_file), runs_dir=Path(sys.argv[1]))\n"
                  "except jobs.JobError as exc:\n    print(exc)\n")
        app_side = subprocess.run([*unprivileged(), sys.executable, "-c", script, str(runs)], cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, timeout=120)
    finally:
        for folder in (lost.path, runs):
            folder.chmod(0o755)
    for proc in (new, resumed):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: cannot write the run folder") and "Permission denied" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert app_side.returncode == 0, app_side.stderr
    lines = app_side.stdout.splitlines()
    assert lines[0].startswith("lost the training process") and "vanished" in lines[0]
    assert lines[1] == f"cannot write to {runs}: Permission denied"
    assert lost.status()["state"] == "running"  # read, never rewritten


# ---- the pages: empty checkpoint, damaged zip, unwritable runs, device box, binding ----------------------

@pytest.fixture()
def own_runs(tmp_path, monkeypatch) -> Path:
    """An empty runs folder and app state of this test's own."""
    monkeypatch.setattr("core.runs.RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(appstate, "APP_STATE_FILE", tmp_path / "app-state.json")
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


def test_home_and_explain_survive_an_empty_default_checkpoint(tmp_path, own_runs, monkeypatch):
    import ui.loaders
    empty = tmp_path / "hirise-resnet18.pt"
    empty.touch()
    monkeypatch.setattr(ui.loaders, "DEFAULT_CHECKPOINT", empty)
    assert "No default model: hirise-resnet18.pt is empty (0 bytes)" in texts(run_page("app.py"), captions=False)
    assert "Cannot load the model: hirise-resnet18.pt is empty" in texts(run_page("views/explain.py"), captions=False)


def test_dataset_page_lists_a_damaged_zip_member_and_goes_on(tmp_path, own_runs):
    path, tiles = _official_zip(tmp_path / "bad-crc.zip")
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path, tiles[0]) + 200] ^= 0xFF
    path.write_bytes(bytes(raw))
    appstate.save_state(data_paths=[str(path)])
    at = run_page("views/dataset.py")
    assert any(e.label == "1 unreadable tiles (skipped)" for e in at.expander)


def test_home_and_train_read_a_lost_run_they_cannot_write(tmp_path, own_runs, data_dir, monkeypatch):
    lost = Run(own_runs / "20260101-000000-lost")
    lost.path.mkdir()
    RunConfig(data=[str(data_dir)], **TINY).save(lost.config_file)
    lost.update_status(state="running", pid=2**22 + 11, kind="train")

    def read_only(*_args, **_kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("core.runs.update_json", read_only)  # a fake read-only folder: any write raises
    monkeypatch.setattr("core.jobs.new_run_dir", read_only)
    at = run_page("app.py")
    assert at.dataframe[0].value["state"].tolist() == ["lost"]
    at = run_page("views/train.py")
    assert "Lost: the training process (pid 4194315) vanished without finishing" in texts(at, captions=False)
    at.text_area(key="cfg_data_text").input(str(data_dir)).run()
    next(b for b in at.button if b.label == "Launch training").click().run()
    assert not at.exception
    assert f"Not launched: cannot write to {own_runs}: Permission denied" in texts(at, captions=False)


def test_the_device_box_offers_cuda_only_with_a_gpu(own_runs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    at = run_page("views/train.py")
    assert at.selectbox(key="cfg_device").options == ["auto", "cpu"]


@pytest.mark.parametrize("address, serves", [(None, False), ("", False), ("127.0.0.1", True), ("0.0.0.0", True)])
def test_the_app_serves_nothing_on_an_address_nobody_chose(own_runs, monkeypatch, address, serves):
    import streamlit
    real = streamlit.get_option
    monkeypatch.setattr(streamlit, "get_option", lambda key: address if key == "server.address" else real(key))
    for path in ("app.py", "views/explain.py"):
        at = run_page(path)
        assert bool(at.title) == serves
        assert ("started without a server address" in texts(at, captions=False)) != serves


# ---- 12: class maps of large images in bounded memory -------------------------------------------------------

def _reference_render(gray, class_map, alpha=0.45, skip=("other",), min_confidence=0.0):
    """render_class_map as it was: float32 over the whole image (5.5 GB for a 7,900 px square)."""
    from core.classes import CLASS_COLORS
    from core.tiling import _grid_index
    h, w = class_map.image_shape
    rgb = np.repeat(gray[:h, :w, None].astype(np.float32), 3, axis=2)
    index = _grid_index(class_map)
    classes = class_map.classes[index]
    palette = np.array([CLASS_COLORS.get(c, (255, 255, 255)) for c in class_map.class_names], dtype=np.float32)
    keep = np.array([c not in skip for c in class_map.class_names])[classes]
    if min_confidence > 0:
        keep &= class_map.confidence[index] >= min_confidence
    rgb[keep] = (1 - alpha) * rgb[keep] + alpha * palette[classes][keep]
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _random_class_map(h: int, w: int, stride: int, seed: int):
    from core.classes import CLASS_NAMES
    from core.tiling import ClassMap, window_starts
    rng = np.random.default_rng(seed)
    ys, xs = window_starts(h, 227, stride), window_starts(w, 227, stride)
    boxes = np.array([[[x, y, min(x + 227, w), min(y + 227, h)] for x in xs] for y in ys], dtype=np.int64)
    shape = (len(ys), len(xs))
    return ClassMap(classes=rng.integers(0, 8, shape), confidence=rng.random(shape).astype(np.float32),
                    probabilities=np.zeros((*shape, 8), np.float32), boxes=boxes, window=227, stride=stride,
                    image_shape=(h, w), class_names=list(CLASS_NAMES))


@pytest.mark.parametrize("alpha, min_confidence", [(0.45, 0.0), (0.8, 0.5), (1.0, 0.0), (0.0, 0.0)])
def test_class_map_rendering_draws_what_it_drew_before(alpha, min_confidence):
    from core.tiling import render_class_map
    gray = np.random.default_rng(1).integers(0, 256, (700, 1000), dtype=np.uint8)
    cm = _random_class_map(700, 1000, 113, seed=2)
    np.testing.assert_array_equal(render_class_map(gray, cm, alpha, min_confidence=min_confidence),
                                  _reference_render(gray, cm, alpha, min_confidence=min_confidence))


def test_class_map_of_a_large_image_needs_little_more_than_its_result():
    from core.tiling import render_class_map
    h, w = 4000, 3900
    gray = np.random.default_rng(3).integers(0, 256, (h, w), dtype=np.uint8)
    cm = _random_class_map(h, w, 227, seed=4)
    tracemalloc.start()
    try:
        out = render_class_map(gray, cm)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result = out.nbytes  # 47 MB; the float32 version needed over 10x that
    assert peak < result + 24 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {result / 2**20:.0f} MiB result"
    # the largest image the decoder accepts (64 Mpx) therefore renders in about 200 MB, far below 1 GB


# ---- 13: the offline hint names the folder asked for ------------------------------------------------------

def test_offline_download_hint_names_the_chosen_folder(tmp_path, capsys):
    from core import download
    dest = tmp_path / "my-data"
    with pytest.raises(download.DownloadError, match=f"put it in {dest} "):
        download.download_v32(dest, api="http://127.0.0.1:9/api/records")
