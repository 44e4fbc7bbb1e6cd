"""Flip/turn averaging as a first-class choice (issue 29): one prediction path, 8 views, every entry point."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core import predict
from core.dihedral import VIEW_NAMES
from core.inference import predict_logits, predict_views, probabilities
from tests import model_fixtures


def _tile(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((227, 227)) * 255).astype(np.uint8)


def test_predict_views_are_the_8_flips_and_turns_and_their_mean_is_tta(tiny):
    tiles = np.stack([_tile(0), _tile(1)])
    _features, views = predict_views(tiny, tiles, show_progress=False)
    assert views.shape == (8, 2, len(tiny.class_names)) and len(VIEW_NAMES) == 8
    np.testing.assert_allclose(views[0], predict_logits(tiny, tiles, show_progress=False), atol=1e-5)
    np.testing.assert_allclose(views.mean(0), predict_logits(tiny, tiles, tta=True, show_progress=False), atol=1e-5)
    turned = np.rot90(tiles, 1, axes=(1, 2)).copy()  # a turned tile has the same 8 views: the same TTA prediction
    _, views_turned = predict_views(tiny, turned, show_progress=False)
    np.testing.assert_allclose(views_turned.mean(0), views.mean(0), atol=1e-4)


def test_a_tile_with_tta_keeps_each_views_probabilities(tiny):
    pred = predict.predict_array(tiny, _tile(2), "t", tta=True)
    assert pred.tta and pred.view_probabilities.shape == (8, len(tiny.class_names))
    _, views = predict_views(tiny, _tile(2)[None], show_progress=False)
    expected = probabilities(views.mean(0), tiny.temperature)[0]
    np.testing.assert_allclose([pred.probabilities[c] for c in tiny.class_names], expected, atol=1e-5)
    plain = predict.predict_array(tiny, _tile(2), "t")
    assert not plain.tta and plain.view_probabilities is None and plain.row()["tta"] == "as sent"


def test_large_images_average_each_windows_views(tiny):
    big = np.concatenate([_tile(3), _tile(4)], axis=1)
    pred = predict.predict_array(tiny, big, "big", tta=True)
    assert pred.class_map is not None and pred.tta and pred.view_probabilities is None


def test_predict_cli_takes_tta_and_no_tta(tmp_path, capsys):
    path = tmp_path / "t.png"
    Image.fromarray(_tile(5)).save(path)
    ckpt = str(model_fixtures.tiny_checkpoint())
    assert predict.main(["--checkpoint", ckpt, str(path), "--tta", "--csv", str(tmp_path / "a.csv")]) == 0
    assert "8 views" in (tmp_path / "a.csv").read_text()
    assert predict.main(["--checkpoint", ckpt, str(path), "--no-tta", "--csv", str(tmp_path / "b.csv")]) == 0
    assert "as sent" in (tmp_path / "b.csv").read_text()


def test_a_checkpoint_with_nan_weights_or_absurd_normalisation_is_refused(tmp_path, capsys):
    """Issue 33, item 13: non-finite outputs are refused in one line, before any prediction."""
    from core.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
    from core.checkpoint_file import save_checkpoint
    payload = read_checkpoint(model_fixtures.tiny_checkpoint())
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    broken = {**payload, "state_dict": {**payload["state_dict"], name: torch.full_like(payload["state_dict"][name],
                                                                                        float("nan"))}}
    save_checkpoint(tmp_path / "nan.pt", broken)
    save_checkpoint(tmp_path / "norm.pt", {**payload, "mean": 1e308, "std": 1e-308})
    for file, message in (("nan.pt", "NaN or infinite"), ("norm.pt", "cannot normalise tiles")):
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / file)
        assert predict.main(["--checkpoint", str(tmp_path / file), str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
        from core import evaluate
        from core.scan import scanner as scan
        assert evaluate.main(["--checkpoint", str(tmp_path / file), "--data", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
        Image.fromarray(_tile(9)).save(tmp_path / "obs.png")
        assert scan.main([str(tmp_path / "obs.png"), "--sizes", "96", "--checkpoint", str(tmp_path / file), "--out",
                          str(tmp_path / f"out-{file}")]) == 2
        err = capsys.readouterr().err
        assert message in err and not (tmp_path / f"out-{file}").exists()


def test_a_small_checkpoint_that_inflates_to_gigabytes_is_refused_before_loading(tmp_path, monkeypatch):
    """Issue 33, item 9: bounded by the zip's directory, before torch reads a byte of it."""
    from core import checkpoint
    from core.checkpoint import CheckpointError, read_checkpoint
    from core.checkpoint_file import save_checkpoint
    payload = read_checkpoint(model_fixtures.tiny_checkpoint())
    save_checkpoint(tmp_path / "big.pt", {**payload, "metrics": {"x": torch.zeros(2_000_000)}})  # 8 MB of zeros
    monkeypatch.setattr(checkpoint, "MAX_UNPACKED_BYTES", 4 * 2**20)
    with pytest.raises(CheckpointError, match=r"unpacks to .* MiB, over the 4 MiB"):
        read_checkpoint(tmp_path / "big.pt")


def test_explain_page_shows_the_8_views_when_tta_is_on(tmp_path):
    import json
    from pathlib import Path

    from core.settings import APP_STATE_FILE
    from tests import synthetic
    from tests.helpers import run_page, texts
    data = synthetic.write_folder(tmp_path / "data", synthetic.official_files("3.2", n_obs=6, per_obs=4, missing=0))
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(data)]}))
    try:
        at = run_page("views/explain.py")
        at.toggle(key="browse").set_value(True).run()
        at.checkbox(key="use_pick").check().run()
        assert not any("8 views" in e.label for e in at.expander)
        next(t for t in at.toggle if t.label.startswith("Average 8 flips")).set_value(True).run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("8 views" in e.label for e in at.expander)
        assert "The Grad-CAM explains the tile as uploaded" in texts(at)
        table = next(d.value for d in at.dataframe if list(d.value.index) == list(VIEW_NAMES))
        assert table.shape == (8, 8)
    finally:
        Path(APP_STATE_FILE).unlink(missing_ok=True)


def test_a_scan_with_tta_scores_each_window_by_its_8_views(tiny):
    from core.scan import scanner as scan
    from core.scan.raster import ArrayRaster
    from core.tiling import Windows
    gray = np.concatenate([_tile(7), _tile(8)], axis=1)
    plain, = scan.scan([ArrayRaster(gray)], tiny, sizes=(96,), threshold=0.5)
    averaged, = scan.scan([ArrayRaster(gray)], tiny, sizes=(96,), threshold=0.5, tta=True)
    windows = Windows(ArrayRaster(gray), 96, 48)
    _, views = predict_views(tiny, windows[0:len(windows)], show_progress=False)
    expected = probabilities(views.mean(0), tiny.temperature)
    got = averaged.grids[0].probabilities.reshape(-1, expected.shape[1])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not np.allclose(plain.grids[0].probabilities.reshape(-1, expected.shape[1]), expected, atol=1e-4)
    assert scan.build_parser().parse_args(["x", "--out", "o", "--tta"]).tta is True
