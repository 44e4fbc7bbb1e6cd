"""Scanning a whole image for landmarks (core.scan): windows at several sizes, merging, refusals, the CLI; and on
a test observation made of real tiles pasted at known places, the scan finds them where they are."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from core import scan
from core.scan import Detection, Windows, check_sizes, merge
from tests import model_fixtures, synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


def det(label: str, p: float, x0: int, y0: int, size: int = 100) -> Detection:
    return Detection(label, p, None, x0, y0, x0 + size, y0 + size, 1)


def test_overlapping_windows_of_a_class_merge_into_the_surest():
    found = merge([det("crater", 0.95, 0, 0), det("crater", 0.99, 20, 10), det("crater", 0.92, 300, 300),
                   det("spider", 0.97, 10, 10)])
    assert [(d.label, d.probability, d.windows) for d in found] == [("crater", 0.99, 2), ("spider", 0.97, 1),
                                                                   ("crater", 0.92, 1)]
    assert found[0].x0 == 20  # the surest window stands for the group


def test_windows_cover_the_image_and_are_resized_to_a_tile():
    gray = np.arange(300 * 500, dtype=np.uint32).reshape(300, 500).astype(np.uint8)
    w = Windows(gray, 96, 48)
    assert w.boxes[:, 2].max() == 500 and w.boxes[:, 3].max() == 300  # flush with the border, nothing missed
    assert w[0:3].shape == (3, 227, 227) and w[0:3].dtype == np.uint8
    assert len(w) == len({tuple(b) for b in w.boxes})


@pytest.mark.parametrize("sizes, message", [((16,), "below the smallest"), ((600,), "larger than the 500x300")])
def test_window_sizes_that_cannot_be_used_are_refused(sizes, message):
    assert message in check_sizes(sizes, (300, 500))[0]
    with pytest.raises(ValueError, match=message):
        scan.scan_image(None, np.zeros((300, 500), np.uint8), sizes)


@pytest.mark.parametrize("argv, message", [(["--sizes", "8"], "below the minimum 32"),
                                           (["--sizes", "abc"], "not a whole number"),
                                           (["--threshold", "nan"], "not a finite number"),
                                           (["--threshold", "1.5"], "above the maximum")])
def test_cli_refuses_bad_options_in_one_line(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        scan.main([str(tmp_path / "x.jpg"), "--out", str(tmp_path / "o"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_says_what_is_wrong_with_an_image_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"hello")
    assert scan.main([str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out" / "detections.csv").exists()


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_scan_finds_real_landmarks_pasted_at_known_places(shared_data, tmp_path, capsys):
    """An observation built from real tiles: a 4 x 6 background of `other` tiles with landmark tiles pasted at
    192 px on the 96 px grid of the 192 px windows. Each pasted landmark the model itself calls right (>= 0.9) as
    a tile must come back as a detection of its class centred inside where it was pasted."""
    from core.checkpoint import load_checkpoint
    from core.data import load_dataset
    from core.inference import predict_proba

    loaded = load_checkpoint()
    data = load_dataset([shared_data / "hirise-v3_2-subset"], label_overrides=False)
    names = list(loaded.class_names)
    originals = [r for r in data.records if r.is_original and r.split == "val"]
    rng = np.random.default_rng(24)
    background = [originals[i] for i in rng.permutation(len(originals)) if originals[i].label == 0][:24]
    wanted = {"crater": 2, "dark dune": 1, "bright dune": 1, "slope streak": 1}
    landmarks = []
    for label, count in wanted.items():
        pool = [r for r in originals if names[r.label] == label]
        probs = predict_proba(loaded, data.tiles(pool))
        sure = [r for r, p in zip(pool, probs) if p.argmax() == r.label and p.max() >= 0.9]
        landmarks += sure[:count]
    assert len(landmarks) >= 4, "too few landmarks the model calls right to paste"

    canvas = np.concatenate([np.concatenate(list(data.tiles(background[r * 6:(r + 1) * 6])), axis=1)
                             for r in range(4)], axis=0)  # 908 x 1362
    places = [(96 + 288 * (i % 4), 96 + 384 * (i // 4)) for i in range(len(landmarks))]
    for rec, (x, y) in zip(landmarks, places):
        canvas[y:y + 192, x:x + 192] = np.asarray(Image.fromarray(data.tiles([rec])[0]).resize((192, 192)))
    image = tmp_path / "observation.png"
    Image.fromarray(canvas).save(image)

    out = tmp_path / "scan"
    assert scan.main([str(image), "--out", str(out), "--sizes", "192,384"]) == 0
    rows = list(csv.DictReader(open(out / "detections.csv")))
    print(capsys.readouterr().out)
    hits = 0
    for rec, (x, y) in zip(landmarks, places):
        hits += any(r["label"] == names[rec.label] and x <= float(r["centre_x"]) <= x + 192
                    and y <= float(r["centre_y"]) <= y + 192 for r in rows)
    inside = sum(any(x <= float(r["centre_x"]) <= x + 192 and y <= float(r["centre_y"]) <= y + 192
                     for x, y in places) for r in rows)
    print({"pasted": len(landmarks), "found": hits, "detections": len(rows), "elsewhere": len(rows) - inside})
    assert hits >= len(landmarks) - 1, rows  # all but at most one, at 0.9
    assert all(float(r["probability"]) >= 0.9 for r in rows)


def test_a_scan_on_a_synthetic_image_runs_end_to_end(tiny, tmp_path):
    """The tiny model on a synthetic picture: the whole path (windows, the inference path, merging) runs and
    every detection is a window of the image at the threshold asked for."""
    tiles = [synthetic.tile(c % 8, seed=c) for c in range(6)]
    gray = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)], axis=0)
    found = scan.scan_image(tiny, gray, (96, 192), threshold=0.3)
    h, w = gray.shape
    assert all(0 <= d.x0 < d.x1 <= w and 0 <= d.y0 < d.y1 <= h and d.probability >= 0.3 for d in found)
    assert all(d.label != "other" for d in found)


def test_empty_sizes_and_a_scan_too_large_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((400, 600), np.uint8)).save(image)
    with pytest.raises(SystemExit) as exc:
        scan.main([str(image), "--out", str(tmp_path / "o"), "--sizes", ","])
    assert exc.value.code == 2 and "at least one window size" in capsys.readouterr().err
    monkeypatch.setattr(scan, "MAX_WINDOWS", 10)
    assert scan.main([str(image), "--out", str(tmp_path / "o"), "--sizes", "64", "--checkpoint",
                      str(model_fixtures.tiny_checkpoint())]) == 2
    err = capsys.readouterr().err
    assert "over the 10 limit: use larger windows" in err and not (tmp_path / "o" / "detections.csv").exists()
