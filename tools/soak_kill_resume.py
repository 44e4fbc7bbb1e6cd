"""Fault-injection soak: N cycles of launch -> kill -9 at a random moment -> resume, on one run folder.

    python tools/soak_kill_resume.py [--cycles 50] [--seed 0] [--max-delay 4] [--workdir DIR]

Each cycle starts a trainer (`python -m core.train`: a fresh run until there is a last.pt, `--resume`
after) and, a moment later, a second one on the same folder with the same arguments: what a CLI user
or the app's Resume button would start beside it. When one of the two has been refused, the soak waits
a random time and kills the other with SIGKILL (its whole process group), at any point of its life:
loading data, in a step, writing metrics or a checkpoint. After every kill it checks that

- exactly one trainer ran: one of the two was refused in one line (exit 2, "already has a trainer")
  and the other held the run until it was killed; and the kill let go of the run lock;
- every checkpoint in the folder loads (`read_checkpoint`), and status.json reads;
- metrics.jsonl has no duplicate epoch row, no step counter going backwards, and no torn row (only the
  last line may be cut by the kill, and the next trainer drops it).

After the last cycle one more trainer resumes the run to its end (one epoch more): it must complete,
leave every epoch exactly once, no temporary file, and loadable checkpoints. The script prints each
cycle and then `N/N cycles survived`; it exits 1 at the first cycle that breaks a check. Data: a tiny
synthetic set (tests/synthetic.py), simple_cnn at 32 px, 2 steps an epoch, so a cycle takes seconds.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from core.experiment.runs import Run  # noqa: E402
from tests import synthetic  # noqa: E402

TRAIN_ARGS = ["--model", "simple_cnn", "--init", "scratch", "--image-size", "32", "--batch-size", "16",
              "--epochs", "100000", "--max-steps-per-epoch", "2", "--log-every", "1", "--scheduler", "none", "--patience", "0"]
REFUSED = "already has a trainer"


class SoakFailure(AssertionError):
    """A check failed; the message says which and in which cycle."""


def start_trainer(run: Run, data: Path, env: dict, log: Path, resume: bool) -> subprocess.Popen:
    args = ["run", "--run-dir", str(run.path)] + (["--resume"] if resume else ["--data", str(data), *TRAIN_ARGS])
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "core.train", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def one_trainer(first: subprocess.Popen, second: subprocess.Popen, logs: list[Path],
                timeout: float = 300) -> tuple[subprocess.Popen, int]:
    """Wait until one of the two trainers is refused; return the other (the one trainer) and its index."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, proc in enumerate((first, second)):
            code = proc.poll()
            if code is None:
                continue
            text = logs[i].read_text(errors="replace").strip()
            if code != 2 or REFUSED not in text or len(text.splitlines()) != 1:
                raise SoakFailure(f"trainer {i + 1} ended with {code} without being refused: {text[-500:]}")
            live = second if i == 0 else first
            if live.poll() is not None:
                raise SoakFailure(f"both trainers ended (codes {first.returncode}, {second.returncode})")
            return live, 1 - i
        time.sleep(0.05)
    raise SoakFailure("neither trainer was refused: two trainers on one run")


def check_folder(run: Run, final: bool = False) -> tuple[int, list[str]]:
    """The per-cycle checks; returns (epochs recorded, temporary files left by the kill)."""
    if run.trainer_alive():
        raise SoakFailure("the run lock is still held after the kill")
    for ckpt in sorted(run.path.glob("*.pt")):
        try:
            read_checkpoint(ckpt)
        except CheckpointError as exc:
            raise SoakFailure(f"{ckpt.name} does not load: {exc}") from exc
    json.loads(run.status_file.read_text())
    lines = run.metrics_file.read_text().splitlines() if run.metrics_file.exists() else []
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n != len(lines) or final:
                raise SoakFailure(f"metrics.jsonl line {n} is torn: {line[:80]!r}") from None
    epochs = [r["epoch"] for r in rows if r["kind"] == "epoch"]
    if epochs != list(range(1, len(epochs) + 1)):
        raise SoakFailure(f"epoch rows are not 1..{len(epochs)} once each: {epochs[-12:]}")
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise SoakFailure("the step counter went backwards or repeated in metrics.jsonl")
    return len(epochs), sorted(p.name for p in run.path.glob("*.tmp"))


