"""Scans run as jobs, as training runs are: a folder under runs/scans and a `python -m core.scan --job` process in
its own session, so a scan outlives the page that started it (a refresh, a closed tab) and can be cancelled.

A scan folder holds request.json (what was asked, written once by the app), input/ (uploaded observations),
status.json (written by the scan process alone: state, windows done, rate, ETA), log.txt, CANCEL (the app's
request to stop) and out/ (the outputs, moved there whole when the scan ends).
"""
from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from core.experiment.pids import pid_alive, process_start
from core.experiment.runs import now_iso, read_json, runs_root, write_json_atomic
from core.settings import PROJECT_ROOT

ACTIVE = ("starting", "queued", "running")


def scans_root(runs_dir: Path | None = None) -> Path:
    return runs_root(runs_dir) / "scans"


def safe_file_name(name: str) -> str:
    """An uploaded file's name as a file name here: its last path part, with anything but letters, digits, '.',
    '_' and '-' replaced (an upload named '../../x' or '/etc/passwd' lands inside the scan's folder)."""
    base = re.split(r"[\\/]", name)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base or "upload"


@dataclass(frozen=True)
class ScanJob:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def out(self) -> Path:
        return self.path / "out"

    @property
    def inputs(self) -> Path:
        return self.path / "input"

    def request(self) -> dict:
        return read_json(self.path / "request.json", {}) or {}

    def status(self) -> dict:
        """The scan's status as a reader should see it: an active scan whose process is gone is 'lost' (or
        'cancelled' when a cancel was asked for); derived here, never written."""
        status = read_json(self.path / "status.json", None) or {"state": "starting"}
        if status.get("state") in ACTIVE:
            pid = status.get("pid") or self.request().get("pid")
            start = status.get("pid_start") or self.request().get("pid_start")
            if not pid_alive(pid, start):
                cancelled = (self.path / "CANCEL").exists()
                status = {**status, "state": "cancelled" if cancelled else "lost",
                          "error": None if cancelled else f"the scan process (pid {pid}) vanished without finishing"}
        return status

    def cancel(self) -> None:
        """Ask the scan to stop: it checks the CANCEL file between chunks, and a running one also gets SIGTERM."""
        (self.path / "CANCEL").touch()
        status = self.status()
        if status.get("state") in ACTIVE:
            pid = status.get("pid") or self.request().get("pid")
            if pid_alive(pid, status.get("pid_start") or self.request().get("pid_start")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.path / "log.txt").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def engine(self) -> str | None:
        """Which engine ran the scan's forward passes, as the scan said in its log (None: not said)."""
        try:
            with open(self.path / "log.txt", errors="replace") as f:
                for line in f:
                    if line.startswith("engine: "):
                        return line.removeprefix("engine: ").strip()
        except OSError:
            pass
        return None

    def detections(self) -> list[dict]:
        """detections.csv's rows, their text cells as they are (unescaped: the CSV guards them for spreadsheets)."""
        from core.scan.detections import TEXT_COLUMNS, csv_text

        try:
            with open(self.out / "detections.csv", newline="") as f:
                return [{k: csv_text(v) if k in TEXT_COLUMNS and v else v for k, v in row.items()}
                        for row in csv.DictReader(f)]
        except OSError:
            return []

    def outputs(self) -> list[Path]:
        return sorted(p for p in self.out.glob("*") if p.is_file() and not p.name.startswith("."))


class ScanJobError(RuntimeError):
    """A scan could not be started; the message says why in one line."""


def check_input_path(text: str) -> Path:
    """A path typed on the page, as an observation (or a folder of them) this machine can read: ScanJobError
    otherwise. The scan reads it where it is; nothing is written there."""
    from core.scan.scanner import SCAN_SUFFIXES, observation_problem

    text = (text or "").strip()
    if not text:
        raise ScanJobError("give the path of an observation or of a folder of them")
    if "\x00" in text or len(text) > 4096:
        raise ScanJobError("that is not a path")
    path = Path(text).expanduser()
    try:
        path = path.resolve(strict=True)
    except RuntimeError:  # Python's own loop detection
        raise ScanJobError(f"{text}: a loop of symbolic links, not a file") from None
    except OSError as exc:
        import errno

        if exc.errno == errno.ENOENT:
            raise ScanJobError(f"{text}: no such file or folder") from None
        raise ScanJobError(f"{text}: {exc.strerror or exc}") from None
    if path.is_dir():
        try:
            found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SCAN_SUFFIXES]
        except OSError as exc:
            raise ScanJobError(f"{path}: cannot list it ({exc.strerror or exc})") from None
        if not found:
            raise ScanJobError(f"{path}: no observations in this folder ({', '.join(SCAN_SUFFIXES)})")
        problem = next(filter(None, map(observation_problem, sorted(found))), None)  # as the scan would say it
        if problem:
            raise ScanJobError(problem)
        return path
    if path.suffix.lower() not in (*SCAN_SUFFIXES, ".lbl"):
        raise ScanJobError(f"{path.name}: not an observation this reads ({', '.join(SCAN_SUFFIXES)})")
    if not os.access(path, os.R_OK):
        raise ScanJobError(f"{path}: not readable")
    problem = observation_problem(path)  # a FIFO, an empty file, no image's first bytes, a label without its image
    if problem:
        raise ScanJobError(problem)
    return path


