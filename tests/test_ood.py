"""The out-of-distribution check: the feature score (fitted on features, calibrated on validation, stored and read
back), the pixel check that says an input is unlike any HiRISE tile, and the one verdict made of both (issue 33:
obvious non-tiles are flagged by every shipped model, real tiles almost never)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.ood import FLAG_SHARE, FeatureDensity, OODError, describe, judge, judge_windows
from core.ood.fit import fit_density
from core.ood.pixels import tile_statistics, unlike_hirise
from core.settings import PROJECT_ROOT

SHIPPED = ["hirise-efficientnet-lite0", "hirise-efficientnet-lite2", "hirise-resnet18"]


def _clusters(rng: np.random.Generator, n: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Three classes on a low-dimensional manifold, like a network's features: most spread in a few directions."""
    centres = rng.normal(0, 4, (3, dim))
    basis = rng.normal(0, 1, (4, dim))
    labels = rng.integers(0, 3, n)
    x = centres[labels] + rng.normal(0, 1, (n, 4)) @ basis + rng.normal(0, 0.1, (n, dim))
    return x, labels


def test_in_distribution_is_typical_and_far_inputs_are_flagged():
    rng = np.random.default_rng(0)
    x, y = _clusters(rng, 1500)
    train, val, test = x[:1000], x[1000:1250], x[1250:]
    density = fit_density(train, y[:1000], val, n_components=8)
    typical = density.typicality(test)
    assert 0.35 < np.median(typical) < 0.65  # calibrated on validation: fresh tiles sit in the middle
    assert (typical >= FLAG_SHARE).mean() < 0.12  # about 1 - FLAG_SHARE by construction
    noise = rng.normal(0, 4, (50, x.shape[1]))  # same scale, not on the manifold
    assert (density.typicality(noise) >= FLAG_SHARE).all()
    assert density.distance(noise).min() > density.val_quantiles[-1]


def test_round_trip_through_plain_values_gives_the_same_scores():
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, 600)
    density = fit_density(x[:400], y[:400], x[400:500], n_components=6)
    again = FeatureDensity.from_dict(density.to_dict())
    np.testing.assert_allclose(again.typicality(x[500:]), density.typicality(x[500:]), atol=1e-3)


@pytest.mark.parametrize("broken", [None, {}, {"class_means": [[1.0]]}, "text"])
def test_a_malformed_reference_is_refused_in_words(broken):
    with pytest.raises(OODError, match="malformed"):
        FeatureDensity.from_dict(broken)


def test_negative_or_nan_values_in_a_reference_are_refused():
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, 300)
    values = fit_density(x[:200], y[:200], x[200:]).to_dict()
    values["noise_variance"] = float("nan")
    with pytest.raises(OODError):
        FeatureDensity.from_dict(values)


def test_features_of_another_width_are_refused():
    rng = np.random.default_rng(3)
    x, y = _clusters(rng, 300)
    density = fit_density(x[:200], y[:200], x[200:])
    with pytest.raises(OODError, match="dimensions"):
        density.distance(np.zeros((2, 5)))


def test_too_few_rows_to_fit():
    with pytest.raises(OODError):
        fit_density(np.zeros((1, 4)), np.zeros(1), np.zeros((5, 4)))
    with pytest.raises(OODError, match="validation"):
        fit_density(np.zeros((10, 4)), np.zeros(10), np.zeros((1, 4)))


def test_describe_flags_only_beyond_the_share():
    assert describe(0.5)[1] is False
    text, flagged = describe(1.0)
    assert flagged and "over 99.5%" in text


