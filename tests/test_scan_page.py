"""Scans as jobs (core.scan.job) and the Scan page under AppTest: a scan runs in its own process to its end or
until cancelled, the page refuses bad paths and options in its own words, and shows a finished scan's detections
and downloads."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.scan import job as scan_jobs
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


@pytest.fixture
def page_scans(tmp_path, monkeypatch):
    """The Scan page with its scans in a folder of this test's own, and `launch` recording what it was handed
    instead of starting a process: [(job, inputs, argv)]."""
    monkeypatch.setattr(scan_jobs, "runs_root", lambda runs_dir=None: tmp_path / "runs")
    launched = []

    def launch(job, inputs, argv, checkpoint=None):
        launched.append((job, inputs, argv))
        return job

    monkeypatch.setattr(scan_jobs, "launch", launch)
    return tmp_path / "runs" / "scans", launched


@pytest.mark.parametrize("typed, message", [
    ("2", "Probability threshold: 2 is above the maximum 1; give a probability above 0 and at most 1"),
    ("", "Probability threshold: empty; give a probability above 0 and at most 1"),
    ("NaN", "Probability threshold: 'NaN' is not a finite number; give a probability above 0 and at most 1"),
    ("-1", "Probability threshold: -1 is not above 0; give a probability above 0 and at most 1"),
    ("0", "Probability threshold: 0 is not above 0; give a probability above 0 and at most 1")])
def test_scan_page_refuses_a_threshold_out_of_range_in_words_and_starts_nothing(tmp_path, page_scans, typed,
                                                                                  message):
    """Issue 33: a number field kept its last valid value (or its minimum) when 2, nothing, NaN or -1 was typed,
    and the scan ran at 0.9 or 0.05 without a word."""
    scans, launched = page_scans
    at = run_page("views/scan.py")
    at.radio(key="scan_source").set_value("A file or folder on this machine").run()
    at.text_input(key="scan_path").input(str(observation_png(tmp_path))).run()
    at.text_input(key="scan_threshold").input(typed).run()
    button(at, "Start scan").click().run()
    assert [e.value for e in at.error] == [f"Not started: {message}"] and not at.exception
    assert not launched and not (scans.exists() and any(scans.iterdir())), "a scan was started"


@pytest.mark.parametrize("key, typed, message", [
    ("scan_level", "11", "Resolution level: 11 is above the maximum 10; give a whole number from 0 to 10"),
    ("scan_level", "1.5", "Resolution level: '1.5' is not a whole number; give a whole number from 0 to 10"),
    ("scan_sizes", "96,abc", "Window sizes (px): 'abc' is not a whole number; give window sides in pixels, each at "
                             "least 32, comma-separated")])
def test_scan_page_refuses_other_bad_numbers_by_their_field(tmp_path, page_scans, key, typed, message):
    scans, launched = page_scans
    at = run_page("views/scan.py")
    at.radio(key="scan_source").set_value("A file or folder on this machine").run()
    at.text_input(key="scan_path").input(str(observation_png(tmp_path))).run()
    at.text_input(key=key).input(typed).run()
    button(at, "Start scan").click().run()
    assert [e.value for e in at.error] == [f"Not started: {message}"] and not at.exception
    assert not launched and not (scans.exists() and any(scans.iterdir()))


def test_scan_page_passes_a_valid_threshold_exactly_as_typed(tmp_path, page_scans):
    scans, launched = page_scans
    image = observation_png(tmp_path)
    at = run_page("views/scan.py")
    at.radio(key="scan_source").set_value("A file or folder on this machine").run()
    from core.settings import DEFAULT_SCAN_THRESHOLD, SCAN_THRESHOLD_WHY
    assert at.text_input(key="scan_threshold").value == str(DEFAULT_SCAN_THRESHOLD)  # the default model's (issue 29)
    assert SCAN_THRESHOLD_WHY in at.text_input(key="scan_threshold").help
    at.text_input(key="scan_path").input(str(image)).run()
    at.text_input(key="scan_threshold").input("0.75").run()
    assert "This model's default:" in texts(at)  # a value other than the model's own: its own is said
    at.text_input(key="scan_level").input("1").run()
    button(at, "Start scan").click().run()
    assert not at.error and not at.exception, [e.value for e in at.error]
    (job, inputs, argv), = launched
    assert inputs == [image] and job.path.parent == scans
    assert argv[argv.index("--threshold") + 1] == "0.75" and argv[argv.index("--level") + 1] == "1"
    assert argv[argv.index("--sizes") + 1] == "96,192,384" and argv[argv.index("--step") + 1] == "0.5"


def test_scan_page_keeps_the_uploads_when_a_path_is_chosen_and_back(tmp_path, page_scans):
    """Issue 33: switching to 'A file or folder' and back dropped the uploaded files without a word."""
    _scans, launched = page_scans
    at = run_page("views/scan.py")
    at.file_uploader(key="scan_uploads").set_value(("obs.png", observation_png(tmp_path).read_bytes(), "image/png"))
    at.run()
    at.radio(key="scan_source").set_value("A file or folder on this machine").run()
    kept_uploads = at.file_uploader(key="scan_uploads")
    assert kept_uploads.disabled and "not scanned while a path is chosen" in kept_uploads.label
    at.radio(key="scan_source").set_value("Upload files").run()
    assert not at.file_uploader(key="scan_uploads").disabled
    button(at, "Start scan").click().run()
    assert not at.error and not at.exception, [e.value for e in at.error]
    (job, inputs, _argv), = launched
    assert [p.name for p in inputs] == ["obs.png"] and inputs[0].parent == job.inputs and inputs[0].is_file()


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
    at.text_input(key="scan_sizes").input("8").run()
    button(at, "Start scan").click().run()
    assert "Not started: Window sizes (px): 8 is below the minimum 32" in texts(at)
    at.text_input(key="scan_sizes").input("192").run()
    at.selectbox(key="scan_engine").set_value("a Dask scheduler").run()
    for address, says in (("tcp://127.0.0.1:9", "cannot reach a Dask scheduler at tcp://127.0.0.1:9: nothing answers"),
                          ("garbage", "garbage: not a Dask scheduler address")):
        at.text_input(key="scan_address").input(address).run()
        button(at, "Start scan").click().run()
        assert f"Not started: {says}" in texts(at) and not scan_jobs.list_scans()  # refused, nothing started
    at.selectbox(key="scan_engine").set_value("this machine").run()
    at.text_input(key="scan_threshold").input("0.05").run()
    button(at, "Start scan").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = scan_jobs.list_scans()[0]
    try:
        wait_for(lambda: job.status()["state"] not in scan_jobs.ACTIVE, 180, "the scan to end")
        at.run()
        body = texts(at)
        headings = " ".join(h.value for h in at.subheader)
        assert "at probability ≥ 0.05" in headings and not at.exception, body
        assert "Forward passes: " in body  # which engine ran it, from the scan's log (issue 30)
        assert at.dataframe and {"label", "probability", "typicality", "unusual"} <= set(at.dataframe[0].value.columns)
        labels = [b.label for b in at.get("download_button")]
        assert any(lbl.startswith("detections.geojson") for lbl in labels) and "All outputs (zip)" in labels
        classes = next(m for m in at.multiselect if m.label == "Classes")
        classes.set_value([]).run()  # every class filtered away: said, not a crash or an empty grid
        assert not at.exception and "No class is chosen" in texts(at)
        button(at, "Delete").click().run()  # said, and gone from the list and the disk
        assert f"Deleted the scan {job.name}" in texts(at) and "No scans yet" in texts(at) and not job.path.exists()
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
    at.text_input(key="scan_threshold").input("0.8").run()
    at.switch_page("views/explain.py").run()
    at.switch_page("views/scan.py").run()
    assert at.text_input(key="scan_sizes").value == "128,256"
    assert at.text_input(key="scan_threshold").value == "0.8"
