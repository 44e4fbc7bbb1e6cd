"""CAMs follow a planted feature, work on frozen models, and leave no hooks, state or memory behind."""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

from core import explain as ex
from core.checkpoint import load_checkpoint
from core.inference import preprocess
from core.models import default_cam_layer, get_layer, set_frozen, stages
from tests import model_fixtures
from tests.model_fixtures import blob_tile

POSITIONS = [(60, 62), (165, 160)]  # two blob centres (row, col), far apart
TOLERANCE = 45  # px on the 227 tile: the blob model's CAM grid is 6x6, one cell is ~38 px



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="session")
def blob():
    return load_checkpoint(model_fixtures.blob_checkpoint())


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("method", ex.CAM_METHODS)
def test_every_method_follows_the_blob(blob, method):
    peaks = []
    for i, (cy, cx) in enumerate(POSITIONS):
        tile = blob_tile(cy, cx, seed=300 + i)
        e = ex.explain(blob, tile, method)
        assert e.target_name == "crater" and e.method == method and e.layer == "block3"
        assert e.heatmap.shape == tile.shape and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0 and e.heatmap.max() > 0.5
        assert e.overlay.shape == (*tile.shape, 3) and e.overlay.dtype == np.uint8
        assert e.probabilities.shape == (8,) and e.confidence == pytest.approx(e.probabilities.max())
        peak = np.unravel_index(int(e.heatmap.argmax()), e.heatmap.shape)
        assert np.hypot(peak[0] - cy, peak[1] - cx) < TOLERANCE, (method, (cy, cx), peak)
        peaks.append(peak)
    assert np.hypot(*np.subtract(peaks[0], peaks[1])) > 100  # the hot region moved with the blob
    assert _hooks(blob.model) == 0


def test_faithfulness_and_explicit_target(blob):
    tile = blob_tile(100, 120, seed=11)
    e = ex.explain(blob, tile, "gradcam")
    assert e.keep_top_confidence > e.remove_top_confidence and e.faithfulness > 0.2
    other = ex.explain(blob, tile, "gradcam", target=0, faithfulness=False)
    assert other.target == 0 and other.target_name == "other" and other.keep_top_confidence is None
    np.testing.assert_allclose(other.probabilities, e.probabilities, atol=1e-6)


def test_faithfulness_is_the_keep_and_remove_top_confidence(blob):
    """pytorch-grad-cam's perturbation metric gives what the Explain page describes: the calibrated confidence
    with only the hottest TOP_FRACTION of the CAM kept, and with it blanked to the mean brightness."""
    tile = blob_tile(100, 120, seed=11)
    e = ex.explain(blob, tile, "gradcam")
    x = preprocess(blob, tile[None])
    cam = torch.from_numpy(ex._resize(e.heatmap, x.shape[-2:]))
    top = (cam >= torch.quantile(cam.flatten(), 1 - ex.TOP_FRACTION)).float()
    with torch.no_grad():
        probs = torch.softmax(blob.model(torch.cat([x * top, x * (1 - top)])) / blob.temperature, 1)[:, e.target]
    assert e.keep_top_confidence == pytest.approx(float(probs[0]), abs=0.02)
    assert e.remove_top_confidence == pytest.approx(float(probs[1]), abs=0.02)


def test_the_package_progress_bars_are_silenced_only_during_a_call(blob):
    import tqdm
    from pytorch_grad_cam import score_cam
    ex.explain(blob, blob_tile(100, 120, seed=11), "scorecam", faithfulness=False)
    assert score_cam.tqdm is tqdm  # restored: nothing else that reads the module's tqdm is affected


def test_smoothing_options_and_other_layers(blob):
    tile = blob_tile(80, 150, seed=12)
    for kw in ({"aug_smooth": True}, {"eigen_smooth": True}, {"layer": "block2"}, {"layer": "block3.3"}):
        e = ex.explain(blob, tile, "gradcam", **kw)
        assert e.heatmap.shape == tile.shape and e.target_name == "crater", kw
    small = ex.explain(blob, tile[:100, :120], "gradcam++")
    assert small.heatmap.shape == (100, 120) and small.overlay.shape == (100, 120, 3)


def test_bad_arguments(blob):
    tile = blob_tile(80, 150, seed=12)
    with pytest.raises(ValueError, match="unknown CAM method"):
        ex.explain(blob, tile, "magic")
    with pytest.raises(ValueError, match="no layer"):
        ex.explain(blob, tile, layer="block9")
    with pytest.raises(ValueError, match="cannot be used for a CAM"):
        ex.explain(blob, tile, layer="fc")
    with pytest.raises(ValueError, match="not a class index"):
        ex.explain(blob, tile, target=8)
    assert _hooks(blob.model) == 0


def test_overlay_colours_are_rgb():
    gray = np.zeros((10, 10), np.uint8)
    hot = ex.overlay_heatmap(gray, np.ones((10, 10)), alpha=1.0)
    cold = ex.overlay_heatmap(gray, np.zeros((5, 5)), alpha=1.0)  # resized to the tile
    assert hot.shape == cold.shape == (10, 10, 3)
    assert hot[..., 0].mean() > 100 and hot[..., 2].mean() < 20  # jet's top is red
    assert cold[..., 2].mean() > 100 and cold[..., 0].mean() < 20  # ... and its bottom blue
    plain = ex.overlay_heatmap(np.full((4, 4), 200, np.uint8), np.ones((4, 4)), alpha=0.0)
    assert (plain == plain[0, 0, 0]).all()  # alpha 0: just the (gray) tile


