"""Scanning whole observations for landmarks (core.scan, core.scan.raster, core.scan.georef, core.scan.detections, core.experiment.cluster):
windows, merging, georeferencing checked against coordinates worked out by hand, the outputs opened by GIS
libraries, the refusals, the Dask engine with a worker killed mid-scan; and on a test observation made of real
tiles pasted at known places, the scan finds them where they are, in every format."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.experiment import cluster
from core.scan import scanner as scan
from core.scan.detections import Detection, merge
from core.scan.georef import LabelError, find_label, from_pds_label
from core.scan.raster import ArrayRaster, RasterError, open_raster
from core.tiling import Windows
from tests import model_fixtures, synthetic
from tools import observation

pytestmark = pytest.mark.usefixtures("one_thread")


def det(label: str, p: float, x0: int, y0: int, size: int = 100) -> Detection:
    return Detection(label, p, None, x0, y0, x0 + size, y0 + size, 1)


def test_overlapping_windows_of_a_class_merge_into_the_surest():
    found = merge([det("crater", 0.95, 0, 0), det("crater", 0.99, 20, 10), det("crater", 0.92, 300, 300),
                   det("spider", 0.97, 10, 10)])
    assert [(d.label, d.probability, d.windows) for d in found] == [("crater", 0.99, 2), ("spider", 0.97, 1),
                                                                   ("crater", 0.92, 1)]
    assert found[0].x0 == 20  # the surest window stands for the group


def test_windows_cover_the_image_and_a_batch_reads_each_band_of_rows_once():
    gray = np.arange(300 * 500, dtype=np.uint32).reshape(300, 500).astype(np.uint8)
    reads = []

    class Counting(ArrayRaster):
        def read(self, x0, y0, x1, y1):
            reads.append((x0, y0, x1, y1))
            return super().read(x0, y0, x1, y1)

    w = Windows(Counting(gray), 96, 48)
    assert w.boxes[:, 2].max() == 500 and w.boxes[:, 3].max() == 300  # flush with the border, nothing missed
    assert len(w) == len({tuple(b) for b in w.boxes}) == 6 * 10
    tiles = w[0:30]
    assert tiles.shape == (30, 227, 227) and tiles.dtype == np.uint8
    assert len(reads) == 3  # 30 windows on 3 rows of windows: 3 reads, not 30
    plain = Windows(gray, 96, 48)[0:30]  # the same windows cut from the array directly
    assert np.array_equal(tiles, plain)
    x0, y0, x1, y1 = w.boxes[13]
    assert np.array_equal(tiles[13], np.asarray(Image.fromarray(gray[y0:y1, x0:x1]).resize((227, 227),
                                                                                          Image.BILINEAR)))


@pytest.mark.parametrize("sizes, message", [((16,), "below the smallest"), ((600,), "larger than the 500x300")])
def test_window_sizes_that_cannot_be_used_are_refused(sizes, message):
    assert message in scan.check_sizes(sizes, (300, 500))[0]
    with pytest.raises(ValueError, match=message):
        scan.scan([ArrayRaster(np.zeros((300, 500), np.uint8))], None, sizes=sizes)


# --- georeferencing, against coordinates worked out by hand -----------------------------------------------------
# The first pixel of ESP_062586_1840_RED (equirectangular, R = 3396.19 km, MAP_SCALE 0.5 m, LINE_ and
# SAMPLE_PROJECTION_OFFSET 493636.5 and -20081462.0, centre 0 N 180 E), from the RDR SIS formulas:
#   x = (1 - SPO - 1) * 0.5 = 10,040,731 m -> lon = 180 + deg(x / R) = 349.393205
#   y = (LPO - 1 + 1) * 0.5 = 246,818.25 m -> lat = deg(y / R) = 4.163973
# (the PDS index gives that product's corners at 4.1640 N and 349.39 to 349.53 E).
# The first pixel of ESP_036809_2640_COLOR (polar stereographic, R = 3376.2 km, 0.25 m, LPO 801810, SPO 1260530):
#   x = -315,132.5 m, y = 200,452.5 m, rho = 373,481 m -> lat = 90 - deg(2 atan(rho / 2R)) = 83.668258,
#   lon = deg(atan2(x, -y)) mod 360 = 237.539985 (index corners: 83.67 to 83.93 N, 236.6 to 237.7 E).
HAND = {"EQUIRECTANGULAR": (349.393205, 4.163973), "POLAR STEREOGRAPHIC": (237.539985, 83.668258)}


@pytest.mark.parametrize("projection", list(HAND))
def test_a_label_places_pixels_where_the_hand_worked_coordinates_say(tmp_path, projection):
    label = observation.write_label(tmp_path / "X.LBL", 1000, 3200, projection, factor=10)
    georef = from_pds_label(label, 1000, 3200)  # a browse image a tenth of the product's size
    # the centre of full-resolution pixel (1, 1) is browse position 0.05: 0.5 / 10
    lon, lat = georef.lonlat(*georef.map_xy([0.05], [0.05]))
    assert (lon[0], lat[0]) == pytest.approx(HAND[projection], abs=2e-6)
    # 100 full-resolution pixels further along a line is 100 * MAP_SCALE metres east in map coordinates
    x0, y0 = georef.map_xy([0.05], [0.05])
    x1, y1 = georef.map_xy([10.05], [0.05])
    assert x1[0] - x0[0] == pytest.approx(100 * observation.LABELS[projection]["scale"]) and y1[0] == y0[0]


@pytest.mark.parametrize("change, message", [
    (dict(drop=("MAP_SCALE",)), "no MAP_SCALE"),
    (dict(drop=("LINES",)), "no LINES"),
    (dict(height=3000), "no one scale turns into"),
])
def test_a_label_that_does_not_fit_its_image_is_refused_in_one_line(tmp_path, change, message):
    height = change.pop("height", 3200)
    label = observation.write_label(tmp_path / "X.LBL", 1000, 3200, factor=10, **change)
    with pytest.raises(LabelError, match=message) as exc:
        from_pds_label(label, 1000, height)
    assert "\n" not in str(exc.value)


def test_a_label_of_an_unknown_projection_or_with_a_nan_is_refused(tmp_path):
    label = observation.write_label(tmp_path / "X.LBL", 100, 100)
    label.write_text(label.read_text().replace('"EQUIRECTANGULAR"', '"SINUSOIDAL"'))
    with pytest.raises(LabelError, match=r"SINUSOIDAL.*is not one of"):
        from_pds_label(label, 100, 100)
    label = observation.write_label(tmp_path / "Y.LBL", 100, 100)
    label.write_text(label.read_text().replace("MAP_SCALE = 0.5", "MAP_SCALE = NaN"))
    with pytest.raises(LabelError):
        from_pds_label(label, 100, 100)
    (tmp_path / "Z.LBL").write_bytes(b"\x00\xff garbage")
    with pytest.raises(LabelError):
        from_pds_label(tmp_path / "Z.LBL", 100, 100)


def test_the_label_beside_a_browse_image_is_found_and_a_nomap_one_is_not(tmp_path):
    (tmp_path / "ESP_062586_1840_RED.LBL").write_text("x")
    browse = tmp_path / "ESP_062586_1840_RED.browse.jpg"
    assert find_label(browse) == tmp_path / "ESP_062586_1840_RED.LBL"
    assert find_label(tmp_path / "ESP_062586_1840_RED.NOMAP.browse.jpg") is None
    assert find_label(tmp_path / "other.jpg") is None


# --- files: JPEG 2000 levels, damaged files, huge images, outputs a GIS opens -------------------------------------
def test_a_jpeg2000_is_read_at_a_resolution_level_in_windows(tmp_path):
    gray = np.asarray(Image.fromarray(synthetic.tile(1, seed=3)).resize((454, 454)))
    path = observation.write_jp2(tmp_path / "obs.jp2", gray, factor=4, quality=60, block=512)
    with open_raster(path, level=2) as raster:
        assert raster.shape == (454, 454) and "resolution level 2" in raster.notes[0]
        window = raster.read(100, 100, 300, 250)
        assert window.shape == (150, 200)
        assert np.abs(window.astype(int) - gray[100:250, 100:300]).mean() < 6  # the picture, at a quarter size
    with pytest.raises(RasterError, match=r"no resolution level 9 .levels it has: 1, 2"):
        open_raster(path, level=9)


def tiny_args(tmp_path: Path) -> list[str]:
    return ["--checkpoint", str(model_fixtures.tiny_checkpoint()), "--out", str(tmp_path / "out")]


def assert_refused(tmp_path: Path, capsys, argv: list[str], message: str, code: int = 2) -> None:
    assert scan.main(argv + tiny_args(tmp_path)) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.strip() and not line.startswith("scan:")]  # not the bar
    assert message in err and "Traceback" not in err and len(errors) == 1, err
    assert not any(p.name.startswith("detections") for p in (tmp_path / "out").glob("*")), "something was written"
    assert not [p for p in (tmp_path / "out").glob(".scan-*")], "a half-written stage was left"


def test_a_truncated_jpeg2000_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    gray = (np.random.default_rng(0).random((1024, 1024)) * 255).astype(np.uint8)
    path = observation.write_jp2(tmp_path / "obs.jp2", gray, block=256)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_refused(tmp_path, capsys, [str(path), "--sizes", "256"], "damaged or truncated")


def test_a_non_image_a_missing_file_and_a_huge_image_are_refused_in_one_line(tmp_path, capsys):
    bad = tmp_path / "not-an-image.jp2"
    bad.write_bytes(b"hello")
    assert_refused(tmp_path, capsys, [str(bad)], "not an image (its first bytes are those of no JPEG")
    bad.write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"hello")  # a JPEG 2000 signature, then nothing
    assert_refused(tmp_path, capsys, [str(bad)], "not an image GDAL can read")
    assert_refused(tmp_path, capsys, [str(tmp_path / "absent.jpg")], "no such file or folder")
    wide = tmp_path / "wide.png"  # 200,000 px wide: refused before its pixels are decoded
    Image.new("L", (200_000, 400)).save(wide)
    assert_refused(tmp_path, capsys, [str(wide)], "over the 64,000,000-pixel limit")
    import rasterio  # the same width as a GeoTIFF, read in windows: refused by the work it would take

    with rasterio.open(tmp_path / "wide.tif", "w", driver="GTiff", width=200_000, height=2_000, count=1,
                       dtype="uint8", tiled=True, compress="deflate", sparse_ok=True):
        pass
    assert_refused(tmp_path, capsys, [str(tmp_path / "wide.tif")], "over the 200,000 limit")


def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, capsys):
    image = tmp_path / "obs.png"
    Image.fromarray(synthetic.tile(2, seed=1)).save(image)
    assert scan.main([str(image), "--checkpoint", str(model_fixtures.tiny_checkpoint()), "--out", "/sys"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the outputs to /sys") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [(["--sizes", "8"], "below the minimum 32"),
                                           (["--sizes", "abc"], "not a whole number"),
                                           (["--sizes", ","], "at least one window size"),
                                           (["--threshold", "nan"], "not a finite number"),
                                           (["--threshold", "1.5"], "above the maximum"),
                                           (["--step", "nan"], "not a finite number"),
                                           (["--level", "-1"], "below the minimum 0"),
                                           (["--workers", "0"], "below the minimum 1")])
def test_cli_refuses_bad_options_in_one_line(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        scan.main([str(tmp_path / "x.jpg"), "--out", str(tmp_path / "o"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_refuses_a_threshold_of_0_as_the_argument_is_read(tmp_path, capsys):
    """Issue 33: --threshold 0 passed the argument check and was refused only later, by the scan itself."""
    image = tmp_path / "obs.png"
    Image.fromarray(synthetic.tile(2, seed=1)).save(image)
    with pytest.raises(SystemExit) as exc:
        scan.main([str(image), "--out", str(tmp_path / "o"), "--threshold", "0"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert exc.value.code == 2 and errors == [
        "python -m core.scan: error: argument --threshold: 0 is not above 0; give a probability above 0 and at most 1"]
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_outputs_open_in_gis_libraries_and_say_where_each_window_is(tiny, tmp_path):
    """A georeferenced synthetic observation through the whole path; the GeoJSON read by pyogrio (GDAL's OGR),
    the GeoTIFF by rasterio, and their coordinates agree with the label's."""
    import pyogrio
    import rasterio

    tiles = [synthetic.tile(c % 8, seed=c) for c in range(6)]
    gray = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)], axis=0)
    image = tmp_path / "ESP_062586_1840_RED.browse.png"
    Image.fromarray(gray).save(image)
    observation.write_label(tmp_path / "ESP_062586_1840_RED.LBL", gray.shape[1], gray.shape[0], factor=8)
    with open_raster(image) as raster:
        [result] = scan.scan([raster], tiny, sizes=(96, 192), threshold=0.2)
        assert result.detections, "the tiny model finds something at 0.2"
        files = scan.write_outputs(tmp_path, [result], [raster])
    names = {f.name for f in files}
    assert names == {"detections.csv", "detections.geojson", "ESP_062586_1840_RED.browse.windows-96px.tif",
                     "ESP_062586_1840_RED.browse.windows-192px.tif", "ESP_062586_1840_RED.browse.overlay.png"}
    rows = list(csv.DictReader(Path(tmp_path / "detections.csv").read_text().splitlines()))
    assert len(rows) == len(result.detections) and all(r["lon"] and r["lat"] for r in rows)

    info = pyogrio.read_info(tmp_path / "detections.geojson")
    assert info["features"] == len(rows) and info["geometry_type"] == "Polygon"
    meta, _, _geometry, fields = pyogrio.raw.read(tmp_path / "detections.geojson")
    labels = dict(zip(meta["fields"], fields, strict=True))
    assert list(labels["label"]) == [r["label"] for r in rows]
    georef = result.georef
    d = result.detections[0]
    lon, lat = georef.lonlat(*georef.map_xy([d.x0], [d.y0]))
    ring = json.loads((tmp_path / "detections.geojson").read_text())["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == pytest.approx([lon[0], lat[0]], abs=1e-6) and 349 < lon[0] < 350 and 4 < lat[0] < 4.2

    with rasterio.open(tmp_path / "ESP_062586_1840_RED.browse.windows-192px.tif") as tif:
        assert tif.count == 2 and tif.crs is not None and tif.descriptions == ("class", "probability")
        classes, probs = tif.read(1), tif.read(2)
        grid = result.grids[1]
        assert classes.shape == (len(grid.rows), len(grid.cols))
        assert np.allclose(probs.ravel(), grid.probabilities.max(1))
        # the centre of window (0, 0) in the GeoTIFF's own coordinates is where the label puts it
        x, y = tif.xy(0, 0)
        ex, ey = georef.map_xy([grid.cols[0] + 96], [grid.rows[0] + 96])
        assert (x, y) == pytest.approx((ex[0], ey[0]))
        assert tif.tags()["class_1"] == "crater"
    overlay = Image.open(tmp_path / "ESP_062586_1840_RED.browse.overlay.png")
    assert overlay.size == (gray.shape[1], gray.shape[0]) and overlay.mode == "RGB"


def test_windows_a_lost_worker_left_are_said_and_marked_never_dropped(tiny, monkeypatch):
    """Assembly when the engine returns a chunk as lost: its windows are NaN in the grid, the image carries a note
    naming them, and `missing` counts them."""
    gray = np.concatenate([synthetic.tile(1, seed=1), synthetic.tile(0, seed=2)], axis=1)
    real = scan.run_in_process

    def losing(chunks, *args, **kwargs):
        out = real(chunks, *args, **kwargs)
        out[0] = "its worker died each time it ran"
        return out

    monkeypatch.setattr(scan, "run_in_process", losing)
    monkeypatch.setattr(scan, "CHUNK", 4)
    [result] = scan.scan([ArrayRaster(gray, "obs")], tiny, sizes=(96,), threshold=0.2)
    assert result.missing == 4 and "windows 0-3 of size 96 px were not classified" in result.notes[0]
    assert np.isnan(result.grids[0].probabilities[:4]).all() and not np.isnan(result.grids[0].probabilities[4:]).any()


def test_an_unreachable_cluster_is_said_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    image = tmp_path / "obs.png"
    Image.fromarray(synthetic.tile(2, seed=1)).save(image)
    assert_refused(tmp_path, capsys, [str(image), "--sizes", "96", "--cluster", "tcp://127.0.0.1:9"],
                   "cannot reach a Dask scheduler at tcp://127.0.0.1:9: nothing answers there")


@pytest.mark.slow
def test_a_local_dask_cluster_gives_what_this_process_gives_even_when_a_worker_is_killed(tmp_path):
    """Two worker processes; one is killed (SIGKILL) after the first chunk comes back. Dask reruns its chunk on a
    worker that lives, and every window's probabilities equal the in-process scan's."""
    import psutil

    tiles = [synthetic.tile(c % 8, seed=c) for c in range(8)]
    gray = np.concatenate([np.concatenate(tiles[:4], axis=1), np.concatenate(tiles[4:], axis=1)], axis=0)
    Image.fromarray(gray).save(tmp_path / "obs.png")
    source, ckpt = scan.Source(str(tmp_path / "obs.png")), str(model_fixtures.tiny_checkpoint())
    killed = []

    def kill_one(done, total, _):
        if done and not killed:
            workers = [p for p in psutil.Process().children(recursive=True)  # the worker processes the nannies
                       if "spawn_main" in " ".join(p.cmdline())]  # (in this process) started
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)

    old_chunk = scan.CHUNK
    scan.CHUNK = 8  # many small tasks, so some are in flight on the worker that dies
    try:
        [on_dask] = scan.scan([source], checkpoint=ckpt, sizes=(96, 192), threshold=0.2, cluster="local",
                              on_progress=kill_one)
    finally:
        scan.CHUNK = old_chunk
    [here] = scan.scan([source], checkpoint=ckpt, sizes=(96, 192), threshold=0.2)
    assert killed, "no worker process was found to kill"
    assert on_dask.missing == 0 and not on_dask.notes
    for a, b in zip(on_dask.grids, here.grids, strict=True):
        assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert [d.label for d in on_dask.detections] == [d.label for d in here.detections]


