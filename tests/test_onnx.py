"""Issue 30: every checkpoint's verified ONNX twin (core.export), served by ONNX Runtime (core.onnx_model) through
the one inference path (core.inference.fast_forward), with torch where it must be, and every bad twin refused."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from core import export as exporter
from core.checkpoint import CheckpointError, load_checkpoint
from core.digest import file_digest
from core.inference import predict_features, predict_proba
from core.onnx_model import OnnxError, load_onnx, twin_path
from core.settings import PROJECT_ROOT
from tests.model_fixtures import synthetic_tiles, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = sorted((PROJECT_ROOT / "checkpoints").glob("*.pt"))


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return synthetic_tiles(per_class=3, seed=21)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiles) -> Path:
    """A copy of the tiny checkpoint with its twin beside it."""
    folder = tmp_path_factory.mktemp("twin")
    ckpt = folder / "tiny.pt"
    shutil.copy(tiny_checkpoint(), ckpt)
    out, verified = exporter.export(ckpt, tiles=tiles)
    assert out == twin_path(ckpt) and verified.agreement == 1.0 and verified.max_prob_diff < 1e-4
    return ckpt


def test_the_twin_serves_forward_passes_with_the_same_figures_as_torch(exported, tiles):
    onnx = load_checkpoint(exported)
    torch_only = load_checkpoint(exported, engine="torch")
    assert onnx.onnx is not None and onnx.engine_note.startswith("ONNX Runtime (tiny.onnx, verified on 24 real")
    assert torch_only.onnx is None and torch_only.engine_note == "torch (asked for)"
    np.testing.assert_allclose(predict_proba(onnx, tiles, show_progress=False),
                               predict_proba(torch_only, tiles, show_progress=False), atol=1e-5)
    f_onnx, _ = predict_features(onnx, tiles, show_progress=False)
    f_torch, _ = predict_features(torch_only, tiles, show_progress=False)
    np.testing.assert_allclose(f_onnx, f_torch, atol=1e-4)
    small_onnx, _ = predict_features(onnx, tiles, size=24, show_progress=False)  # another input size: torch's
    small_torch, _ = predict_features(torch_only, tiles, size=24, show_progress=False)
    np.testing.assert_allclose(small_onnx, small_torch, atol=1e-5)
    twin = load_onnx(twin_path(exported))
    assert twin.class_names == onnx.class_names and twin.checkpoint_digest == file_digest(exported)


def test_a_twin_already_held_serves_the_torch_model_too(exported, tiles):
    """The app answers from the twin before torch loads; the torch model it loads for Grad-CAM then takes that same
    session rather than opening a second one, and still refuses one that does not feed like it."""
    from core.onnx_model import load_twin
    held = load_twin(exported)
    loaded = load_checkpoint(exported, twin=held)
    assert loaded.onnx is held and loaded.engine_note == held.engine_note
    held.image_size += 8
    try:
        refused = load_checkpoint(exported, twin=held)
    finally:
        held.image_size -= 8
    assert refused.onnx is None and "does not feed like tiny.pt" in refused.engine_note
    other = exported.parent / "other.pt"  # the same weights under another name: its twin is not that file's
    shutil.copy(exported, other)
    try:
        assert load_checkpoint(other, twin=held).onnx is None
        assert "tiny.onnx is not the twin of other.pt" in load_checkpoint(other, twin=held).engine_note
    finally:
        other.unlink()


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(p.read_bytes()[:5000]), "not a readable ONNX model"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(20000)), "not a readable ONNX model"),
    (lambda p: p.unlink(), "has no ONNX twin"),
])
def test_a_bad_twin_is_refused_in_one_line_and_torch_serves(exported, tmp_path, damage, message):
    ckpt = tmp_path / "tiny.pt"
    shutil.copy(exported, ckpt)
    shutil.copy(twin_path(exported), twin_path(ckpt))
    damage(twin_path(ckpt))
    loaded = load_checkpoint(ckpt)  # auto: torch answers, and says why
    assert loaded.onnx is None and message in loaded.engine_note and "\n" not in loaded.engine_note
    with pytest.raises(CheckpointError, match=f"engine onnx: .*{message}"):
        load_checkpoint(ckpt, engine="onnx")


def test_a_twin_of_another_checkpoint_is_refused_by_its_digest(exported, tmp_path):
    other = tmp_path / "other.pt"
    shutil.copy(exported, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # another file (torch still reads it): its twin no longer matches
    shutil.copy(twin_path(exported), twin_path(other))
    assert "exported from another checkpoint" in load_checkpoint(other).engine_note
    with pytest.raises(OnnxError, match="another checkpoint"):
        load_onnx(twin_path(other), expect_digest=file_digest(other))


def test_an_onnx_file_not_made_here_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(OnnxError, match="not an ONNX twin made by this studio"):
        load_onnx(path)
    future = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 999)])
    onnx.save(future, tmp_path / "future.onnx")
    with pytest.raises(OnnxError, match="opset"):
        load_onnx(tmp_path / "future.onnx")


def test_a_twin_that_disagrees_is_not_written(exported, tmp_path, tiles, monkeypatch):
    ckpt = tmp_path / "tiny.pt"
    shutil.copy(exported, ckpt)
    monkeypatch.setattr(exporter, "verify", lambda *a: exporter.Verified(len(tiles), 0.9, 0.4))
    with pytest.raises(exporter.ExportError, match=r"disagrees with tiny\.pt: 90\.0% of 24"):
        exporter.export(ckpt, tiles=tiles)
    assert not twin_path(ckpt).exists()


def test_two_first_exports_at_once_make_one_valid_twin(exported, tmp_path, tiles):
    ckpt = tmp_path / "tiny.pt"
    shutil.copy(exported, ckpt)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            exporter.export(ckpt, tiles=tiles)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and load_onnx(twin_path(ckpt), expect_digest=file_digest(ckpt)).class_names
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []  # no half-written file left


def test_the_clis_take_engine_and_onnx_without_a_twin_is_one_line(tmp_path, capsys, tiles):
    from PIL import Image

    from core.predict import main as predict_main

    ckpt = tmp_path / "lonely.pt"
    shutil.copy(tiny_checkpoint(), ckpt)
    Image.fromarray(tiles[0]).save(tmp_path / "t.png")
    assert predict_main([str(tmp_path / "t.png"), "--checkpoint", str(ckpt), "--engine", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "engine onnx: lonely.pt has no ONNX twin" in err and "Traceback" not in err
    assert predict_main([str(tmp_path / "t.png"), "--checkpoint", str(ckpt)]) == 0
    assert "engine: torch: lonely.pt has no ONNX twin" in capsys.readouterr().out


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_checkpoint_has_a_twin_that_agrees_with_it(checkpoint, tiles):
    """A twin left behind when its checkpoint changes fails here (digest), and so does one that answers
    differently from torch on the same tiles."""
    loaded = load_checkpoint(checkpoint, engine="onnx")
    torch_only = load_checkpoint(checkpoint, engine="torch")
    a = predict_proba(loaded, tiles[:8], show_progress=False)
    b = predict_proba(torch_only, tiles[:8], show_progress=False)
    assert np.abs(a - b).max() < 1e-3 and (a.argmax(1) == b.argmax(1)).all()


def test_a_model_onnx_cannot_take_is_refused_in_one_line(exported, tmp_path, tiles, monkeypatch, capsys):
    import torch

    ckpt = tmp_path / "tiny.pt"
    shutil.copy(exported, ckpt)

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::mystery' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(exporter.ExportError, match="simple_cnn cannot be exported to ONNX: Exporting the operator"):
        exporter.export(ckpt, tiles=tiles)
    assert not twin_path(ckpt).exists()
    assert exporter.main([str(ckpt), "--check-data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no real tiles to verify the twin on") and len(err.splitlines()) == 1


# ---- answers without torch: the twin alone (issue 30, item 3) ------------------------------------------------------

TWIN_ALONE = r"""
import json, sys
import numpy as np
from core.onnx_model import load_twin
from core.predict import predict_array
twin = load_twin(sys.argv[1])
image = np.load(sys.argv[2])
out = {}
for name, gray in (("tile", image[:227, :227]), ("large", image)):
    for tta in (False, True):
        p = predict_array(twin, gray, tta=tta)
        out[f"{name}-{tta}"] = [p.probabilities[c] for c in twin.class_names] + [p.typicality or 0.0]
