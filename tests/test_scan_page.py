"""Scans as jobs (core.scan_jobs) and the Scan page under AppTest: a scan runs in its own process to its end or
until cancelled, the page refuses bad paths and options in its own words, and shows a finished scan's detections
and downloads."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import scan_jobs
from tests import model_fixtures, synthetic
from tests.helpers import button, run_page, texts, wait_for


def observation_png(folder: Path, tiles: int = 4) -> Path:
    row = np.concatenate([synthetic.tile(c % 8, seed=c) for c in range(tiles)], axis=1)
    path = folder / "obs.png"
    Image.fromarray(np.concatenate([row, row[:, ::-1]], axis=0)).save(path)
    return path


def test_uploaded_names_and_typed_paths_are_checked(tmp_path):
    assert scan_jobs.safe_file_name("../../etc/passwd") == "passwd"
    assert scan_jobs.safe_file_name("C:\\x\\my obs.jp2") == "my_obs.jp2"
    assert scan_jobs.safe_file_name("...") == "upload"
    for text, message in (("", "give the path"), ("/nonexistent/x.jp2", "no such file"),
                          ("a\x00b", "not a path"), (str(tmp_path), "no observations in this folder")):
        with pytest.raises(scan_jobs.ScanJobError, match=message):
            scan_jobs.check_input_path(text)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(scan_jobs.ScanJobError, match="not an observation"):
        scan_jobs.check_input_path(str(tmp_path / "notes.txt"))
    assert scan_jobs.check_input_path(str(observation_png(tmp_path))) == tmp_path / "obs.png"


@pytest.mark.parametrize("options, message", [(("8", 0.9, 0.5, 0, None), "below the minimum 32"),
                                              ((",", 0.9, 0.5, 0, None), "at least one window size"),
                                              (("96", float("nan"), 0.5, 0, None), "not a finite number")])
def test_scan_options_are_checked_by_the_cli_parser(options, message):
    with pytest.raises(scan_jobs.ScanJobError, match=message):
        scan_jobs.options_argv(*options)


@pytest.mark.slow
def test_a_scan_job_runs_to_its_end_and_another_is_cancelled(tmp_path):
    image = observation_png(tmp_path)
    ckpt = model_fixtures.tiny_checkpoint()
    job = scan_jobs.launch(scan_jobs.new_scan("obs", tmp_path / "runs"), [image],
                           scan_jobs.options_argv("96,192", 0.2, 0.5, 0, None), ckpt)
    assert wait_for(lambda: job.status()["state"] not in scan_jobs.ACTIVE, 120, "the scan to end")
    status = job.status()
    assert status["state"] == "completed" and status["done"] == status["total"] > 0, job.log_tail()
    assert {p.name for p in job.outputs()} >= {"detections.csv", "detections.geojson", "obs.overlay.png"}

    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.tile(np.asarray(Image.open(image)), (4, 4))).save(big / "big.png")
    slow = scan_jobs.launch(scan_jobs.new_scan("big", tmp_path / "runs"), [big / "big.png"],
                            scan_jobs.options_argv("32", 0.9, 0.25, 0, None), ckpt)
    wait_for(lambda: (slow.status().get("done") or 0) > 0, 120, "the scan to start classifying")
    slow.cancel()
    assert wait_for(lambda: slow.status()["state"] not in scan_jobs.ACTIVE, 60, "the cancel") and \
        slow.status()["state"] == "cancelled"
    assert not slow.outputs() and "cancelled: nothing written" in slow.log_tail()
    assert [j.name for j in scan_jobs.list_scans(tmp_path / "runs")] == [slow.name, job.name]

    damaged = tmp_path / "damaged.jp2"  # a scan that fails says why in its status, for the page to show
    damaged.write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64)
    bad = scan_jobs.launch(scan_jobs.new_scan("bad", tmp_path / "runs"), [damaged],
                           scan_jobs.options_argv("96", 0.9, 0.5, 0, None), ckpt)
    assert wait_for(lambda: bad.status()["state"] not in scan_jobs.ACTIVE, 120, "the failed scan to end")
    assert bad.status()["state"] == "failed" and "damaged.jp2" in bad.status()["error"] and not bad.outputs()


@pytest.mark.slow
def test_scan_page_refuses_bad_input_then_scans_a_path_and_shows_the_results(tmp_path):
    image = observation_png(tmp_path)
    at = run_page("views/scan.py")
    assert "No scans yet" in texts(at)
    at.radio(key="scan_source").set_value("A file or folder on this machine").run()
    at.text_input[0].input("/nonexistent/obs.jp2").run()
    button(at, "Start scan").click().run()
    assert "Not started: /nonexistent/obs.jp2: no such file or folder" in texts(at)
    at.text_input[0].input(str(image)).run()
    at.text_input[1].input("8").run()
    button(at, "Start scan").click().run()
    assert "Not started: argument --sizes: window sizes: 8 is below the minimum 32" in texts(at)
    at.text_input[1].input("192").run()
    at.number_input[0].set_value(0.05).run()
    button(at, "Start scan").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = scan_jobs.list_scans()[0]
    try:
        wait_for(lambda: job.status()["state"] not in scan_jobs.ACTIVE, 180, "the scan to end")
        at.run()
        body = texts(at)
        headings = " ".join(h.value for h in at.subheader)
        assert "at probability ≥ 0.05" in headings and not at.exception, body
        assert at.dataframe and {"label", "probability"} <= set(at.dataframe[0].value.columns)
        labels = [b.label for b in at.get("download_button")]
        assert any(lbl.startswith("detections.geojson") for lbl in labels) and "All outputs (zip)" in labels
    finally:
        shutil.rmtree(job.path, ignore_errors=True)


def test_two_scans_started_at_once_get_folders_of_their_own(tmp_path):
    import threading

    made = []
    threads = [threading.Thread(target=lambda: made.append(scan_jobs.new_scan("obs", tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({j.path for j in made}) == 8 and all(j.path.is_dir() for j in made)


@pytest.mark.slow
def test_scan_options_survive_leaving_the_page_and_coming_back():
    at = run_page("views/scan.py")
    at.text_input(key="scan_sizes").input("128,256").run()
    at.number_input(key="scan_threshold").set_value(0.8).run()
    at.switch_page("views/explain.py").run()
    at.switch_page("views/scan.py").run()
    assert at.text_input(key="scan_sizes").value == "128,256"
    assert at.number_input(key="scan_threshold").value == 0.8
