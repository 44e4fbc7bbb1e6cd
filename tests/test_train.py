"""The training engine end to end on CPU with tiny synthetic data."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.experiment import jobs
from core.experiment.runs import Run, RunLock, best_epoch_row, list_runs
from core.models import (
    WeightsUnavailable,
    build_model,
    fetch_imagenet_weights,
    frozen_stages,
    imagenet_status,
    unfrozen_after,
)
from core.settings import PROJECT_ROOT
from core.training.config import ConfigError, RunConfig
from core.training.optim import OPTIMIZERS, lr_range_test
from core.training.runner import main as train_cli
from core.training.runner import train
from tests.helpers import TINY, one_line_error, tiny, wait_for


def run_tiny(tmp_path: Path, data_dir: Path, folder: str = "run", **overrides) -> Run:
    """A finished run in tmp_path/folder: TINY, 2 epochs of 2 steps, with `overrides`."""
    cfg = RunConfig(data=[str(data_dir)], **{**TINY, "epochs": 2, "max_steps_per_epoch": 2, **overrides}).validate()
    run = Run(tmp_path / folder)
    run.path.mkdir(parents=True)
    cfg.save(run.config_file)
    assert train(cfg, run) == 0, run.status()
    return run


def epoch_rows(run: Run) -> list[int]:
    return [r["epoch"] for r in run.metrics() if r["kind"] == "epoch"]


def test_run_folder_checkpoint_and_falling_loss(tmp_path, data_dir, monkeypatch):
    import core.inference
    import core.training.finish
    passes = []  # the tiles of each feature pass over data-set records

    def counted(loaded, tiles, *args, **kwargs):
        if hasattr(tiles, "records"):
            passes.append([(r.source, r.path) for r in tiles.records])
        return feature_pass(loaded, tiles, *args, **kwargs)

    feature_pass = core.inference.predict_features
    monkeypatch.setattr(core.inference, "predict_features", counted)  # what core.ood imports when it runs
    monkeypatch.setattr(core.training.finish, "predict_features", counted)  # the kept model's validation pass
    run = run_tiny(tmp_path, data_dir, epochs=6, max_steps_per_epoch=0, lr=3e-3, augment="none", scheduler="none",
                   patience=0)
    assert run.status()["state"] == "completed"
    assert RunConfig.load(run.config_file).epochs == 6
    epochs = [r for r in run.metrics() if r["kind"] == "epoch"]
    steps = [r for r in run.metrics() if r["kind"] == "step"]
    assert len(epochs) == 6 and len(steps) >= 6
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_balanced_accuracy", "lr",
                "images_per_s", "seconds", "val_recall", "val_intervals"):
        assert key in epochs[0]
    low, high = epochs[-1]["val_intervals"]["macro_f1"]  # each epoch's figures with their bootstrap interval
    assert low - 1e-4 <= epochs[-1]["val_macro_f1"] <= high + 1e-4
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    loaded = load_checkpoint(run.best_checkpoint)
    assert loaded.arch == "simple_cnn" and loaded.image_size == 48 and loaded.metrics["macro_f1"] >= 0
    assert loaded.config["epochs"] == 6
    assert run.last_checkpoint.is_file()
    # the selected epoch is kept in status.json (listing runs reads no metrics file) and agrees with the scan
    best = run.status()["best"]
    assert best == best_epoch_row(run.metrics()) and best["best"] and best["epoch"] == loaded.epoch
    assert best["val_macro_f1"] == max(r["val_macro_f1"] for r in epochs)
    # finish(): one pass over val fits the temperature and writes the report that uses it
    report = run.evaluation()
    assert report["calibration"]["temperature"] == loaded.temperature
    assert report["n"] == loaded.metrics["n"] and report["macro_f1"] == pytest.approx(best["val_macro_f1"], abs=1e-6)
    # ... and fits the out-of-distribution reference that prediction reports typicality by, from the same pass:
    # the validation tiles go through the model once (their features and logits), then the training tiles
    assert len(passes) == 2 and len(passes[0]) == report["n"] and not set(passes[0]) & set(passes[1])
    assert loaded.ood is not None and loaded.ood.class_means.shape[1] == loaded.model.fc.in_features
    from core.predict import predict_array
    pred = predict_array(loaded, np.full((227, 227), 90, np.uint8))
    assert 0.0 <= pred.typicality <= 1.0 and pred.row()["typicality"] == round(pred.typicality, 4)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_each_optimizer_runs(tmp_path, data_dir, optimizer):
    extra = {"momentum": 0.8, "nesterov": True} if optimizer == "sgd" else {}
    run = run_tiny(tmp_path, data_dir, optimizer=optimizer, **extra)
    assert run.status()["state"] == "completed"


@pytest.mark.parametrize("scheduler, extra", [("none", {}), ("step", {"step_size": 1, "gamma": 0.5}),
                                              ("plateau", {"plateau_patience": 0}), ("onecycle", {"pct_start": 0.4}),
                                              ("cosine", {"warmup_epochs": 1})])
def test_each_scheduler_runs_and_moves_the_lr(tmp_path, data_dir, scheduler, extra):
    run = run_tiny(tmp_path, data_dir, scheduler=scheduler, epochs=3, **extra)
    lrs = [r["lr"] for r in run.metrics() if r["kind"] == "step"]
    assert run.status()["state"] == "completed"
    if scheduler in ("step", "onecycle", "cosine"):
        assert len(set(round(x, 12) for x in lrs)) > 1


@pytest.mark.parametrize("mode, transforms", [("none", []), ("online", ["hflip", "rotate", "perspective", "blur"]),
                                              ("expand", ["vflip", "rot90"]), ("official", [])])
def test_each_augmentation_mode_runs(tmp_path, data_dir, mode, transforms):
    kw = {"transforms": transforms} if mode in ("online", "expand") else {}
    run = run_tiny(tmp_path, data_dir, augment=mode, max_steps_per_epoch=0, epochs=1, **kw)
    steps = run.status()["steps_per_epoch"]
    from core.data import load_dataset
    data = load_dataset([str(data_dir)])
    originals = len(data.select("train", originals_only=True))
    every = len(data.select("train"))
    expected = {"none": originals, "online": originals, "expand": originals * 3, "official": every}[mode]
    assert steps == expected // 16  # drop_last batches of 16


def test_every_transform_and_batch_mixing(tmp_path, data_dir):
    from core.training.config import TRANSFORMS
    run = run_tiny(tmp_path, data_dir, transforms=list(TRANSFORMS), mixup_alpha=0.2, cutmix_alpha=1.0,
                   imbalance="balanced_sampler", label_smoothing=0.1)
    assert run.status()["state"] == "completed"


def params_of(model, stage):
    return torch.cat([p.detach().flatten().clone() for p in getattr(model, stage).parameters()])


def test_freezing_policies(tmp_path, data_dir, capsys):
    torch.manual_seed(0)
    for freeze, extra, frozen_stage, trained_stage in [("head_only", {}, "layer4", "fc"),
                                                       ("below", {"freeze_below": "layer3"}, "layer2", "layer3")]:
        run = run_tiny(tmp_path / freeze, data_dir, model="resnet18", image_size=32, freeze=freeze,
                       scheduler="none", seed=1, **extra)
        trained = load_checkpoint(run.best_checkpoint).model
        torch.manual_seed(1)
        initial = build_model("resnet18")
        assert torch.equal(params_of(initial, frozen_stage), params_of(trained, frozen_stage))
        assert not torch.equal(params_of(initial, trained_stage), params_of(trained, trained_stage))
    assert frozen_stages("resnet18", "below", "layer3") == ["conv1", "bn1", "layer1", "layer2"]
    first = frozen_stages("resnet18", "head_only")
    assert unfrozen_after("resnet18", first, 0, 2) == first
    assert unfrozen_after("resnet18", first, 2, 2) == first[:-1]  # layer4 released after 2 epochs
    capsys.readouterr()
    run_tiny(tmp_path / "gradual", data_dir, model="resnet18", image_size=32, freeze="head_only",
             unfreeze_every=1, epochs=3)
    lines = [ln.split("frozen stages: ")[1] for ln in capsys.readouterr().out.splitlines() if "frozen stages" in ln]
    assert lines == ["conv1, bn1, layer1, layer2, layer3, layer4", "conv1, bn1, layer1, layer2, layer3",
                     "conv1, bn1, layer1, layer2"]


def test_config_validation_messages():
    cases = [({"scheduler": "onecycle", "step_size": 3}, "step_size applies only when scheduler is step"),
             ({"freeze": "below", "freeze_below": "layer9"}, "no stage 'layer9'"),
             ({"model": "vgg16"}, "unknown value 'vgg16'"),
             ({"image_size": 8}, "at least 32 px"),
             ({"image_size": -1}, "below the minimum"),
             ({"backbone_lr_scale": 0.0}, "backbone_lr_scale must be above 0"),
             ({"freeze": "head_only", "unfreeze_every": 1, "unfreeze_all_at": 2}, "choose one"),
             ({"augment": "online", "transforms": []}, "needs at least one transform"),
             ({"optimizer": "adam", "momentum": 0.5}, "momentum applies only when optimizer is sgd"),
             ({"init": "run"}, "init_from"),
             ({"model": "simple_cnn", "init": "imagenet"}, "no ImageNet weights"),
             ({"scheduler": "cosine", "lr": 1e-3, "min_lr": 0.5}, "min_lr: 0.5 is above lr")]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            RunConfig(data=["x"], **values).validate()
    with pytest.raises(ConfigError, match="data"):
        RunConfig().validate()
    assert RunConfig(data=["x"], scheduler="cosine", lr=1e-3, min_lr=1e-3).validate()  # a constant rate is allowed
    assert RunConfig(data=["x"]).validate().input_size == 260  # the default model's recipe's input size
    assert RunConfig(data=["x"], model="tf_efficientnet_lite0", image_size=0).validate().input_size == 224  # native
    assert RunConfig(data=["x"], model="tf_efficientnet_lite2", image_size=0).input_size == 260
    with pytest.raises(ConfigError, match="unknown option"):
        RunConfig.from_dict({"data": ["x"], "learning_rate": 1})


def test_cli_config_file_and_overrides(tmp_path, data_dir, capsys):
    cfg = RunConfig(data=[str(data_dir)], **TINY, epochs=1, max_steps_per_epoch=1)
    cfg.save(tmp_path / "c.json")
    assert train_cli(["--run-dir", str(tmp_path / "r"), "--config", str(tmp_path / "c.json"), "--lr", "0.01"]) == 0
    saved = RunConfig.load(tmp_path / "r" / "config.json")
    assert saved.lr == 0.01 and saved.model == "simple_cnn" and saved.epochs == 1
    assert train_cli(["--run-dir", str(tmp_path / "bad"), "--data", str(data_dir), "--init", "scratch", "--scheduler", "step",
                      "--pct-start", "0.5"]) == 2
    assert "pct_start applies only when scheduler is onecycle" in capsys.readouterr().err
    assert train_cli(["--run-dir", str(tmp_path / "missing"), "--data", str(tmp_path / "nope"), "--init", "scratch"]) == 2
    assert "not found" in Run(tmp_path / "missing").status()["error"]


def test_lr_range_test_suggests_a_rate():
    w = torch.tensor([5.0], requires_grad=True)

    def step(lr: float) -> float:
        loss = (w**2).sum()
        loss.backward()
        with torch.no_grad():
            w.sub_(lr * w.grad)
            w.grad = None
        return float(loss.detach())

    result = lr_range_test(step, start_lr=1e-5, end_lr=10, num_steps=80)
    assert result["suggested_lr"] is not None and 1e-4 < result["suggested_lr"] < 2
    assert len(result["lrs"]) == len(result["losses"])


def test_imagenet_weights_offline_and_from_local_server(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    available, message = imagenet_status("resnet18")
    assert not available and "resnet18-f37072fd.pth" in message and str(tmp_path / "hub") in message
    with pytest.raises(WeightsUnavailable, match="not in the local cache"):
        build_model("resnet18", pretrained=True)
    with pytest.raises(WeightsUnavailable, match="could not download"):
        fetch_imagenet_weights("resnet18", url="http://127.0.0.1:9/resnet18.pth", progress=False)
    # a local server holding a (random) resnet18 state dict, named with its own hash prefix
    served = tmp_path / "www"
    served.mkdir()
    reference = build_model("resnet18")
    import torchvision
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, served / "w.pth")
    prefix = hashlib.sha256((served / "w.pth").read_bytes()).hexdigest()[:8]
    target = tmp_path / "hub" / "checkpoints" / f"resnet18-{prefix}.pth"
    monkeypatch.setattr("core.models.hub_cache_file", lambda url: target)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = fetch_imagenet_weights("resnet18", url=f"http://127.0.0.1:{server.server_port}/w.pth", progress=False)
    finally:
        server.shutdown()
    assert path == target and target.is_file()
    model = build_model("resnet18", pretrained=True)
    assert model.conv1.weight.shape[1] == 1
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert reference.fc.out_features == model.fc.out_features == 8


def test_transfer_from_an_earlier_run(tmp_path, data_dir, capsys):
    first = run_tiny(tmp_path / "a", data_dir)
    capsys.readouterr()
    second = run_tiny(tmp_path / "b", data_dir, init="run", init_from=str(first.path))
    assert f"starting from the weights of {first.path / 'best.pt'}" in capsys.readouterr().out
    assert second.status()["state"] == "completed"
    with pytest.raises(ConfigError):
        RunConfig(data=[str(data_dir)], init="run").validate()


def test_a_run_reads_the_run_it_starts_from_once_and_checks_its_architecture(tmp_path, data_dir, monkeypatch):
    import core.checkpoint as checkpoint
    from core.checkpoint import CheckpointError
    from core.training.batches import initial_model
    first = run_tiny(tmp_path / "a", data_dir)
    reads = []
    real = checkpoint.read_checkpoint
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda path, *a, **k: (reads.append(Path(path)), real(path, *a, **k))[1])
    second = run_tiny(tmp_path / "b", data_dir, init="run", init_from=str(first.path))
    assert second.status()["state"] == "completed"
    assert reads.count(first.path / "best.pt") == 1  # weights and input scaling from one read
    other = RunConfig(data=[str(data_dir)], **{**TINY, "model": "resnet18", "init": "run", "init_from": str(first.path)})
    with pytest.raises(CheckpointError, match="holds a simple_cnn, but this run trains a resnet18"):
        initial_model(other)


# ---- jobs: separate processes ---------------------------------------------------------------------------

@pytest.mark.slow
def test_job_cancel_and_resume(tmp_path, data_dir):
    cfg = RunConfig(data=[str(data_dir)], **TINY, epochs=40, max_steps_per_epoch=3, scheduler="none", patience=0)
    run = jobs.launch(cfg, runs_dir=tmp_path)
    wait_for(lambda: run.last_checkpoint.is_file(), what="a first epoch")
    assert jobs.job_state(run) == "running"
    jobs.cancel(run)
    wait_for(lambda: jobs.job_state(run) == "cancelled", what="cancelled")
    assert run.last_checkpoint.is_file()
    done = max(r["epoch"] for r in run.metrics() if r["kind"] == "epoch")
    assert done < 40
    cfg_short = RunConfig.load(run.config_file)
    first_queued = run.status()["queued_at"]
    jobs.launch(cfg_short, resume=run)
    assert run.status()["queued_at"] == first_queued and run.status()["resumed_at"]  # when it was first queued stays
    wait_for(lambda: jobs.job_state(run) in ("completed", "failed"), timeout=240, what="resumed run")
    assert jobs.job_state(run) == "completed", run.log_tail()
    epochs = [r["epoch"] for r in run.metrics() if r["kind"] == "epoch"]
    assert epochs == list(range(1, 41))  # resumed after the last finished epoch, nothing repeated
    assert run.best_epoch() == best_epoch_row(run.metrics())


@pytest.mark.slow
def test_job_survives_its_launcher_and_jobs_queue(tmp_path, data_dir):
    cfg = RunConfig(data=[str(data_dir)], **TINY, epochs=3, max_steps_per_epoch=2)
    cfg.save(tmp_path / "c.json")
    script = ("import sys; from pathlib import Path; from core.training.config import RunConfig; from core.experiment import jobs; "
              "cfg = RunConfig.load(sys.argv[1]); "
              "print(jobs.launch(cfg, runs_dir=Path(sys.argv[2])).path); "
              "print(jobs.launch(cfg, runs_dir=Path(sys.argv[2])).path); "
              "print(jobs.launch(cfg, runs_dir=Path(sys.argv[2])).path)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.json"), str(tmp_path / "runs")],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    first, second, third = (Run(Path(p)) for p in out)  # the launcher has exited
    # the queued jobs wait in core.experiment.queue, without torch: a few tens of MB each, not ~450
    waiting = _waiter_rss_mib(third)
    assert waiting is not None and waiting < 100, waiting
    wait_for(lambda: first.status().get("state") == "running", what="first running")
    assert second.status()["state"] == "queued" and third.status()["state"] == "queued"  # one job per device
    jobs.cancel(third)  # cancelled while it waits: settled by its waiting process, nothing trained
    wait_for(lambda: jobs.job_state(third) == "cancelled", what="cancelled while queued")
    wait_for(lambda: not third.trainer_alive(), what="the waiting process to exit")  # it wrote the status first
    assert not third.metrics_file.exists()
    wait_for(lambda: jobs.job_state(second) == "completed", timeout=240, what="both jobs")
    assert jobs.job_state(first) == "completed"
    assert first.status()["ended_at"] <= second.status()["started_at"]


@pytest.mark.slow
def test_a_scan_and_a_training_run_take_turns_on_the_device(tmp_path, data_dir):
    """Scans take the device's turn as training runs do (core.experiment.queue): a scan launched while a run trains waits,
    queued, and both finish; their working times never overlap."""
    from core.scan import job as scan_jobs
    from tests import model_fixtures
    from tests.test_scan_page import observation_png
    runs = tmp_path / "runs"
    run = jobs.launch(RunConfig(data=[str(data_dir)], **TINY, epochs=2, max_steps_per_epoch=3), runs_dir=runs)
    wait_for(lambda: run.status().get("state") == "running", what="the run's turn")
    job = scan_jobs.new_scan("turns", runs)
    scan_jobs.launch(job, [observation_png(tmp_path)], scan_jobs.options_argv("96", "0.9", "0.5", "0", None),
                     checkpoint=model_fixtures.tiny_checkpoint())
    states = {wait_for(lambda: job.status().get("state") not in ("starting", None) and job.status()["state"],
                       what="the scan to queue")}
    while job.status().get("state") in scan_jobs.ACTIVE:
        states.add(job.status()["state"])
        time.sleep(0.2)
    wait_for(lambda: jobs.job_state(run) == "completed", timeout=240, what="the run")
    scan = job.status()
    assert scan["state"] == "completed", (scan, job.log_tail())
    assert "queued" in states or scan["turn_at"] >= run.status()["ended_at"]
    done = run.status()
    assert scan["turn_at"] >= done["ended_at"] or scan["ended_at"] <= done["started_at"]


def _waiter_rss_mib(run: Run) -> float | None:
    """Resident MiB of the `core.experiment.queue` process waiting for `run`'s turn (None: none found)."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"core.experiment.queue" in cmd and str(run.path).encode() in cmd:
                rss = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS"))
                return int(rss.split()[1]) / 1024
        except (OSError, StopIteration):
            continue
    return None


