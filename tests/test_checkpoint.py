"""Checkpoints (core.checkpoint): a hand-made one checked field by field, an empty or truncated file refused in one
line wherever a checkpoint is read, and no temporary file left by a failed write."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoint import CheckpointError, checkpoint_payload, read_checkpoint
from core.checkpoint_file import save_checkpoint
from core.experiment.runs import Run
from core.models import build_model
from core.training.config import RunConfig
from core.training.runner import train
from tests import model_fixtures, synthetic
from tests.helpers import one_line_error, tiny


def _hand_made(tmp_path: Path, name: str, **changes) -> Path:
    payload = checkpoint_payload(build_model("simple_cnn"), arch="simple_cnn", image_size=32, mean=0.4, std=0.1,
                                 config={})
    payload.update(changes)
    return save_checkpoint(tmp_path / f"{name}.pt", payload)


# ---- every field of a hand-made checkpoint is checked ---------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"image_size": "32"}, "image_size '32' is not a whole number"),
    ({"image_size": 200_000}, "image_size 200000 is not a whole number of pixels from 32 to 512"),
    ({"state_dict": [1, 2]}, "state_dict is not a dictionary of named weight tensors"),
    ({"class_names": "other"}, "class_names"), ({"mean": float("nan")}, "mean nan is not a finite number"),
    ({"std": 0.0}, "std 0.0 cannot normalise tiles"), ({"temperature": "hot"}, "temperature"),
    ({"train_state": {"epoch": "3"}}, "train_state lacks a valid optimizer"), ({"in_chans": 3}, "in_chans 3")])
def test_hand_made_checkpoints_are_refused_field_by_field(tmp_path, changes, message):
    with pytest.raises(CheckpointError, match="not a usable checkpoint") as err:
        read_checkpoint(_hand_made(tmp_path, "hand", **changes))
    assert message in str(err.value)


# ---- empty, truncated and half-written files ------------------------------------------------------------------

def test_an_empty_checkpoint_is_refused_everywhere_in_one_line(tmp_path, data_dir, capsys):
    from core import evaluate, predict
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty.pt is empty"):
        read_checkpoint(empty)
    tile = tmp_path / "t.jpg"
    tile.write_bytes(synthetic.jpeg(synthetic.tile(1, 1)))
    assert predict.main(["--checkpoint", str(empty), str(tile)]) == 2
    assert "is empty" in one_line_error(capsys)
    assert evaluate.main(["--checkpoint", str(empty), "--data", str(data_dir)]) == 2
    assert "is empty" in one_line_error(capsys)
    run = Run(tmp_path / "init-from")
    run.path.mkdir()
    cfg = RunConfig(data=[str(data_dir)], **{**tiny(image_size=32), "init": "run", "init_from": str(empty)})
    assert train(cfg.validate(), run) == 2
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


@pytest.mark.slow
def test_a_small_checkpoint_that_inflates_past_the_limit_is_refused_under_a_memory_cap(tmp_path):
    """Issue 33, item 9: a few-MB checkpoint holding a deflated record of over a GiB was loaded whole (3.8 GB to
    predict with). The zip's directory is read first; in a child process capped at 1.5 GB, one line, no MemoryError."""
    import resource
    import subprocess
    import sys
    import zipfile

    from core.checkpoint import read_checkpoint
    from core.checkpoint_file import save_checkpoint
    from core.settings import PROJECT_ROOT
    from tests import model_fixtures
    path = tmp_path / "inflating.pt"
    save_checkpoint(path, read_checkpoint(model_fixtures.tiny_checkpoint()))
    prefix = zipfile.ZipFile(path).namelist()[0].split("/")[0]
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open(f"{prefix}/data/9999", "w", force_zip64=True) as member:
        zeros = bytes(64 * 2**20)
        for _ in range(18):  # 1.125 GiB of zeros, a few MB deflated
            member.write(zeros)
    assert path.stat().st_size < 16 * 2**20
    cap = int(1.5e9)
    code = ("import sys\nfrom core.checkpoint import CheckpointError, read_checkpoint\n"
            "try:\n    read_checkpoint(sys.argv[1])\nexcept CheckpointError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (cap, cap)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unpacks to 1,1" in done.stdout and "not loaded" in done.stdout