print(json.dumps({"torch": "torch" in sys.modules, "timm": "timm" in sys.modules, "out": out}))
"""


@pytest.mark.parametrize("checkpoint", [p for p in SHIPPED if p.name.startswith(("hirise-efficientnet-lite0.",
                                                                                   "hirise-efficientnet-lite2-260"))],
                         ids=lambda p: p.stem[:32])
def test_the_twin_alone_answers_as_torch_does_without_importing_it(checkpoint, tmp_path):
    """A tile (resized to the model's input: up for Lite2 at 260 px, down for Lite0 at 160 px, numpy and PIL
    against torch's antialiased interpolate) and a larger image (window by window), as sent and with TTA: the
    same probabilities and typicality as the torch path, and torch never imported."""
    import json
    import subprocess
    import sys

    from core.predict import predict_array
    from tests import synthetic

    image = np.concatenate([np.concatenate([synthetic.tile(c, 3 + c) for c in (1, 2)], 1),
                            np.concatenate([synthetic.tile(c, 9 + c) for c in (5, 0)], 1)], 0)[:400, :420]
    np.save(tmp_path / "image.npy", image)
    proc = subprocess.run([sys.executable, "-c", TWIN_ALONE, str(checkpoint), str(tmp_path / "image.npy")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["timm"] is False
    loaded = load_checkpoint(checkpoint, engine="torch")
    for name, gray in (("tile", image[:227, :227]), ("large", image)):
        for tta in (False, True):
            p = predict_array(loaded, gray, tta=tta)
            expected = [p.probabilities[c] for c in loaded.class_names] + [p.typicality or 0.0]
            np.testing.assert_allclose(result["out"][f"{name}-{tta}"], expected, atol=1e-4, err_msg=f"{name} tta={tta}")


def test_load_twin_says_what_is_missing_in_one_line(exported, tmp_path):
    from core.onnx_model import load_twin

    assert load_twin(exported).engine_note.startswith("ONNX Runtime (tiny.onnx, verified on 24 real tiles")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_twin(tmp_path / "nowhere.pt")
    lonely = tmp_path / "lonely.pt"
    shutil.copy(exported, lonely)
    with pytest.raises(OnnxError, match=r"lonely.pt has no ONNX twin \(lonely.onnx; python -m core.export"):
        load_twin(lonely)
    shutil.copy(twin_path(exported), twin_path(lonely))
    lonely.write_bytes(lonely.read_bytes() + b"\0")  # another checkpoint now: the twin is not its own
    with pytest.raises(OnnxError, match="exported from another checkpoint"):
        load_twin(lonely)
    with pytest.raises(CheckpointError, match="predicts classes"):
        load_twin(exported, expect_classes=["a", "b"])


def test_the_predict_command_answers_from_the_twin_without_torch(tmp_path):
    """`python -m core.predict TILE` with the default model: the twin alone answers (no torch, no timm import);
    with --engine torch, torch does, and says so."""
    import subprocess
    import sys

    from PIL import Image

    from tests import synthetic

    Image.fromarray(synthetic.tile(1, 4)).save(tmp_path / "t.png")
    script = ("import runpy, sys\nargs = sys.argv[1:]\nsys.argv = ['core.predict', *args]\ntry:\n"
              "    runpy.run_module('core.predict', run_name='__main__')\nexcept SystemExit as exc:\n"
              "    print('EXIT', exc.code, 'torch' in sys.modules)\n")
    for extra, torch_loaded, engine in (([], False, "engine: ONNX Runtime ("), (["--engine", "torch"], True,
                                                                                "engine: torch (asked for)")):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.png"), *extra], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)
        lines = proc.stdout.strip().splitlines()
        assert lines[-1] == f"EXIT 0 {torch_loaded}", proc.stdout + proc.stderr[-2000:]
        assert lines[0].startswith("t.png: ") and lines[-2].startswith(engine), lines