@pytest.mark.slow
def test_crashed_and_failed_jobs_are_reported(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="data: not found"):  # refused before anything is queued
        jobs.launch(RunConfig(data=[str(tmp_path / "no-such-folder")], **TINY), runs_dir=tmp_path)
    assert not list_runs(tmp_path)
    (tmp_path / "empty-source").mkdir()
    failed = jobs.launch(RunConfig(data=[str(tmp_path / "empty-source")], **TINY), runs_dir=tmp_path)
    wait_for(lambda: jobs.job_state(failed) == "failed", what="failed")
    assert failed.status()["error"] and failed.status()["error"] in failed.log_tail()
    cfg = RunConfig(data=[str(data_dir)], **TINY, epochs=50, max_steps_per_epoch=2)
    run = jobs.launch(cfg, runs_dir=tmp_path)
    wait_for(lambda: run.status().get("state") == "running", what="running")
    os.kill(run.status()["pid"], signal.SIGKILL)
    wait_for(lambda: jobs.job_state(run) == "lost", what="lost")
    assert "vanished" in jobs.observed_status(run)["error"]  # derived by readers: status.json is the trainer's


@pytest.mark.slow
def test_lr_finder_job(tmp_path, data_dir):
    cfg = RunConfig(data=[str(data_dir)], **TINY)
    run = jobs.launch(cfg, runs_dir=tmp_path, lr_find=True)
    wait_for(lambda: jobs.job_state(run) in ("completed", "failed"), what="lr finder")
    result = json.loads(run.lr_find_file.read_text())
    assert len(result["lrs"]) > 10 and result["suggested_lr"] is not None


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, data_dir):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "core.train", "--run-dir", str(run_dir), "--data", str(data_dir), "--model", "simple_cnn",
           "--init", "scratch", "--image-size", "48", "--epochs", "2", "--batch-size", "8", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = Run(run_dir)
    assert run.status()["state"] == "completed" and run.status()["world_size"] == 2
    epochs = [r for r in run.metrics() if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]  # written once (rank 0), not twice
    load_checkpoint(run.best_checkpoint)