# --- a test observation of real tiles, in three formats ----------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_scan_finds_real_landmarks_pasted_at_known_places_in_every_format(shared_data, tmp_path, capsys):
    """An observation built from real tiles: a 4 x 6 background of `other` validation tiles with landmark tiles the
    model calls right (>= 0.9) pasted at 192 px. Written three ways: a browse JPEG with an equirectangular label
    beside it, a lossy JPEG 2000 at twice the size with a polar stereographic label (read at resolution level 1), and a
    GeoTIFF carrying the equirectangular georeferencing. Each pasted landmark must come back as a detection of its
    class centred inside where it was pasted, and each detection's latitude/longitude must be the label's."""
    import rasterio

    from core.checkpoint import load_checkpoint
    from core.data import load_dataset

    loaded = load_checkpoint()
    data = load_dataset([shared_data / "hirise-v3_2-subset"], label_overrides=False)
    names = list(loaded.class_names)
    landmarks = observation.landmarks_called_right(
        loaded, data, {"crater": 2, "dark dune": 1, "bright dune": 1, "slope streak": 1})
    assert len(landmarks) >= 4, "too few landmarks the model calls right to paste"
    canvas, pasted = observation.build(data, landmarks, names)
    h, w = canvas.shape
    folder = tmp_path / "observations"
    folder.mkdir()
    Image.fromarray(canvas).save(folder / "ESP_062586_1840_RED.browse.jpg", quality=95)
    observation.write_label(folder / "ESP_062586_1840_RED.LBL", w, h, factor=8)
    observation.write_jp2(folder / "ESP_036809_2640_COLOR.JP2", canvas, factor=2)
    observation.write_label(folder / "ESP_036809_2640_COLOR.LBL", w, h, "POLAR STEREOGRAPHIC", factor=2)
    georef = from_pds_label(folder / "ESP_062586_1840_RED.LBL", w, h)
    observation.write_geotiff(folder / "geo.tif", canvas, georef)

    out = tmp_path / "scan"
    args = ["--out", str(out), "--sizes", "192,384", "--threshold", "0.9"]  # what the landmarks were chosen at
    assert scan.main([str(folder / "ESP_062586_1840_RED.browse.jpg"), str(folder / "geo.tif"), *args]) == 0
    assert scan.main([str(folder / "ESP_036809_2640_COLOR.JP2"), "--level", "1", "--out", str(tmp_path / "jp2"),
                      "--sizes", "192,384", "--threshold", "0.9"]) == 0
    print(capsys.readouterr().out)
    rows = list(csv.DictReader(Path(out / "detections.csv").read_text().splitlines())) + \
        list(csv.DictReader(Path(tmp_path / "jp2" / "detections.csv").read_text().splitlines()))
    for image in ("ESP_062586_1840_RED.browse.jpg", "geo.tif", "ESP_036809_2640_COLOR.JP2"):
        mine = [r for r in rows if r["image"] == image]
        found = sum(any(r["label"] == p.label and p.holds(float(r["centre_x"]), float(r["centre_y"])) for r in mine)
                    for p in pasted)
        elsewhere = sum(not any(p.holds(float(r["centre_x"]), float(r["centre_y"])) for p in pasted) for r in mine)
        print({"image": image, "pasted": len(pasted), "found": found, "detections": len(mine),
               "elsewhere": elsewhere})
        assert found >= len(pasted) - 1, mine  # all but at most one, at 0.9
        assert all(float(r["probability"]) >= 0.9 for r in mine)
        for r in mine:  # every centre's coordinates, by the hand formulas of the label it came with
            polar = image.endswith("JP2")
            p = observation.LABELS["POLAR STEREOGRAPHIC" if polar else "EQUIRECTANGULAR"]
            factor = 2 if polar else 8
            sample = float(r["centre_x"]) * factor + 0.5  # 1-based full-resolution sample at that point
            line = float(r["centre_y"]) * factor + 0.5
            x = (sample - p["spo"] - 1) * p["scale"]
            y = (p["lpo"] - line + 1) * p["scale"]
            radius = p["radius"] * 1000
            if polar:
                lon = math.degrees(math.atan2(x, -y)) % 360
                lat = 90 - math.degrees(2 * math.atan(math.hypot(x, y) / (2 * radius)))
            else:
                lon, lat = 180 + math.degrees(x / radius), math.degrees(y / radius)
            assert (float(r["lon"]), float(r["lat"])) == pytest.approx((lon, lat), abs=1e-5)
            assert (float(r["map_x"]), float(r["map_y"])) == pytest.approx((x, y), abs=0.06)
    with rasterio.open(tmp_path / "jp2" / "ESP_036809_2640_COLOR.windows-192px.tif") as tif:
        assert "stere" in tif.crs.to_proj4() and tif.count == 2


def test_the_cli_says_which_threshold_it_used_when_none_was_given(tmp_path, capsys):
    """Issue 29: without --threshold, a scan says its threshold and why (the default model's registry entry, or
    the standard 0.9 for any other checkpoint); one given is used as given."""
    image = tmp_path / "obs.png"
    Image.fromarray(synthetic.tile(2, seed=1)).save(image)
    assert scan.main([str(image), *tiny_args(tmp_path), "--sizes", "96"]) == 0
    assert "threshold: 0.9 (the scan's standard threshold)" in capsys.readouterr().out.splitlines()
    assert scan.main([str(image), *tiny_args(tmp_path), "--sizes", "96", "--threshold", "0.5"]) == 0
    assert not any(line.startswith("threshold:") for line in capsys.readouterr().out.splitlines())
