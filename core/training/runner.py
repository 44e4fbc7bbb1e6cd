"""A training run's lifecycle and the command line that starts it.

`python -m core.train run --data PATH [--data PATH ...] --run-dir DIR [options]` trains and writes a run (the
engine is core.train; this module takes the run lock, waits for the device's turn, keeps status.json true on
every way out, and refuses in one line what cannot start). The other subcommands: `lr-find`, `cv K` (core.experiment.cv),
`grid FIELD=V1,V2 ...` (core.experiment.grid), `report cv|grid [ID]`, `score CV_ID` and `promote CV_ID` (core.defaults).
The flags-only spellings of before (`--cv 5`, `--grid ...`, `--cv-report`) still work, with a one-line notice.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from dataclasses import fields
from pathlib import Path

import torch.distributed as dist

from core.checkpoint import CheckpointError
from core.cliargs import number_in, refuse
from core.data import DataError, split_manifest
from core.errors import first_line
from core.experiment import cv, grid
from core.experiment.cluster import MAX_LOCAL_WORKERS
from core.experiment.jobs import device_key
from core.experiment.pids import process_start
from core.experiment.queue import Cancelled, device_turn
from core.experiment.runs import Run, RunBusy, RunLock, now_iso
from core.models import WeightsUnavailable, require_imagenet
from core.training.batches import prepare_data
from core.training.config import ConfigError, RunConfig, add_arguments, config_from_args, resumable_fields
from core.training.engine import fit
from core.training.finish import finish
from core.training.lr_finder import find_lr
from core.training.optim import SCHEDULERS
from core.training.process import Dist, StopFlag, init_distributed, seed_everything

DESCRIPTION = """Train, cross-validate and choose HiRISE tile classifiers.

  run       train one run into --run-dir (or --resume it)
  lr-find   the learning-rate range test, into --run-dir
  cv K      K-fold cross-validation grouped by observation, then its pooled out-of-fold report
  grid      every combination of up to three options' values (FIELD=V1,V2 ...), with --cv K each cross-validated
  report    a cross-validation's or a grid's report: report cv|grid [ID] (without ID: the list)
  score     score a cross-validation's folds on every file of their held-out observations
  promote   make a cross-validation's refit the default model, if it beats the current one on the same folds