def test_class_weights_balanced_and_sqrt():
    import numpy as np

    from core.training.optim import loss_weights
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    full = loss_weights("weighted_loss", labels, 8)
    assert torch.allclose(full[:3], torch.tensor([100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5)]))
    assert torch.equal(full[3:], torch.ones(5))  # absent classes: weight 1
    assert torch.allclose(loss_weights("sqrt_weighted_loss", labels, 8), full.sqrt())
    assert loss_weights("none", labels, 8) is None and loss_weights("balanced_sampler", labels, 8) is None


def test_best_epoch_falls_back_to_the_metrics_of_older_runs(tmp_path):
    run = Run(tmp_path / "old")
    run.path.mkdir()
    assert run.best_epoch() == {}
    run.append_metrics({"kind": "step", "epoch": 1, "step": 5})
    first = run.append_metrics({"kind": "epoch", "epoch": 1, "val_macro_f1": 0.4, "best": True})
    run.append_metrics({"kind": "epoch", "epoch": 2, "val_macro_f1": 0.3, "best": False})
    assert run.best_epoch() == first  # no "best" in status.json: scanned, the flagged epoch wins over the last
    run.update_status(best={"epoch": 9})
    assert run.best_epoch() == {"epoch": 9}
    assert best_epoch_row([{"kind": "epoch", "epoch": 1}, {"kind": "epoch", "epoch": 2}])["epoch"] == 2