def cycle(i: int, run: Run, data: Path, env: dict, work: Path, rng: random.Random, max_delay: float) -> str:
    resume = run.last_checkpoint.is_file()
    if not resume and run.path.exists():
        shutil.rmtree(run.path)  # killed before its first epoch: nothing to resume, start again
    logs = [work / f"cycle{i}-a.log", work / f"cycle{i}-b.log"]
    first = start_trainer(run, data, env, logs[0], resume)
    time.sleep(rng.uniform(0.0, 1.0))
    second = start_trainer(run, data, env, logs[1], resume)
    try:
        live, which = one_trainer(first, second, logs)
        delay = rng.uniform(0.0, max_delay)
        time.sleep(delay)
        if live.poll() is not None:
            raise SoakFailure(f"the trainer ended by itself with {live.returncode}: "
                              f"{logs[which].read_text(errors='replace')[-500:]}")
        os.killpg(live.pid, signal.SIGKILL)
        live.wait()
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    epochs, temps = check_folder(run)
    during = f", during a checkpoint write ({', '.join(temps)} left)" if any(".pt." in t for t in temps) else ""
    return (f"cycle {i}: {'resumed' if resume else 'fresh'}, trainer {which + 1} ran, the other was refused; "
            f"killed {delay:.1f} s later with {epochs} epochs recorded{during}")


def final_resume(run: Run, env: dict, work: Path) -> str:
    """Resume once more, for one epoch beyond the last recorded, and let it finish."""
    done = max((r["epoch"] for r in run.metrics() if r.get("kind") == "epoch"), default=0)
    log = work / "final.log"
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "core.train", "run", "--run-dir", str(run.path), "--resume",
                               "--epochs", str(done + 1)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=600).returncode
    if code != 0 or run.status().get("state") != "completed":
        raise SoakFailure(f"the final resume ended with {code}, state {run.status().get('state')}: "
                          f"{log.read_text(errors='replace')[-800:]}")
    epochs, temps = check_folder(run, final=True)
    if epochs != done + 1 or temps:
        raise SoakFailure(f"after the final resume: {epochs} epochs (expected {done + 1}), temporary files {temps}")
    return f"final resume: completed, epochs 1..{epochs} once each, no temporary file, checkpoints load"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=4.0, help="longest wait before the kill, in seconds")
    parser.add_argument("--workdir", type=Path, help="keep the run, data and logs here (default: a temporary "
                        "folder, removed at the end)")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.max_delay < 0:
        parser.error("--cycles must be at least 1 and --max-delay at least 0")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hirise-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    data = synthetic.write_folder(work / "data", synthetic.official_files("3.2", n_obs=12, per_obs=8, missing=0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HIRISE_CACHE_DIR": str(work / "cache"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run, rng, survived, start = Run(work / "run"), random.Random(args.seed), 0, time.monotonic()
    ok = False
    try:
        for i in range(1, args.cycles + 1):
            print(cycle(i, run, data, env, work, rng, args.max_delay), flush=True)
            survived += 1
        print(final_resume(run, env, work), flush=True)
        ok = True
    except SoakFailure as exc:
        print(f"FAILED {'in cycle ' + str(survived + 1) if survived < args.cycles else 'at the end'}: {exc}",
              flush=True)
    finally:
        print(f"{survived}/{args.cycles} cycles survived ({time.monotonic() - start:.0f} s; work folder {work}"
              f"{'' if args.workdir else ', removed'})", flush=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
