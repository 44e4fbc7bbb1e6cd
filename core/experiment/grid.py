"""Ablation grids: several values for up to three options, every combination a run, everything else equal.

`FIELD=V1,V2` is parsed against RunConfig's field metadata (type, choices), and every combination is checked by
the same `validate()` and `check_ready()` as a single run before anything is queued. The runs of a grid share
their data options, so they share one split; `splits.json` of the runs that started is compared to say so.

A grid is a manifest, `<runs dir>/.grids/<id>.json` (its options, values and run folders), and a tag
`grid:<id>` in each run's notes.json; the manifest is what the results table is gathered from.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.choices import HEADLINE_METRICS
from core.cliargs import refuse, single_run_flag
from core.experiment.manifest import Manifests, Task, queue_or_run, safe_name
from core.experiment.runs import Run, read_json, runs_root
from core.training.config import ConfigError, RunConfig, field_specs, typed_config

MAX_FIELDS = 3
MAX_RUNS = 24  # a grid is one research question, not a sweep; its queued jobs wait in core.experiment.queue (~14 MiB each)

TAG_PREFIX = "grid:"
METRICS = {f"val {m.label}": f"val_{m.key}" for m in HEADLINE_METRICS}


class GridError(ConfigError):
    """A grid that cannot be launched; the message starts with the option it is about, when there is one."""


@dataclass(frozen=True)
class Axis:
    """One varied option and its values, in the order given."""
    field: str
    values: tuple


@dataclass
class GridPlan:
    """A checked grid: its axes and one valid, ready RunConfig per combination (names say the values)."""
    axes: list[Axis]
    combos: list[dict[str, Any]]
    configs: list[RunConfig]
    base: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.configs)


def _specs() -> dict[str, dict]:
    return {s["name"]: s for s in field_specs()}


def why_not_gridable(name: str) -> str | None:
    """None when a grid may vary `name`; otherwise why not, in a phrase."""
    spec = _specs().get(name)
    if spec is None:
        return "no such option"
    if spec["group"] == "data":
        return "the runs of a grid share their data options, so that they share one split"
    return spec.get("not_gridable")


def gridable_fields() -> list[str]:
    """The options a grid may vary, in the form's order."""
    return [s["name"] for s in field_specs() if why_not_gridable(s["name"]) is None]


def is_list_field(name: str) -> bool:
    return getattr(_specs()[name]["type"], "__origin__", None) is list


def format_value(value: Any) -> str:
    """A grid value as it is typed: lists as `a+b`, booleans as true/false."""
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_values(name: str, texts: Sequence[Any]) -> Axis:
    """`texts` (strings as typed, or values) as the option's type; a list option's value is `a+b+c`. Raises
    GridError naming the option: unknown or not gridable option, a value of the wrong type or not among the
    choices, a repeated value, fewer than two values."""
    reason = why_not_gridable(name)
    if reason == "no such option":
        raise GridError(f"{name}: no such option (gridable: {', '.join(gridable_fields())})")
    if reason:
        raise GridError(f"{name}: cannot be varied in a grid: {reason}")
    spec = _specs()[name]
    values = []
    for text in texts:
        if isinstance(text, str):
            text = text.strip()
            if not text:
                raise GridError(f"{name}: an empty value (values are separated by commas)")
            if is_list_field(name):
                text = [t.strip() for t in text.split("+") if t.strip()]
        try:
            value = getattr(RunConfig.from_dict({name: text}), name)
        except ConfigError as exc:
            raise GridError(str(exc)) from None
        choices = spec["choices"]
        bad = [v for v in (value if isinstance(value, list) else [value]) if choices and v not in choices]
        if bad:
            raise GridError(f"{name}: unknown value {bad[0]!r} (expected one of {', '.join(choices)})")
        value = tuple(value) if isinstance(value, list) else value
        if value in values:
            raise GridError(f"{name}: {format_value(value)} is given twice")
        values.append(value)
    if len(values) < 2:
        raise GridError(f"{name}: give at least two values to vary (one value is an ordinary option)")
    return Axis(name, tuple(values))