@pytest.mark.parametrize("method", ["gradcam", "ablationcam"])
def test_frozen_training_model_is_explained_and_left_as_it_was(method):
    loaded = load_checkpoint(model_fixtures.blob_checkpoint())
    model = loaded.model
    set_frozen(model, "simple_cnn", stages("simple_cnn"))  # everything frozen, even the head
    model.train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # a trainer's pending gradient
    block3 = get_layer(model, "block3")
    e = ex.explain(loaded, blob_tile(60, 160, seed=5), method)
    assert e.target_name == "crater" and e.heatmap.max() > 0.5
    assert not any(p.requires_grad for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert get_layer(model, "block3") is block3 and _hooks(model) == 0


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_many_calls_leak_neither_hooks_nor_memory(blob):
    tile = blob_tile(120, 90, seed=13)
    for _ in range(10):  # warm up allocator caches
        ex.explain(blob, tile, "gradcam")
    gc.collect()
    before = _rss_mb()
    for _ in range(200):
        ex.explain(blob, tile, "gradcam")
    gc.collect()
    assert _hooks(blob.model) == 0
    assert all(p.grad is None for p in blob.model.parameters())
    assert _rss_mb() - before < 25


def test_ablationcam_shortcut_matches_the_full_model_path(blob, monkeypatch):
    """AblationCAM runs only the layers from the target on; without the shortcut, the package's full path."""
    tile = blob_tile(150, 70, seed=14)
    x = preprocess(blob, tile[None])
    assert ex._split_at(blob.model, "block3", x) is not None
    assert ex._split_at(blob.model, "block3.3", x) is None  # nested: no shortcut
    fast = ex.explain(blob, tile, "ablationcam")
    monkeypatch.setattr(ex, "_split_at", lambda *args: None)
    full = ex.explain(blob, tile, "ablationcam")
    assert np.abs(fast.heatmap - full.heatmap).max() < 0.1  # the CAM is upsampled from another size
    np.testing.assert_allclose(fast.probabilities, full.probabilities, atol=1e-5)
    assert _hooks(blob.model) == 0


def test_a_cam_and_an_eager_prediction_in_two_sessions_do_not_mix():
    """App sessions are threads sharing one model: a CAM hooks its layers for its duration, and an eager prediction
    (the app's first answers run eagerly, core.inference.defer_trace) from another session must wait for it,
    or its activations land in the CAM and the CAM's gradient hook fails on its inference tensors."""
    import threading

    from core.inference import defer_trace
    from core.predict import predict_array
    loaded = load_checkpoint(model_fixtures.blob_checkpoint())
    defer_trace(loaded)
    tile, other = blob_tile(60, 60, seed=1), blob_tile(150, 160, seed=2)
    cam_alone = ex.explain(loaded, tile, "gradcam").heatmap
    alone = predict_array(loaded, other).probabilities
    errors, cams, preds = [], [], []

    def predict_many():
        try:
            preds.extend(predict_array(loaded, other).probabilities for _ in range(60))
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=predict_many)
    thread.start()
    while thread.is_alive() and len(cams) < 30:
        cams.append(ex.explain(loaded, tile, "gradcam").heatmap)
    thread.join()
    assert not errors, errors[:1]
    assert all(np.allclose(c, cam_alone, atol=1e-5) for c in cams)
    assert all(p == pytest.approx(alone, abs=1e-5) for p in preds)


def test_a_cam_asked_for_while_ablationcam_has_the_layer_swapped_out_uses_the_real_layer():
    """Streamlit's fast reruns start a new run (a new thread) while the old one still computes: a CAM asked for
    while an AblationCAM holds the model, with its layer swapped for a stand-in, must hook the real layer once
    the lock is free, and leave the model whole (it once hooked the stand-in, failed, and put the stand-in into
    the model for good, breaking every later CAM of every session)."""
    import threading

    from pytorch_grad_cam.ablation_layer import AblationLayer
    from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

    from core.inference import MODEL_LOCK
    loaded = load_checkpoint(model_fixtures.blob_checkpoint())
    tile = blob_tile(60, 60, seed=1)
    alone = ex.explain(loaded, tile, "ablationcam").heatmap
    layer_name = default_cam_layer(loaded.arch)
    real, stand_in = get_layer(loaded.model, layer_name), AblationLayer()
    results, errors = [], []

    def another_session():
        try:
            results.append(ex.explain(loaded, tile, "ablationcam").heatmap)
        except Exception as exc:
            errors.append(exc)

    with MODEL_LOCK:  # what AblationCAM does in the first session, mid-way
        replace_layer_recursive(loaded.model, real, stand_in)
        thread = threading.Thread(target=another_session)
        thread.start()
        thread.join(timeout=1.0)  # it waits for the lock
        assert thread.is_alive()
        replace_layer_recursive(loaded.model, stand_in, real)
    thread.join()
    assert not errors, errors[:1]
    assert get_layer(loaded.model, layer_name) is real and _hooks(loaded.model) == 0
    np.testing.assert_allclose(results[0], alone, atol=1e-5)
    np.testing.assert_allclose(ex.explain(loaded, tile, "gradcam").heatmap,
                               ex.explain(load_checkpoint(model_fixtures.blob_checkpoint()), tile, "gradcam").heatmap,
                               atol=1e-5)
