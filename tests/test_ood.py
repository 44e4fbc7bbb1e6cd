"""The out-of-distribution score: fitted on features, calibrated on validation, stored and read back."""
from __future__ import annotations

import numpy as np
import pytest

from core.ood import FLAG_SHARE, FeatureDensity, OODError, describe
from core.ood.fit import fit_density


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

    from core.checkpoint import checkpoint_payload, load_checkpoint, read_checkpoint, save_checkpoint
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
    from core.checkpoint import checkpoint_payload, save_checkpoint
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