Every option of `core.training.config.RunConfig` is a flag of run, lr-find, cv and grid (or comes from `--config FILE`).
`python -m core.train COMMAND --help` says more. With `torchrun --nproc_per_node N -m core.train run ...` it trains
with DistributedDataParallel (NCCL on GPUs, gloo on CPU); only rank 0 writes the run folder.
"""


def train(cfg: RunConfig, run: Run | None, resume: bool = False, lr_find: bool = False, queue: bool = False,
          lock: RunLock | None = None) -> int:
    """Train (or run the LR range test). Returns the process exit code; the run folder says the rest.

    A run folder has one trainer: its lock is taken here (2, with a one-line error, if another trainer
    holds it) unless the caller already holds it (`lock`), and let go only after the final status write."""
    own_lock = None
    if run is not None and lock is None:
        try:
            own_lock = RunLock.acquire(run)
        except (RunBusy, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return _train_locked(cfg, run, resume, lr_find, queue)
    finally:
        if own_lock is not None:
            own_lock.release()


def _train_locked(cfg: RunConfig, run: Run | None, resume: bool, lr_find: bool, queue: bool) -> int:
    """`train`, with the run lock held. Every way out leaves a final state in status.json."""
    d, writer = Dist(), run

    def log(msg: str) -> None:
        if d.main:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    stop = StopFlag(run)
    try:
        if stop:
            raise Cancelled()  # cancelled while it was starting
        d, device = init_distributed(cfg)
        writer = run if d.main else None
        held = device_turn(run, device_key(cfg.device), stop=lambda: bool(stop)) \
            if (queue and run is not None and d.world == 1) else contextlib.nullcontext()
        with held:
            if writer:
                writer.update_status(state="running", pid=os.getpid(), pid_start=process_start(os.getpid()),
                                     started_at=now_iso(), ended_at=None, error=None, epochs=cfg.epochs,
                                     device=str(device), host=os.uname().nodename, world_size=d.world)
            log(f"device {device}, world size {d.world}")
            seed_everything(cfg.seed)
            td = prepare_data(cfg, log)
            if writer:
                writer.save_splits(split_manifest(td.data))
                if td.data.overrides is not None:  # issue 16: the label corrections this run trained with
                    writer.save_label_overrides(td.data.overrides.as_dict())
            if lr_find:
                result = find_lr(cfg, td, d, device, log, stop, run=writer)
                if writer:
                    writer.save_lr_find(result)
                    writer.update_status(state="completed", ended_at=now_iso())
                return 0
            cancelled = fit(cfg, td, d, device, writer, resume, log, stop)
            if writer and not cancelled and writer.best_checkpoint.is_file():
                finish(writer, cfg, td, device, log)
        if writer:
            writer.update_status(state="cancelled" if cancelled else "completed", ended_at=now_iso())
        return 0
    except Cancelled:
        log("cancelled")
        if writer:
            writer.update_status(state="cancelled", ended_at=now_iso())
        return 0
    except (ConfigError, DataError, CheckpointError, WeightsUnavailable) as exc:
        log(f"error: {exc}")
        if writer:
            writer.update_status(state="failed", ended_at=now_iso(), error=str(exc))
        return 2
    except Exception as exc:
        traceback.print_exc()
        if writer:
            writer.update_status(state="failed", ended_at=now_iso(), error=f"{type(exc).__name__}: {first_line(exc)}")
        return 1
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def check_resume_changes(stored: RunConfig, cfg: RunConfig) -> None:
    """Refuse, in one line, a resume that changes what the run trains (its model, data, optimizer ...):
    its checkpoint and optimizer state would not fit, or would silently mean something else."""
    changeable = resumable_fields()
    for f in fields(RunConfig):
        old, new = getattr(stored, f.name), getattr(cfg, f.name)
        if old != new and f.name not in changeable:
            raise ConfigError(f"{f.name}: this run was trained with {old!r}, and a resumed run keeps it (not {new!r}); "
                              "start a new run, with --init run --init-from the run folder to keep its weights")
    if SCHEDULERS[cfg.scheduler].spans_run and cfg.epochs != stored.epochs:
        raise ConfigError(f"epochs: the {cfg.scheduler} schedule is laid out over the run's {stored.epochs} epochs "
                          "and a resumed run keeps them (schedules "
                          f"{', '.join(n for n, c in SCHEDULERS.items() if not c.spans_run)} can run longer)")


def prepare_run_folder(run: Run, cfg: RunConfig, args: argparse.Namespace) -> None:
    """With the run lock held: refuse what cannot start, clear what a dead writer left, record the config
    (overrides of a resume included: the app reads it) and who the trainer is."""
    if args.resume:
        check_resume_changes(RunConfig.load(run.config_file), cfg)
        if not args.queue:
            run.cancel_file.unlink(missing_ok=True)  # the app clears it when it launches; from the CLI, here
    elif run.metrics_file.exists() and not args.queue:
        raise ConfigError(f"{run.path} already holds a run; use --resume or a new --run-dir")
    run.remove_stale_temps()
    run.save_config(cfg.to_dict())
    me = {"pid": os.getpid(), "pid_start": process_start(os.getpid())}
    if args.queue:  # the launcher wrote `queued` already
        run.update_status(**me)
    else:
        run.begin(kind="lr_find" if args.lr_find else "train", **me)


SUBCOMMANDS = ("run", "lr-find", "cv", "grid", "report", "score", "promote")


def _run_flags(parser: argparse.ArgumentParser, resume: bool = True, run_dir_required: bool = True) -> None:
    """One run's flags (the `run` and `lr-find` subcommands, and the old flags-only spelling)."""
    parser.add_argument("--run-dir", required=run_dir_required, help="the run folder to create" +
                        (" (or resume)" if resume else "") + ("" if run_dir_required else "; required except with --grid"))
    parser.add_argument("--config", help="a config.json to start from; flags override it")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last.pt")
    parser.add_argument("--queue", action="store_true", help="wait for the device's turn (used by app jobs)")
    parser.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # the run lock, handed over by jobs.launch
    # the device's turn, already taken by core.experiment.queue (which this process was before its exec): held until exit
    parser.add_argument("--device-lock-fd", type=int, help=argparse.SUPPRESS)
    add_arguments(parser)