def test_a_diverging_loss_fails_the_run_with_what_to_do(tmp_path, data_dir):
    cfg = RunConfig(data=[str(data_dir)], **{**TINY, "log_every": 2}, epochs=1, max_steps_per_epoch=4,
                    optimizer="sgd", scheduler="none").validate()
    cfg.lr = 1e30  # above what validation accepts (10): the quickest sure way to a NaN loss in a few steps
    run = Run(tmp_path / "run")
    run.path.mkdir(parents=True)
    cfg.save(run.config_file)
    assert train(cfg, run) == 1
    status = run.status()
    assert status["state"] == "failed" and "lower the learning rate" in status["error"], status
    assert not run.best_checkpoint.exists()


def test_compile_on_the_cpu_is_declined_with_a_note(tmp_path, data_dir, capsys):
    run = run_tiny(tmp_path, data_dir, compile=True, epochs=1)
    assert run.status()["state"] == "completed"
    assert "compile is for CUDA" in capsys.readouterr().out


def test_the_queue_waiter_refuses_what_is_not_a_queued_run(tmp_path, capsys):
    from core.experiment import queue
    assert queue.main([]) == 2 and "usage" in capsys.readouterr().err
    assert queue.main([str(tmp_path / "nope"), "cpu", "--"]) == 2
    assert "not a queued run" in capsys.readouterr().err and not (tmp_path / ".locks").exists()
    assert queue.main([str(tmp_path), "../../etc", "--"]) == 2 and "device" in capsys.readouterr().err


