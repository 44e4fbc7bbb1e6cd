"""predict_bytes on every image kind a researcher may hand over, bad files, class maps, and the CLI."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from core import predict
from core.classes import CLASS_NAMES
from core.imageio import ImageError
from core.settings import PROJECT_ROOT
from core.tiling import ClassMap, cut_windows, render_class_map, window_starts
from tests import model_fixtures, synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _check(pred: predict.Prediction, label: int) -> None:
    assert pred.label == CLASS_NAMES[label] and pred.index == label
    assert list(pred.probabilities) == list(CLASS_NAMES)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.tile.shape == (227, 227) and pred.tile.dtype == np.uint8
    assert len(pred.top_k) == 3 and pred.top_k[0] == (pred.label, pytest.approx(pred.confidence))
    assert [p for _, p in pred.top_k] == sorted((p for _, p in pred.top_k), reverse=True)


@pytest.mark.parametrize("kind", ["jpeg", "png", "rgb_jpeg", "rgba_png", "palette_png", "tiff16", "png16"])
def test_predict_formats(tiny, kind):
    label = {"jpeg": 1, "png": 2, "rgb_jpeg": 3, "rgba_png": 4, "palette_png": 5, "tiff16": 6, "png16": 7}[kind]
    arr = synthetic.tile(label, seed=4242 + label)
    data, note = {
        "jpeg": (synthetic.jpeg(arr), None),
        "png": (_encode(arr, "PNG"), None),
        "rgb_jpeg": (synthetic.jpeg(arr, "RGB"), "converted from RGB"),
        "rgba_png": (_encode(np.dstack([arr, arr, arr, np.full_like(arr, 255)]), "PNG"), "transparency"),
        "palette_png": (_encode(arr, "PNG", mode="P"), "converted from P"),
        "tiff16": (_encode(arr.astype(np.uint16) * 257, "TIFF"), "scaled from I;16"),
        "png16": (_encode(arr.astype(np.uint16) * 257, "PNG"), "scaled from"),
    }[kind]
    pred = predict.predict_bytes(tiny, data, f"tile.{kind}")
    _check(pred, label)
    if note:
        assert any(note in n for n in pred.notes), pred.notes
    assert pred.class_map is None


def test_predict_exif_rotated_jpeg(tiny):
    upright = synthetic.tile(2, seed=77)  # the blob of class 2 sits top right
    stored = np.rot90(upright, 1)  # what the camera wrote; orientation 6 says "turn 90 degrees clockwise"
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(np.ascontiguousarray(stored), "JPEG", exif=exif.tobytes(), quality=95)
    pred = predict.predict_bytes(tiny, data, "rotated.jpg")
    _check(pred, 2)
    assert any("EXIF" in n for n in pred.notes)


@pytest.mark.parametrize("data, message", [
    (b"this is a text file, not an image", "not an image"),
    (b"", "empty"),
    (synthetic.jpeg(synthetic.tile(1, 1))[:900], "truncated"),
    (_png_header(100_000, 100_000), "decompression bomb"),
    (_png_header(9_000, 8_000), "pixel limit"),
])
def test_predict_bad_bytes_raise_clear_image_errors(tiny, data, message):
    with pytest.raises(ImageError, match=message) as info:
        predict.predict_bytes(tiny, data, "upload.bin")
    assert str(info.value).startswith("upload.bin:")


@pytest.mark.parametrize("side", [160, 300])
def test_close_sizes_are_resized_to_one_tile(tiny, side):
    arr = np.asarray(Image.fromarray(synthetic.tile(4, seed=5)).resize((side, side), Image.BILINEAR))
    pred = predict.predict_bytes(tiny, _encode(arr, "PNG"), "near.png")
    _check(pred, 4)
    assert pred.class_map is None and any("resized" in n for n in pred.notes)


def test_large_image_gets_a_class_map_matching_its_tiles(tiny):
    labels = np.array([[1, 0, 7], [5, 3, 6]])
    mosaic = np.block([[synthetic.tile(int(c), seed=900 + 3 * r + k) for k, c in enumerate(row)]
                       for r, row in enumerate(labels)])  # 454 x 681: one tile per window at stride 227
    pred = predict.predict_bytes(tiny, _encode(mosaic, "PNG"), "crop.png")
    cm = pred.class_map
    assert isinstance(cm, ClassMap) and cm.grid_shape == (2, 3) and pred.image_shape == (454, 681)
    np.testing.assert_array_equal(cm.classes, labels)
    assert cm.boxes.shape == (2, 3, 4) and cm.boxes[1, 2].tolist() == [454, 227, 681, 454]
    assert cm.probabilities.shape == (2, 3, 8) and np.allclose(cm.probabilities.sum(-1), 1, atol=1e-4)
    assert sum(cm.counts().values()) == 6 and any("windows" in n for n in pred.notes)
    overlay = render_class_map(mosaic, cm)
    assert overlay.shape == (454, 681, 3) and overlay.dtype == np.uint8
    assert (overlay[100, 350] == mosaic[100, 350]).all()  # `other` stays uncoloured
    assert not (overlay[100, 100] == mosaic[100, 100]).all()  # crater is coloured


def test_large_image_with_overlapping_windows(tiny):
    gray = np.full((700, 1000), 100, np.uint8)
    pred = predict.predict_array(tiny, gray, "big", stride=113)
    rows, cols = len(window_starts(700, 227, 113)), len(window_starts(1000, 227, 113))
    assert pred.class_map.grid_shape == (rows, cols) == (6, 8)
    assert render_class_map(gray, pred.class_map).shape == (700, 1000, 3)


def test_windows_cover_the_image_and_pad_thin_strips():
    assert window_starts(681, 227, 227) == [0, 227, 454]
    assert window_starts(700, 227, 227) == [0, 227, 454, 473]
    tiles, boxes, notes = cut_windows(np.zeros((100, 900), np.uint8))
    assert tiles.shape == (4, 227, 227) and boxes[0, -1].tolist() == [673, 0, 900, 100] and notes


def test_predict_cli(tiny, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "crater.jpg").write_bytes(synthetic.jpeg(synthetic.tile(1, seed=3)))
    (folder / "spider.png").write_bytes(_encode(synthetic.tile(7, seed=4), "PNG"))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    big = tmp_path / "crop.png"
    big.write_bytes(_encode(np.block([[synthetic.tile(1, 8), synthetic.tile(0, 9)]]), "PNG"))
    out, csv_path = tmp_path / "out", tmp_path / "preds.csv"
    code = predict.main(["--checkpoint", str(model_fixtures.tiny_checkpoint()), str(folder), str(big),
                         "--top-k", "2", "--csv", str(csv_path), "--cam", "gradcam", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # one file was skipped, the others still processed
    assert "crater.jpg: crater" in captured.out and "spider.png: spider" in captured.out
    assert "broken.jpg: not an image" in captured.err and "Traceback" not in captured.err
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("file,predicted,confidence")
    written = sorted(p.name for p in out.iterdir())
    assert written == ["crater-gradcam.png", "crop-classmap.png", "crop-gradcam.png", "spider-gradcam.png"]
    assert Image.open(out / "crater-gradcam.png").size == (227, 227)


def test_predict_cli_errors(tmp_path, capsys):
    assert predict.main(["--checkpoint", str(tmp_path / "none.pt"), str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(model_fixtures.tiny_checkpoint()), str(tmp_path / "nope.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ten_bit_data_in_a_16_bit_file_is_not_dark():
    from core.imageio import decode_gray
    ten_bit = (synthetic.tile(3, seed=5).astype(np.uint16) * 4)  # values up to 1020
    gray, notes = decode_gray(_encode(ten_bit, "TIFF"), "ten.tif")
    assert any("10-bit" in n for n in notes)
    assert abs(float(gray.mean()) - float(synthetic.tile(3, seed=5).mean())) < 2


def test_the_prediction_path_does_not_import_scikit_learn():
    """Prediction (`python -m core.predict`, the app's model loading) must not pay for scikit-learn: only
    evaluation's metrics need it. (pytorch-grad-cam imports it itself, so core.explain does load it.)"""
    code = "import sys, core.predict; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=PROJECT_ROOT)
    assert out.stdout.strip() == "False"



def test_a_deferred_trace_serves_one_tile_eagerly_until_prepared(tiny):
    """The app's first answer runs eagerly (no trace to pay for); prepare_trace makes the trace, with the same
    prediction; a batch makes it by itself, since it pays there."""
    from core.checkpoint import load_checkpoint
    from core.inference import DEFERRED, defer_trace, prepare_trace
    loaded = load_checkpoint(tiny.path)
    defer_trace(loaded)
    tile = synthetic.tile(1, seed=3)
    eager = predict.predict_array(loaded, tile)
    assert loaded._frozen is DEFERRED
    prepare_trace(loaded)
    assert loaded._frozen not in (None, DEFERRED, False)
    traced = predict.predict_array(loaded, tile)
    assert traced.label == eager.label
    np.testing.assert_allclose([traced.probabilities[c] for c in CLASS_NAMES],
                               [eager.probabilities[c] for c in CLASS_NAMES], atol=1e-4)
    batch = load_checkpoint(tiny.path)
    defer_trace(batch)
    from core.inference import predict_logits
    predict_logits(batch, np.stack([tile, tile]), show_progress=False)
    assert batch._frozen not in (None, DEFERRED)


def test_the_home_page_imports_neither_torchvision_nor_timm():
    """Cold start: listing models and reading a checkpoint's description must not import torchvision (which
    imports torch._dynamo, about a second) or timm; building a model does."""
    code = ("import sys, ui.appstate, ui.errors, ui.imbalance, ui.intervals, ui.loaders, "  # views/home.py's ui imports
            "core.checkpoint as c; info = c.checkpoint_info(); "
            "print('torchvision' in sys.modules, 'timm' in sys.modules, info.arch, info.image_size)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=PROJECT_ROOT)
    vision, timm, arch, size = out.stdout.split()
    assert (vision, timm) == ("False", "False") and arch.startswith("tf_efficientnet_lite") and int(size) >= 128


def test_a_class_map_has_a_legend_in_the_one_class_palette():
    """Explain's class map comes with its key: a swatch in each drawn class's colour (other is left out)."""
    from core.classes import CLASS_COLORS, class_hex
    from core.tiling import legend_strip
    strip = legend_strip(list(CLASS_NAMES), 300)
    colours = {tuple(int(v) for v in px) for px in strip.reshape(-1, 3)}
    assert all(CLASS_COLORS[n] in colours for n in CLASS_NAMES if n != "other")
    assert strip.shape[1] == 300 and strip.shape[0] > legend_strip(list(CLASS_NAMES), 1200).shape[0]  # it wraps
    assert len({class_hex(n) for n in CLASS_NAMES}) == len(CLASS_NAMES)  # eight colours, none shared


def test_explain_tells_two_uploads_with_one_name_apart():
    from ui.uploads import unique_names
    assert [n for n, _ in unique_names([("a.jpg", b"1"), ("b.jpg", b"2"), ("a.jpg", b"3")])] == \
        ["a.jpg", "b.jpg", "a (2).jpg"]


def test_every_probability_bar_carries_its_figure():
    from ui.figures import probability_bars
    fig = probability_bars([0.9, 0.06, 0.03, 0.005, 0.004, 0.0005, 0.0003, 0.0002])
    bar = fig.data[0]
    assert len(bar.text) == 8 and "<0.1%" in bar.text and all(t for t in bar.text)
    assert all(pos == "outside" for pos, x in zip(bar.textposition, bar.x, strict=True) if x < 0.5)


# ---- class maps of large images drawn in bounded memory -------------------------------------------------------

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
    rng = np.random.default_rng(seed)
    ys, xs = window_starts(h, 227, stride), window_starts(w, 227, stride)
    boxes = np.array([[[x, y, min(x + 227, w), min(y + 227, h)] for x in xs] for y in ys], dtype=np.int64)
    shape = (len(ys), len(xs))
    return ClassMap(classes=rng.integers(0, 8, shape), confidence=rng.random(shape).astype(np.float32),
                    probabilities=np.zeros((*shape, 8), np.float32), boxes=boxes, window=227, stride=stride,
                    image_shape=(h, w), class_names=list(CLASS_NAMES))


@pytest.mark.parametrize("alpha, min_confidence", [(0.45, 0.0), (0.8, 0.5), (1.0, 0.0), (0.0, 0.0)])
def test_class_map_rendering_draws_what_it_drew_before(alpha, min_confidence):
    gray = np.random.default_rng(1).integers(0, 256, (700, 1000), dtype=np.uint8)
    cm = _random_class_map(700, 1000, 113, seed=2)
    np.testing.assert_array_equal(render_class_map(gray, cm, alpha, min_confidence=min_confidence),
                                  _reference_render(gray, cm, alpha, min_confidence=min_confidence))


def test_class_map_of_a_large_image_needs_little_more_than_its_result():
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


@pytest.mark.parametrize("side", [9_000, 12_000, 100_000])
def test_an_oversized_image_is_refused_naming_one_limit(tiny, side):
    """Issue 33: a 12000x12000 PNG was refused naming two limits (ours and Pillow's)."""
    with pytest.raises(ImageError) as exc:
        predict.predict_bytes(tiny, _png_header(side, side), "big.png")
    assert "64,000,000-pixel limit" in str(exc.value) and "89,478,485" not in str(exc.value)