def parse_axis(text: str) -> Axis:
    """`FIELD=V1,V2[,...]` (the CLI's `--grid`); the field may be spelled with dashes, as its flag."""
    name, sep, values = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    if not sep or not name:
        raise GridError(f"--grid {text!r}: write FIELD=V1,V2 (for example optimizer=adam,nadam)")
    return parse_values(name, values.split(","))


def run_label(combo: dict[str, Any]) -> str:
    """A short name that says the varied values: `nadam-onecycle`, `lr0.0003`, `amp-off`, `hflip+vflip`."""
    specs = _specs()
    parts = []
    for name, value in combo.items():
        if isinstance(value, bool):
            parts.append(f"{name}-{'on' if value else 'off'}")
        elif specs[name]["choices"]:
            parts.append(format_value(value))
        else:
            parts.append(f"{name}{format_value(value)}")
    return "-".join(parts)


def plan(base: RunConfig | dict[str, Any], axes: Sequence[Axis], check_ready: bool = True) -> GridPlan:
    """Every combination of `axes` over `base`, each checked as a single run is (values, options that do not
    apply, data found, weights here): GridError on the first problem, before anything is queued."""
    base = dict(base.to_dict() if isinstance(base, RunConfig) else base)
    if not axes:
        raise GridError("choose at least one option to vary")
    if len(axes) > MAX_FIELDS:
        raise GridError(f"a grid varies at most {MAX_FIELDS} options, not {len(axes)}")
    names = [a.field for a in axes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise GridError(f"{repeated[0]}: varied twice; give all its values once (FIELD=V1,V2)")
    total = 1
    for a in axes:
        total *= len(a.values)
    if total > MAX_RUNS:
        product = f"{' x '.join(str(len(a.values)) for a in axes)} = {total} runs" if len(axes) > 1 else \
            f"{total} values, {total} runs"
        raise GridError(f"{product}: a grid holds at most {MAX_RUNS}; drop some values")
    prefix = str(base.get("name") or "").strip()
    combos, configs = [], []
    for values in itertools.product(*(a.values for a in axes)):
        combo = dict(zip(names, values, strict=True))
        label = run_label(combo)
        typed = {k: list(v) if isinstance(v, tuple) else v for k, v in combo.items()}
        try:
            cfg = RunConfig.from_dict({**base, **typed, "name": f"{prefix}-{label}" if prefix else label})
            cfg.validate()
            if check_ready:
                cfg.check_ready()
        except ConfigError as exc:
            raise GridError(f"{exc} (in the run {label})") from None
        combos.append(combo)
        configs.append(cfg)
    return GridPlan(list(axes), combos, configs, base)


# ---- launching and recording --------------------------------------------------------------------------------

def grids_dir(runs_dir: Path | None = None) -> Path:
    return MANIFESTS.dir(runs_dir)


def _start_manifest(p: GridPlan, how: str, runs_dir: Path | None, **more: Any) -> str:
    grid_id, _ = MANIFESTS.create({"how": how, **more, "fields": [a.field for a in p.axes],
                                   "values": {a.field: [_json_value(v) for v in a.values] for a in p.axes},
                                   "base": {k: v for k, v in p.base.items() if k != "name"}}, runs_dir)
    return grid_id


def _tasks(grid_id: str, p: GridPlan) -> list[Task]:
    return [Task(cfg, {"values": {k: _json_value(v) for k, v in combo.items()}}, f"run {_describe(combo)}",
                 f"grid {grid_id}: {_describe(combo)}") for combo, cfg in zip(p.combos, p.configs, strict=True)]


def _json_value(value: Any) -> Any:
    """A grid value as the manifest keeps it: its own JSON type (numbers sort as numbers), lists as lists."""
    return list(value) if isinstance(value, tuple) else value


def describe_values(values: dict[str, list]) -> str:
    """A manifest's axes in a line: `optimizer (adam, nadam) × lr (0.001, 0.003)`."""
    return " × ".join(f"{k} ({', '.join(format_value(v) for v in vs)})" for k, vs in values.items())


def _describe(combo: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in combo.items())


def launch(p: GridPlan, runs_dir: Path | None = None) -> tuple[str, list[Run]]:
    """Queue every run of the grid as a job (core.experiment.jobs: one per device at a time, oldest first). Returns the
    grid id and the runs. The plan was checked; a launch failing half way (a full disk) raises JobError naming
    the runs already queued."""
    grid_id = _start_manifest(p, "queued", runs_dir)
    return grid_id, MANIFESTS.launch(grid_id, _tasks(grid_id, p), runs_dir)


def _score(run: Run, status: dict) -> str:
    best = run.best_epoch(status)
    return f", val macro-F1 {best['val_macro_f1']:.3f}" if best.get("val_macro_f1") is not None else ""


def run_in_process(p: GridPlan, train: Callable[..., int], runs_dir: Path | None = None,
                   say: Callable[[str], None] = print, cluster: str | None = None,
                   workers: int = 2) -> tuple[str, int]:
    """Train the grid's runs one after another in this process (the CLI's `grid`), a progress line each, or with
    `cluster` side by side on a Dask cluster's workers. Returns the grid id and an exit code: 0 when every run
    completed; in this process, a cancelled run stops the grid."""
    if cluster:
        from core.experiment.cluster import connect, threads_per_task
        with connect(cluster, workers) as client:  # reached (or ClusterError) before anything is written
            grid_id = _start_manifest(p, "cluster", runs_dir)
            return grid_id, MANIFESTS.run_on_cluster(grid_id, _tasks(grid_id, p), train, client,
                                                     threads_per_task(cluster, workers), runs_dir, say, _score)
    grid_id = _start_manifest(p, "in-process", runs_dir)
    say(f"grid {grid_id}: {len(p)} runs ({' x '.join(f'{a.field} {len(a.values)}' for a in p.axes)}), "
        "one after another in this process")
    return grid_id, MANIFESTS.run_in_process(grid_id, _tasks(grid_id, p), train, runs_dir, say, _score)


def cross_validate(p: GridPlan, folds: Any, seed: int = 0, runs_dir: Path | None = None,
                   train: Callable[..., int] | None = None, say: Callable[[str], None] = print,
                   cluster: str | None = None, workers: int = 2) -> tuple[str, int]:
    """Cross-validate every combination (core.experiment.cv): queued as jobs, or with `train` (core.training.runner.train) one after
    another in this process. Every fold of every combination is checked before anything starts. The grid's
    manifest lists one cross-validation per combination; its table ranks them by out-of-fold macro-F1."""
    from core.experiment import cv
    plans = [cv.plan(cfg, folds, seed) for cfg in p.configs]
    grid_id = _start_manifest(p, "in-process" if train else "queued", runs_dir, cv_folds=len(plans[0]))
    path = MANIFESTS.path(grid_id, runs_dir)
    code = 0
    for i, (combo, configs) in enumerate(zip(p.combos, plans, strict=True), 1):
        if train is None:
            cv_id, _ = cv.launch(configs, runs_dir, grid=grid_id)
        else:
            say(f"[grid {i}/{len(p)}] {_describe(combo)}: cross-validation, {len(configs)} folds")
            cv_id, rc = cv.run_in_process(configs, train, runs_dir, say, grid=grid_id, cluster=cluster,
                                          workers=workers)
            code = code or rc
        MANIFESTS.add_run(path, {"cv": cv_id, "values": {k: _json_value(v) for k, v in combo.items()}})
        if code and train is not None:
            say(f"grid {grid_id}: stopped; {len(p) - i} combinations not cross-validated")
            return grid_id, code
    return grid_id, code


def _cv_report(manifest: dict[str, Any], runs_dir: Path | None) -> tuple[pd.DataFrame, str]:
    """A cross-validated grid's table: a row per combination, ranked by pooled out-of-fold macro-F1."""
    from core.experiment import cv
    rows = []
    for entry in manifest.get("runs", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("cv"), str):
            continue
        row: dict[str, Any] = {k: format_value(v) if isinstance(v, list) else v
                               for k, v in entry.get("values", {}).items()}
        try:
            rep = cv.report(entry["cv"], runs_dir, with_files=False)
        except (FileNotFoundError, cv.CVError):
            rows.append({**row, "cross-validation": entry["cv"], "folds done": "deleted"})
            continue
        done = rep["n_folds"] - len(rep["missing"])
        row.update({"cross-validation": entry["cv"], "folds done": f"{done}/{rep['n_folds']}",
                    "state": "active" if any(f.get("state") in ("queued", "running") for f in rep["folds"]) else
                    ("completed" if not rep["missing"] else "incomplete")})
        row.update(cv.headline_with_intervals(rep))
        rows.append(row)
    columns = list(manifest.get("fields", [])) + ["cross-validation", "folds done", "state"] + [
        f"oof {label}{suffix}" for label in ("macro-F1", "balanced accuracy", "accuracy") for suffix in ("", " 95%")]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        table = table.sort_values("oof macro-F1", ascending=False, na_position="last", kind="stable")
    note = (f"each combination cross-validated over {manifest.get('cv_folds')} folds grouped by observation (the same "
            "folds for all: same data options and seed); ranked by pooled out-of-fold macro-F1, 95% intervals from a "
            "bootstrap over observations. Rows whose intervals overlap are not told apart by this data.")
    return table.reset_index(drop=True), note


# ---- results ---------------------------------------------------------------------------------------------------

def manifest_problem(raw: Any, stem: str) -> str | None:
    """What is wrong with a grid manifest as read from disk (hand-edited, damaged), or None."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    if raw.get("id") != stem or not safe_name(raw.get("id")):
        return f"its id {raw.get('id')!r} is not its file name {stem!r}"
    if not isinstance(raw.get("fields", []), list) or not all(isinstance(f, str) for f in raw.get("fields", [])):
        return "fields is not a list of option names"
    folds = raw.get("cv_folds")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or not 0 <= folds <= 10):
        return f"cv_folds {folds!r} is not a fold count"
    runs = raw.get("runs", [])
    if not isinstance(runs, list) or not all(
            isinstance(e, dict) and (safe_name(e.get("run")) or safe_name(e.get("cv"))) for e in runs):
        return "runs is not a list of run (or cross-validation) names in this folder"
    return None


MANIFESTS = Manifests(".grids", "grid", TAG_PREFIX, manifest_problem, GridError)


def list_grids(runs_dir: Path | None = None, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The grids' manifests that read as manifests, newest first; the others named in `skipped`."""
    return MANIFESTS.list(runs_dir, skipped)


def load_manifest(grid_id: str, runs_dir: Path | None = None) -> dict[str, Any]:
    """A grid's manifest, checked (`manifest_problem`); FileNotFoundError or GridError in one line."""
    return MANIFESTS.load(grid_id, runs_dir)


def _split_digest(run: Run) -> str | None:
    """A short fingerprint of the run's validation and test files (None before the run wrote its split)."""
    splits = read_json(run.splits_file)
    if not isinstance(splits, dict):
        return None
    text = json.dumps({k: v.get("files") for k, v in sorted(splits.items()) if isinstance(v, dict)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def report(grid_id: str, runs_dir: Path | None = None) -> tuple[pd.DataFrame, str]:
    """The grid's results, a row per run (varied values, state, best-epoch validation metrics, split), sorted by
    val macro-F1; and a line saying whether they share one split (data options and split files compared)."""
    from core.experiment.jobs import job_state
    manifest = load_manifest(grid_id, runs_dir)
    if manifest.get("cv_folds"):
        return _cv_report(manifest, runs_dir)
    root = runs_root(runs_dir)
    rows, digests, data_options = [], set(), set()
    data_fields = [s["name"] for s in field_specs() if s["group"] == "data"]
    for entry in manifest.get("runs", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("run"), str) or "/" in entry["run"]:
            continue  # not a line this module wrote
        run = Run(root / entry["run"])
        row: dict[str, Any] = {k: format_value(v) if isinstance(v, list) else v
                               for k, v in entry.get("values", {}).items()}
        if not run.config_file.is_file():
            rows.append({**row, "run": entry["run"], "state": "deleted"})
            continue
        status, config = run.status(), run.config()
        best = run.best_epoch(status)
        digest = _split_digest(run)
        if digest:
            digests.add(digest)
        data_options.add(json.dumps({k: config.get(k) for k in data_fields}, sort_keys=True))
        row.update({"run": run.name, "state": job_state(run, status), "best epoch": best.get("epoch")})
        row.update({label: best.get(key) for label, key in METRICS.items()})
        row["split"] = digest
        rows.append(row)
    columns = [*list(manifest.get("fields", [])), "run", "state", "best epoch", *METRICS, "split"]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        table = table.sort_values("val macro-F1", ascending=False, na_position="last", kind="stable")
        table["best epoch"] = table["best epoch"].astype("Int64")
    started = int(table["split"].notna().sum()) if len(table) else 0
    if len(data_options) > 1 or len(digests) > 1:
        split = "the runs do NOT share one split (their data options or split files differ): compare with care"
    elif started:
        split = (f"one split: the same data options and split seed, and the {started} runs that started wrote "
                 f"identical validation and test files ({next(iter(digests))})")
    else:
        split = "one split by construction (the same data options and split seed); no run has started yet"
    return table.reset_index(drop=True), split


# ---- the command line (`python -m core.train grid ...`, `report grid [ID]`) ---------------------------

def main(args: argparse.Namespace, train: Callable[..., int]) -> int:
    """`python -m core.train grid ...` and `report grid`: every combination checked before the first run
    starts, then trained here with `train` (core.training.runner.train, passed in), or queued."""
    from core.experiment.jobs import JobError
    runs_dir = Path(args.runs_dir) if args.runs_dir else None
    if args.grid_report is not None:
        return report_main(args.grid_report, runs_dir)
    if clash := single_run_flag(args):
        return refuse(f"--grid makes one run folder per combination under --runs-dir; it takes no {clash}")
    if args.queue and args.cluster:
        return refuse("--queue and --cluster: the device queue is this machine's; a cluster has its own scheduler")
    from core.experiment.cluster import ClusterError
    try:
        axes = [parse_axis(text) for text in args.grid]
        typed = [a.field for a in axes if a.field in vars(args)]
        if typed:
            raise GridError(f"{typed[0]}: given both as --{typed[0].replace('_', '-')} and in --grid; "
                                 "give it once")
        p = plan(typed_config(args), axes)  # the base alone is not checked: the grid may fix it
        if args.cv is not None:
            grid_id, code = cross_validate(p, args.cv, args.cv_seed, runs_dir, train=None if args.queue else train,
                                           cluster=args.cluster, workers=args.workers)
            if args.queue:
                print(f"grid {grid_id}: queued {len(p)} cross-validations of {args.cv} folds\n"
                      f"results: python -m core.train report grid {grid_id}")
                return 0
            report_main(grid_id, runs_dir)
            return code
    except ConfigError as exc:
        return refuse(str(exc))
    except (JobError, ClusterError) as exc:
        return refuse(str(exc))
    return queue_or_run(args, "grid", "runs", "results: python -m core.train report grid", lambda: launch(p, runs_dir),
                        lambda: run_in_process(p, train, runs_dir, cluster=args.cluster, workers=args.workers),
                        lambda grid_id: report_main(grid_id, runs_dir))


def report_main(grid_id: str, runs_dir: Path | None) -> int:
    """Print a grid's results table, or (no id) the grids there are."""
    if not grid_id:
        skipped: list[str] = []
        grids = list_grids(runs_dir, skipped)
        for line in skipped:
            print(f"skipped: {line}", file=sys.stderr)
        for m in grids:
            print(f"{m['id']}  {len(m.get('runs', []))} runs  {describe_values(m.get('values', {}))}")
        if not grids:
            print(f"no grids in {grids_dir(runs_dir)}")
        return 0
    try:
        table, split = report(grid_id, runs_dir)
    except (FileNotFoundError, GridError) as exc:
        return refuse(str(exc))
    print(f"grid {grid_id}: {split}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-") if len(table) else "(no runs)")
    return 0