# ---- one trainer per run: a second is refused, a queued job holds its run -------------------------------------

def test_a_second_trainer_is_refused_without_touching_the_run(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setattr(RunLock, "RETRY_SECONDS", 0.1)
    run = run_tiny(tmp_path, data_dir, folder="r", image_size=32, epochs=1)
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
    cfg = RunConfig(data=[str(data_dir)], **tiny(image_size=32), epochs=400, max_steps_per_epoch=2, scheduler="none",
                    patience=0)
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
    cfg = RunConfig(data=[str(data_dir)], **tiny(image_size=32), epochs=3, max_steps_per_epoch=2)
    first = jobs.launch(cfg, runs_dir=tmp_path)
    second = jobs.launch(cfg, runs_dir=tmp_path)
    wait_for(lambda: first.status().get("state") == "running", what="first running")
    assert jobs.job_state(second) == "queued" and second.trainer_alive()
    wait_for(lambda: jobs.job_state(second) == "completed", what="both jobs")


# ---- cancelling a job in its first seconds --------------------------------------------------------------------

@pytest.mark.slow
def test_cancelling_a_job_that_is_still_starting_ends_cancelled(tmp_path, data_dir):
    cfg = RunConfig(data=[str(data_dir)], **tiny(image_size=32), epochs=50, max_steps_per_epoch=2)
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


# ---- the command line refuses a missing GPU, bad options and bad config files in one line ---------------------

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
    cfg = RunConfig(data=[str(data_dir)], **tiny(image_size=32), device="cuda")
    assert train(cfg, run) == 2
    assert run.status()["state"] == "failed" and "no GPU" in run.status()["error"]


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


# ---- resuming from the command line ---------------------------------------------------------------------------

def test_cli_resume_clears_cancel_records_overrides_and_stale_errors(tmp_path, data_dir, capsys):
    run = run_tiny(tmp_path, data_dir, folder="r", image_size=32, epochs=1, scheduler="none")
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
    run = run_tiny(tmp_path, data_dir, folder="r", image_size=32, epochs=1)
    capsys.readouterr()
    before = run.status_file.read_bytes()
    assert train_cli(["--run-dir", str(run.path), "--resume", "--model", "resnet18"]) == 2
    assert "model: this run was trained with 'simple_cnn'" in one_line_error(capsys)
    assert train_cli(["--run-dir", str(run.path), "--resume", "--epochs", "3"]) == 2  # cosine: laid out over 1
    assert "the onecycle schedule is laid out over the run's 1 epochs" in one_line_error(capsys)
    assert run.status_file.read_bytes() == before and RunConfig.load(run.config_file).model == "simple_cnn"


# ---- a crash and a read-only runs folder are reported in one line ---------------------------------------------

def test_an_unexpected_crash_stores_one_short_line(tmp_path, data_dir, monkeypatch):
    def crash(*_args, **_kw):
        raise RuntimeError("Error(s) in loading state_dict:\n" + "\tsize mismatch for a weight\n" * 200)

    monkeypatch.setattr("core.training.runner.fit", crash)
    run = Run(tmp_path / "r")
    run.path.mkdir()
    assert train(RunConfig(data=[str(data_dir)], **tiny(image_size=32)).validate(), run) == 1
    error = run.status()["error"]
    assert error.startswith("RuntimeError: Error(s) in loading state_dict") and "\n" not in error and len(error) < 400


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
    RunConfig(data=[str(data_dir)], **tiny(image_size=32)).save(lost.config_file)
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
        script = ("import sys\nfrom pathlib import Path\nfrom core.experiment import jobs\nfrom core.training.config import RunConfig\n"
                  "from core.experiment.runs import Run\nrun = Run(Path(sys.argv[1]) / 'lost')\n"
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