def test_the_cli_adds_a_reference_to_an_old_checkpoint(tmp_path, v32_folder):
    """A checkpoint from before references existed gets one from the data it records; it then reports
    typicality, and a corrupt stored reference is ignored with the model still usable."""
    import torch

    from core.checkpoint import checkpoint_payload, load_checkpoint, read_checkpoint
    from core.checkpoint_file import save_checkpoint
    from core.models import build_model
    from core.ood.__main__ import main
    from core.predict import predict_array

    path = tmp_path / "old.pt"
    model = build_model("simple_cnn", num_classes=8)
    save_checkpoint(path, checkpoint_payload(model, arch="simple_cnn", image_size=48, mean=0.5, std=0.25,
                                             config={"data": [str(v32_folder)]}))
    assert load_checkpoint(path).ood is None
    assert main([str(path)]) == 0
    loaded = load_checkpoint(path)
    assert loaded.ood is not None
    assert 0.0 <= predict_array(loaded, np.zeros((227, 227), np.uint8)).typicality <= 1.0
    payload = read_checkpoint(path)
    payload["ood"] = {"class_means": "broken"}
    torch.save(payload, path)
    assert load_checkpoint(path).ood is None


def test_the_cli_says_what_is_missing(tmp_path, capsys):
    from core.checkpoint import checkpoint_payload
    from core.checkpoint_file import save_checkpoint
    from core.models import build_model
    from core.ood.__main__ import main

    path = tmp_path / "nodata.pt"
    save_checkpoint(path, checkpoint_payload(build_model("simple_cnn", num_classes=8), arch="simple_cnn",
                                             image_size=48, mean=0.5, std=0.25, config={}))
    assert main([str(path)]) == 2
    assert "records no data: pass --data" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pt")]) == 2