def _plan_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a config.json to start from; flags override it")
    parser.add_argument("--runs-dir", help="where the run folders go (default: HIRISE_RUNS_DIR or runs/)")
    parser.add_argument("--queue", action="store_true", help="queue the runs as jobs (as the app does) and return")
    parser.add_argument("--cv-seed", type=int, default=0, metavar="S", help="seed of the fold assignment (default 0)")
    _cluster_flags(parser)
    add_arguments(parser)


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", metavar="ADDRESS", help="train the runs side by side on a Dask cluster: 'local' "
                        "(--workers processes here) or a scheduler's tcp://HOST:PORT; the run folders must be on a "
                        "file system every worker shares (docs/cluster.md)")
    parser.add_argument("--workers", type=number_in(int, 1, MAX_LOCAL_WORKERS), default=2, metavar="N",
                        help="with --cluster local: worker processes (default 2)")


def command_parser() -> argparse.ArgumentParser:
    """`python -m core.train COMMAND ...`: one subcommand per kind of work."""
    parser = argparse.ArgumentParser(prog="python -m core.train", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _run_flags(sub.add_parser("run", help="train one run (or resume it)"))
    _run_flags(sub.add_parser("lr-find", help="the learning-rate range test"), resume=False)
    cv_parser = sub.add_parser("cv", help="K-fold cross-validation grouped by observation")
    cv_parser.add_argument("folds", metavar="K", help="folds, 3 to 10")
    _plan_flags(cv_parser)
    grid_parser = sub.add_parser("grid", help="an ablation grid")
    grid_parser.add_argument("axes", nargs="+", metavar="FIELD=V1,V2")
    grid_parser.add_argument("--cv", metavar="K", help="cross-validate every combination over K folds")
    _plan_flags(grid_parser)
    report = sub.add_parser("report", help="a cross-validation's or a grid's report")
    report.add_argument("kind", choices=("cv", "grid"))
    report.add_argument("id", nargs="?", default="", metavar="ID", help="without it: the list")
    report.add_argument("--against", metavar="ID", help="cv only: compare with this cross-validation on the "
                        "out-of-fold originals and every file both scored, as sent and with TTA (paired bootstrap "
                        "over observations)")
    report.add_argument("--runs-dir", help="the runs folder (default: HIRISE_RUNS_DIR or runs/)")
    score = sub.add_parser("score", help="score a cross-validation's folds on every file a user could send")
    score.add_argument("id", metavar="CV_ID")
    score.add_argument("--no-tta", action="store_true", help="skip the 8-view averaging (8x the time)")
    score.add_argument("--runs-dir", help="the runs folder (default: HIRISE_RUNS_DIR or runs/)")
    promote = sub.add_parser("promote", help="make a cross-validation's refit the default model, through the gate")
    promote.add_argument("id", metavar="CV_ID")
    _promote_flags(promote)
    promote.add_argument("--runs-dir", help="the runs folder (default: HIRISE_RUNS_DIR or runs/)")
    return parser


def legacy_parser() -> argparse.ArgumentParser:
    """The flags-only spellings of before the subcommands (`--cv 5`, `--grid ...`, `--cv-report ID` ...)."""
    parser = argparse.ArgumentParser(prog="python -m core.train", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr-find", action="store_true", help="run the LR range test instead of training")
    add_grid_arguments(parser)
    add_cv_arguments(parser)
    _run_flags(parser, run_dir_required=False)
    return parser


def _as_legacy(ns: argparse.Namespace) -> argparse.Namespace:
    """A subcommand's arguments as the one namespace every handler below reads."""
    args = legacy_parser().parse_args([])
    given = {k: v for k, v in vars(ns).items() if k not in ("command", "folds", "axes", "kind", "id")}
    vars(args).update(given)
    if ns.command == "lr-find":
        args.lr_find = True
    elif ns.command == "cv":
        args.cv = ns.folds
    elif ns.command == "grid":
        args.grid = ns.axes
    elif ns.command == "report":
        setattr(args, "cv_report" if ns.kind == "cv" else "grid_report", ns.id)
    elif ns.command == "score":
        args.cv_score = ns.id
    elif ns.command == "promote":
        args.promote = ns.id
    return args


def _new_spelling(argv: list[str]) -> str:
    """The subcommand that an old flags-only command line is, for the notice."""
    for flag, command in (("--cv-report", "report cv [ID]"), ("--grid-report", "report grid [ID]"),
                          ("--cv-score", "score CV_ID"), ("--promote", "promote CV_ID"), ("--grid", "grid FIELD=V1,V2"),
                          ("--cv", "cv K"), ("--lr-find", "lr-find"), ("--resume", "run --resume")):
        if flag in argv:
            return command
    return "run"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in (*SUBCOMMANDS, "-h", "--help"):
        args = _as_legacy(command_parser().parse_args(argv))
    else:
        # on stdout: stderr stays the one line that says why a command was refused
        print(f"note: flags-only commands are the old spelling; say `python -m core.train {_new_spelling(argv)} ...`",
              flush=True)
        args = legacy_parser().parse_args(argv)
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    """Run what the command line asked for (one namespace, whichever spelling gave it)."""
    runs_dir = Path(args.runs_dir) if args.runs_dir else None
    if args.against and args.cv_report is None:
        return refuse("--against compares two cross-validations: give it with --cv-report ID")
    if args.cv_report is not None:
        return cv.report_main(args.cv_report, runs_dir, args.against)
    if args.cv_score is not None:
        return cv_score_main(args.cv_score, runs_dir, tta=not args.no_tta)
    if args.promote is not None:
        return promote_main(args, runs_dir)
    if args.grid or args.grid_report is not None:
        return grid.main(args, train)
    if args.cv is not None:
        return cv.main(args, train)
    if not args.run_dir:
        return refuse("the following arguments are required: --run-dir (or --grid FIELD=V1,V2)")
    run_dir = Path(args.run_dir)
    try:
        base = RunConfig.load(args.config) if args.config else (
            RunConfig.load(run_dir / "config.json") if args.resume else None)
        cfg = config_from_args(args, base)
        if cfg.init == "imagenet":  # before anything is written: which weights, or what is missing
            print(require_imagenet(cfg.model), flush=True)
        if cfg.calibrate_from and not args.resume and not args.lr_find:  # refused before training, not after
            cv.check_refit(cfg, run_dir.resolve().parent)
    except (ConfigError, WeightsUnavailable) as exc:
        handed = RunLock.adopt(Run(run_dir.resolve()), args.lock_fd)  # a job the app launched: say why it failed
        return refuse(str(exc), handed)
    if int(os.environ.get("RANK", "0")) != 0:
        return train(cfg, None, resume=args.resume, lr_find=args.lr_find, queue=args.queue)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        run = Run(run_dir.resolve())
        lock = RunLock.adopt(run, args.lock_fd) or RunLock.acquire(run)
    except RunBusy as exc:
        return refuse(str(exc))
    except OSError as exc:
        return refuse(f"cannot write the run folder {run_dir}: {exc.strerror or exc}")
    with lock:
        try:
            prepare_run_folder(run, cfg, args)
        except ConfigError as exc:
            return refuse(str(exc), lock if args.queue else None)
        except OSError as exc:
            return refuse(f"cannot write the run folder {run_dir}: {exc.strerror or exc}")
        return train(cfg, run, resume=args.resume, lr_find=args.lr_find, lock=lock,
                     queue=args.queue and args.device_lock_fd is None)


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The ablation grid's flags (core.experiment.grid)."""
    parser.add_argument("--grid", nargs="+", action="extend", default=[], metavar="FIELD=V1,V2",
                        help="train every combination of up to three options' values, everything else equal "
                             "(one run folder each under --runs-dir), one after another in this process; with "
                             "--queue, queue them as jobs (as the app does) and return")
    parser.add_argument("--runs-dir", help="where a grid's run folders go (default: HIRISE_RUNS_DIR or runs/)")
    _cluster_flags(parser)
    parser.add_argument("--grid-report", nargs="?", const="", metavar="ID",
                        help="print a grid's results table (without ID: list the grids)")


def add_cv_arguments(parser: argparse.ArgumentParser) -> None:
    """Cross-validation's flags (core.experiment.cv)."""
    parser.add_argument("--cv", metavar="K", help="K-fold cross-validation grouped by observation (K from 3 to 10): "
                        "one run per fold under --runs-dir, in this process (or queued with --queue), then the "
                        "pooled out-of-fold report; with --grid, every combination is cross-validated")
    parser.add_argument("--cv-seed", type=int, default=0, metavar="S", help="seed of the fold assignment (default 0)")
    parser.add_argument("--cv-report", nargs="?", const="", metavar="ID",
                        help="print a cross-validation's pooled out-of-fold report (without ID: list them)")
    parser.add_argument("--against", metavar="ID", help="with --cv-report ID: compare it with this cross-validation "
                        "on the out-of-fold originals and every file both scored, as sent and with TTA (paired "
                        "bootstrap over observations)")
    parser.add_argument("--cv-score", metavar="ID", help="score every completed fold of a cross-validation on every "
                        "file of its held-out observations (originals and official copies, as sent and with 8-view "
                        "averaging), for folds trained before folds did it themselves; then print the report")
    parser.add_argument("--no-tta", action="store_true", help="with --cv-score: skip the 8-view averaging (8x the time)")
    parser.add_argument("--promote", metavar="CV_ID", help="make this cross-validation's refit the default model, if "
                        "it beats the current default on the same folds (paired bootstrap over observations on every "
                        "file); refused with the figures otherwise")
    _promote_flags(parser)


def _promote_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--first", action="store_true", help="with --promote: the empty registry's first champion")
    parser.add_argument("--dry-run", action="store_true", help="with --promote: the gate's figures and verdict "
                        "against the current default, from the out-of-fold predictions alone; nothing written")
    parser.add_argument("--refresh", action="store_true", help="with --promote: re-read a registered default's "
                        "cross-validation after `score` (its stored predictions, figures and TTA decision); not a "
                        "promotion")
    parser.add_argument("--why", default="", help="with --promote: why it becomes the default (kept in the registry)")
    parser.add_argument("--promote-checkpoint", metavar="FILE", help="with --promote --first: an existing checkpoint of "
                        "the recipe stands for it instead of a refit (say which in --why)")


def cv_score_main(cv_id: str, runs_dir: Path | None, tta: bool) -> int:
    """`--cv-score ID`: every completed fold's all-files predictions, then the report."""
    from core.experiment.cv_files import FilesError
    try:
        cv.score_files(cv_id, runs_dir, tta=tta)
    except (FileNotFoundError, FilesError, DataError, ConfigError) as exc:
        return refuse(str(exc))
    return cv.report_main(cv_id, runs_dir)


def promote_main(args: argparse.Namespace, runs_dir: Path | None) -> int:
    """`--promote CV_ID`: the champion/challenger gate (core.defaults)."""
    from core.defaults import RegistryError, promote, refresh
    if args.refresh:
        try:
            refresh(args.promote, runs_dir)
        except RegistryError as exc:
            return refuse(str(exc))
        return 0
    if args.promote_checkpoint and not args.first:
        return refuse("--promote-checkpoint stands for the first champion only (with --first); a challenger ships "
                      "its own refit")
    try:
        promote(args.promote, runs_dir, why=args.why, first=args.first, dry_run=args.dry_run,
                checkpoint=Path(args.promote_checkpoint) if args.promote_checkpoint else None)
    except RegistryError as exc:
        return refuse(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