def observation_path(job: ScanJob, image: str) -> Path | None:
    """The file a detection's image name came from (one of the inputs, or a file in an input folder)."""
    for given in map(Path, job.request().get("inputs", [])):
        if given.is_dir() and (given / image).is_file():
            return given / image
        if given.name == image or (given.suffix.lower() == ".lbl" and given.with_name(image).is_file()):
            return given.with_name(image)
    return None


def options_argv(sizes: str, threshold: str | float, step: str | float, level: str | int, cluster: str | None,
                 fields: dict[str, str] | None = None, tta: bool = False) -> list[str]:
    """The command-line options of a scan, each value as given (stripped of spaces at its ends), checked by
    core.scan's own parser (the one place they are defined): ScanJobError with its message when one is wrong, never
    a value clamped or replaced. `fields` names the options as the page does ({"--threshold": "Probability
    threshold"}); a refusal then starts with the field's name instead of "argument --threshold"."""
    import contextlib
    import io

    from core.scan.scanner import build_parser

    fields = fields or {}
    options = {"--sizes": sizes, "--threshold": threshold, "--step": step, "--level": level}
    argv = [part for flag, value in options.items() for part in (flag, str(value).strip())]
    if cluster:
        argv += ["--cluster"] + ([] if cluster == "local" else [cluster])
    # checked as --flag=value: a value that starts with '-' is read as the value, not as another option
    checked = [f"{flag}={str(value).strip()}" for flag, value in options.items()] + argv[2 * len(options):]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(["x", "--out", "x", *checked])
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        flag, sep, rest = message.removeprefix("argument ").partition(": ")
        raise ScanJobError(f"{fields[flag]}: {rest}" if sep and flag in fields else message) from None
    if not args.sizes:
        raise ScanJobError(f"{fields.get('--sizes', '--sizes')}: give at least one window size")
    return [*argv, "--tta" if tta else "--no-tta"]


def new_scan(name_hint: str = "scan", runs_dir: Path | None = None) -> ScanJob:
    """A fresh scan folder (uploads are saved in its input/ before the scan is launched)."""
    from core.experiment.runs import new_run_dir

    root = scans_root(runs_dir)
    try:
        return ScanJob(new_run_dir(name_hint, root).path)
    except (OSError, RuntimeError) as exc:
        raise ScanJobError(f"cannot write to {root}: {getattr(exc, 'strerror', None) or exc}") from None


def launch(job: ScanJob, inputs: list[Path], argv: list[str], checkpoint: Path | None = None) -> ScanJob:
    """Start `python -m core.scan` on `inputs` in the background, its outputs in the job's out/ folder."""
    cmd = [sys.executable, "-m", "core.scan", *map(str, inputs), "--out", str(job.out), "--job", str(job.path), *argv]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    request = {"inputs": [str(p) for p in inputs], "argv": argv, "checkpoint": str(checkpoint or ""),
               "queued_at": now_iso()}
    try:
        write_json_atomic(job.path / "request.json", request)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(PROJECT_ROOT)}
        with open(job.path / "log.txt", "ab") as log:
            proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    except OSError as exc:
        raise ScanJobError(f"cannot start the scan in {job.path}: {exc.strerror or exc}") from None
    write_json_atomic(job.path / "request.json", {**request, "pid": proc.pid, "pid_start": process_start(proc.pid)})
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends, no zombie
    return job


def list_scans(runs_dir: Path | None = None) -> list[ScanJob]:
    """Every scan, newest first."""
    root = scans_root(runs_dir)
    if not root.is_dir():
        return []
    return sorted((ScanJob(p) for p in root.iterdir() if (p / "request.json").is_file()),
                  key=lambda j: j.request().get("queued_at", ""), reverse=True)