@pytest.mark.realdata
def test_ood_report_on_real_tiles(shared_data):
    """tools/ood_report.py (docs/ood.md's figures, measured with the previous default, EfficientNet-Lite2 at 260 px)
    runs on real tiles: uniform noise is flagged, real tiles mostly not."""
    import subprocess
    import sys

    from core.settings import PROJECT_ROOT
    out = subprocess.run([sys.executable, "tools/ood_report.py", "--data", str(shared_data / "hirise-v3_2-subset"),
                          "--tiles", "20", "--seeds", "2", "--checkpoint",
                          str(PROJECT_ROOT / "checkpoints" / "hirise-efficientnet-lite2.pt")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line[:40].strip(): line[40:].split() for line in out.stdout.splitlines()[2:]}
    real = next(v for k, v in rows.items() if k.startswith("real tiles"))
    assert rows["uniform noise"][-1] == "100%" and int(real[-1].rstrip("%")) <= 50


# --- Issue 33: obvious non-tiles are flagged by every shipped model ---------------------------------------------------

def _text_on_white(lines: int = 8, size: int = 10) -> np.ndarray:
    """Black text on a white 227x227 page, drawn with PIL."""
    from PIL import ImageFont

    img = Image.new("L", (227, 227), 255)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    for i in range(lines):
        draw.text((8, 8 + i * (size + 14)), f"HiRISE line {i}: not a tile", fill=0, font=font)
    return np.asarray(img)


def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph in grayscale at 227x227 (bilinear, as an upload is resized)."""
    from skimage import color, data

    img = getattr(data, name)()
    gray = color.rgb2gray(img[..., :3]) * 255 if img.ndim == 3 else img.astype(np.float64)
    return np.asarray(Image.fromarray(gray.clip(0, 255).astype(np.uint8)).resize((227, 227), Image.BILINEAR))


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (227, 227), dtype=np.uint8)


# name -> (image, the words the pixel check must give)
NON_TILES = {
    "all black": (lambda: np.zeros((227, 227), np.uint8), "constant image"),
    "all white": (lambda: np.full((227, 227), 255, np.uint8), "constant image"),
    "mid grey": (lambda: np.full((227, 227), 128, np.uint8), "constant image"),
    **{f"uniform noise seed {s}": (lambda s=s: _noise(s), "pixel noise") for s in range(4)},
    "gaussian noise": (lambda: np.clip(np.random.default_rng(7).normal(128, 40, (227, 227)), 0, 255).astype(np.uint8),
                       "pixel noise"),
    "faint noise on grey": (lambda: np.clip(np.random.default_rng(8).normal(128, 3, (227, 227)), 0, 255)
                            .astype(np.uint8), "pixel noise"),
    "text on white": (_text_on_white, "white"),
    "large text on white": (lambda: _text_on_white(lines=3, size=40), "white"),
    "photo: camera": (lambda: _photo("camera"), "photograph"),
    "photo: astronaut": (lambda: _photo("astronaut"), "photograph"),
}


@pytest.mark.parametrize("case", list(NON_TILES))
def test_the_pixel_check_says_why_a_non_tile_is_unlike_any_hirise_tile(case):
    make, words = NON_TILES[case]
    reason = unlike_hirise(make())
    assert reason is not None and words in reason, (case, reason, tile_statistics(make()))


@pytest.fixture(scope="module")
def shipped_models(one_thread):
    from core.checkpoint import load_checkpoint
    return {name: load_checkpoint(PROJECT_ROOT / "checkpoints" / f"{name}.pt") for name in SHIPPED}


@pytest.mark.parametrize("model", SHIPPED)
def test_every_shipped_model_flags_obvious_non_tiles(shipped_models, model):
    """An all-black image was 'crater 40%, Typical' with the default model (issue 33): the verdict that prediction
    reports flags every one of these, for every shipped model (ResNet-18 has no feature reference at all), with the
    reason in its words and in the CSV row."""
    from core.predict import predict_array

    loaded = shipped_models[model]
    missed = []
    for case, (make, words) in NON_TILES.items():
        pred = predict_array(loaded, make(), case)
        if not (pred.ood.flagged and pred.ood.reason.startswith("unlike any HiRISE tile") and words in pred.ood.reason):
            missed.append((case, pred.label, pred.typicality, pred.ood.reason))
        assert pred.ood.text.startswith("Unusual input") and pred.ood.reason in pred.ood.text
        assert pred.row()["unusual"] == "yes" and pred.row()["unusual_reason"] == pred.ood.reason
    assert not missed, missed


def test_the_verdict_puts_the_pixels_before_a_typical_feature_score():
    black = np.zeros((227, 227), np.uint8)
    verdict = judge(black, 0.04)  # what the default model's features said of an all-black image
    assert verdict.flagged and verdict.reason == "unlike any HiRISE tile: constant image"
    assert verdict.typicality == 0.04
    terrain = _terrain()
    assert unlike_hirise(terrain) is None
    assert not judge(terrain, 0.5).flagged and judge(terrain, 0.5).text.startswith("Typical input")
    assert judge(terrain, 0.99).flagged and "features" in judge(terrain, 0.99).reason
    no_reference = judge(terrain, None)  # a checkpoint without a reference: the pixels are still checked
    assert not no_reference.flagged and "no out-of-distribution reference" in no_reference.text
    assert judge(black, None).flagged
    assert describe(0.5) == (judge(None, 0.5).text, False)


def _terrain(seed: int = 0) -> np.ndarray:
    """Smooth random relief at HiRISE-like contrast: what the pixel check must let through."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(np.random.default_rng(seed).normal(0, 1, (227, 227)), 3)
    return np.clip(120 + 18 * field / field.std(), 0, 255).astype(np.uint8)


def test_a_large_image_is_judged_by_its_windows():
    black = np.zeros((227, 227), np.uint8)
    terrain = _terrain()
    mostly = judge_windows(np.stack([black, black, terrain]), np.array([0.1, 0.2, 0.3]))
    assert mostly.flagged and "constant image (2 of its 3 windows)" in mostly.reason
    some = judge_windows(np.stack([black, terrain, terrain]), np.array([0.1, 0.2, 0.3]))
    assert not some.flagged and some.typicality == 0.2 and "1 of its 3 windows are unlike" in some.text
    assert not judge_windows(np.stack([terrain, terrain]), None).flagged


def test_the_cli_says_an_input_is_unusual_and_why(tmp_path, capsys, one_thread):
    from core.predict import main

    Image.fromarray(np.zeros((227, 227), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(_terrain()).save(tmp_path / "terrain.png")
    assert main([str(tmp_path), "--csv", str(tmp_path / "out.csv")]) == 0
    out = capsys.readouterr().out
    assert "black.png: " in out and "unusual input: unlike any HiRISE tile: constant image" in out
    assert out.count("unusual input: unlike any HiRISE tile") == 1  # the relief passes the pixel check
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert "unusual,unusual_reason" in rows[0]
    assert any(r.startswith("black.png,") and ",yes,unlike any HiRISE tile: constant image," in r for r in rows)


@pytest.mark.realdata
def test_the_pixel_check_rarely_flags_real_tiles(shared_data):
    """Every tile of hirise-v3_2-subset (7,360: 1,126 originals and their official rotated, flipped and brightened
    copies) through the pixel check: measured 0 flagged (docs/ood.md), held here at 0.5% at most."""
    folder = shared_data / "hirise-v3_2-subset" / "map-proj-v3_2"
    files = sorted(folder.glob("*.jpg"))
    assert len(files) > 7000
    flagged = [(f.name, r) for f in files if (r := unlike_hirise(np.asarray(Image.open(f).convert("L")))) is not None]
    augmented = sum(1 for f in files if f.stem.rsplit("-", 1)[-1] in ("r90", "r180", "r270", "fh", "fv", "brt"))
    assert augmented > 5000  # the augmented copies are in the measure
    assert len(flagged) <= 0.005 * len(files), flagged[:20]


@pytest.mark.realdata
def test_the_default_models_verdict_on_real_tiles(shared_data, one_thread):
    """The whole verdict (pixels, then the default model's features) on a seeded sample of 200 real tiles: the pixel
    check flags none; the feature flag, meant to catch about 1 tile in 20, flags 12 (6%; 23 of another 400, 5.8%:
    docs/ood.md), held at 8%."""
    from core.checkpoint import load_checkpoint
    from core.predict import predict_array

    files = sorted((shared_data / "hirise-v3_2-subset" / "map-proj-v3_2").glob("*.jpg"))
    sample = [files[i] for i in np.random.default_rng(0).choice(len(files), 200, replace=False)]
    loaded = load_checkpoint()
    verdicts = {f.name: predict_array(loaded, np.asarray(Image.open(f).convert("L"))).ood for f in sample}
    assert not [n for n, v in verdicts.items() if v.reason.startswith("unlike any HiRISE tile")]
    flagged = [n for n, v in verdicts.items() if v.flagged]
    assert len(flagged) <= 16, flagged


def test_the_explain_page_shows_the_verdict_and_its_reason(tmp_path):
    """The verdict reaches the Explain page: a data set whose `other` tiles are all black, one picked and explained
    with the shipped default model, is shown as unlike any HiRISE tile, and why."""
    import json
    from pathlib import Path

    from core.settings import APP_STATE_FILE
    from tests import synthetic
    from tests.helpers import run_page

    files = synthetic.official_files("3.2", n_obs=6, per_obs=4, missing=0)
    black = synthetic.jpeg(np.zeros((227, 227), np.uint8))
    labels = dict(line.split()[:2] for line in files["labels-map-proj_v3_2.txt"].decode().split("\n") if line)
    files = {k: black if labels.get(k.rsplit("/", 1)[-1]) == "0" else v for k, v in files.items()}
    data = synthetic.write_folder(tmp_path / "data", files)
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(data)]}))
    try:
        at = run_page("views/explain.py")
        at.toggle(key="browse").set_value(True).run()
        at.checkbox(key="use_pick").check().run()
        assert not at.exception, [e.value for e in at.exception]
        shown = [w.value for w in at.warning]
        assert any(w.startswith("Unusual input: unlike any HiRISE tile: constant image") for w in shown), shown
    finally:
        Path(APP_STATE_FILE).unlink(missing_ok=True)
