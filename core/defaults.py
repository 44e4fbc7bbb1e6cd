"""The registry of default models, and the gate a challenger passes to become the default (champion/challenger).

A default can only get better. A refit becomes the default only through `promote` (`python -m core.train
--promote CV_ID`, or the Promote button under a complete cross-validation's report), which compares that
cross-validation with the current default's on the same folds (the same files, labels and fold of every file: one
fingerprint) by a paired bootstrap over observations on every file a user could send (`core.experiment.cv_files`: originals
and their official copies). It is refused, with the figures, unless the challenger is not worse beyond noise on
macro-F1 and on accuracy, and better beyond noise on at least one.

`checkpoints/defaults.json` records every default: which checkpoint, which cross-validation (id, folds, seed,
fingerprint, recipe), its figures, its date and why it became the default. Each entry keeps its out-of-fold
predictions on every file (`checkpoints/defaults/<id>.oof.json.gz`, a few hundred KB), so that a later challenger is
judged against it on any machine, whether or not the champion's run folders are still there. Earlier defaults stay
in the registry and their checkpoints stay selectable on every page.

The registry has one writer at a time (an exclusive `flock` on `defaults.json.lock`, then an atomic replace); a
registry damaged by hand is reported in one line, and the default of its last good copy (`defaults.last-good.json`,
written with it under the same lock) still loads; without that copy, the built-in default (`settings`).
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.atomic import atomic_path
from core.choices import HEADLINE, METRIC_LABELS
from core.registry import (
    ENTRY_ID,
    FORMAT,
    RegistryError,
    current_entry,
    default_checkpoint_file,
    default_serving,
    last_good_path,
)
from core.registry import read_registry as _read

__all__ = ["ENTRY_ID", "FORMAT", "RegistryError", "current_entry", "default_checkpoint_file", "default_serving",
           "last_good_path", "promote", "read_registry", "registry_path"]

OOF_FORMAT = "hirise-studio-default-oof/1"
GATE_VIEW = "all files"          # what the gate compares on: every file a user could send, each as sent
GATE_FIGURES = ("macro_f1", "accuracy")


def registry_path() -> Path:
    from core.settings import DEFAULTS_REGISTRY
    return DEFAULTS_REGISTRY


def read_registry(path: Path | None = None) -> dict[str, Any]:
    """The registry (`core.registry.read_registry`) at `path`, or this installation's."""
    return _read(path or registry_path())


# ---- writing (one writer at a time) --------------------------------------------------------------------------

@contextmanager
def locked_registry(path: Path | None = None) -> Iterator[dict[str, Any]]:
    """The registry for read-modify-write under an exclusive lock; written atomically when the block succeeds."""
    path = path or registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        registry = read_registry(path)
        yield registry
        text = json.dumps(registry, indent=1) + "\n"
        for target in (path, last_good_path(path)):  # the copy serves while the registry is damaged by hand
            with atomic_path(target) as tmp:
                tmp.write_text(text)


def oof_file(entry_id: str, path: Path | None = None) -> Path:
    return (path or registry_path()).parent / "defaults" / f"{entry_id}.oof.json.gz"


def save_oof(entry_id: str, files: dict[str, Any], path: Path | None = None) -> Path:
    """An entry's out-of-fold predictions on every file: names, labels, folds, observations, plain and TTA classes."""
    out = oof_file(entry_id, path)
    payload = {"format": OOF_FORMAT, "name": [str(n) for n in files["name"]],
               "observation": [o or "" for o in files["observation"]], "original": files["original"].tolist(),
               "y": files["y"].tolist(), "fold": files["fold"].tolist(),
               "pred": files["logits"].argmax(1).tolist(),
               "pred_tta": files["logits_tta"].argmax(1).tolist() if files.get("logits_tta") is not None else None}
    with atomic_path(out) as tmp, gzip.open(tmp, "wt") as fh:
        json.dump(payload, fh, separators=(",", ":"))
    return out


def load_oof(entry_id: str, path: Path | None = None) -> dict[str, Any]:
    import numpy as np
    file = oof_file(entry_id, path)
    try:
        with gzip.open(file, "rt") as fh:
            raw = json.load(fh)
        if raw.get("format") != OOF_FORMAT:
            raise ValueError("not an out-of-fold prediction file")
        out = {k: np.asarray(raw[k]) for k in ("name", "observation", "original", "y", "fold", "pred")}
        out["pred_tta"] = np.asarray(raw["pred_tta"]) if raw.get("pred_tta") is not None else None
        return out
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise RegistryError(f"{file}: the default {entry_id}'s out-of-fold predictions cannot be read ({exc})") \
            from None


def fingerprint(files: dict[str, Any]) -> str:
    """What 'the same folds' means: the same files, with the same labels, each in the same fold."""
    rows = sorted(f"{n}\t{int(y)}\t{int(f)}" for n, y, f in zip(files["name"], files["y"], files["fold"], strict=True))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


# ---- the gate -----------------------------------------------------------------------------------------------

def compare(challenger: dict[str, Any], champion: dict[str, Any], pred_key: str = "pred") -> dict[str, Any]:
    """Challenger minus champion on the files both scored (paired bootstrap over observations), per headline
    figure; the verdict of the gate on GATE_FIGURES."""
    from core.experiment.cv_files import paired_files
    try:
        result = paired_files(challenger, champion, pred_key)
    except ValueError as exc:
        raise RegistryError(f"promote: {exc}") from None
    if result is None:
        return {}
    worse = [k for k in GATE_FIGURES if not result[k]["within_noise"] and result[k]["difference"] < 0]
    better = [k for k in GATE_FIGURES if not result[k]["within_noise"] and result[k]["difference"] > 0]
    return {**result, "worse": worse, "better": better, "passes": not worse and bool(better)}


def challenger_files(cv_id: str, runs_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A cross-validation's report and its pooled all-files predictions (as class arrays), or RegistryError."""
    from core.experiment import cv
    from core.experiment.cv_files import pooled, with_predictions
    try:
        rep = cv.report(cv_id, runs_dir)
    except (FileNotFoundError, cv.CVError) as exc:
        raise RegistryError(str(exc)) from None
    if rep["missing"]:
        raise RegistryError(f"cross-validation {cv_id} is incomplete (fold"
                            f"{'s' if len(rep['missing']) > 1 else ''} "
                            f"{', '.join(str(f['fold']) for f in rep['missing'])} did not complete)")
    files, missing = pooled(cv.fold_runs(cv.load_manifest(cv_id, runs_dir), runs_dir))
    if files is None:
        raise RegistryError(f"cross-validation {cv_id} has no all-files predictions ({'; '.join(missing)}): "
                            f"python -m core.train score {cv_id}")
    return rep, with_predictions(files)


def find_refit(cv_id: str, runs_dir: Path | None = None) -> Path:
    """The newest completed refit calibrated from `cv_id` (its best.pt), or RegistryError."""
    from core.experiment.jobs import job_state
    from core.experiment.runs import list_runs
    found = []
    for run in list_runs(runs_dir):
        cfg = run.config()
        if isinstance(cfg, dict) and cfg.get("calibrate_from") == cv_id and run.best_checkpoint.is_file() \
                and job_state(run, run.status()) == "completed":
            found.append(run)
    if not found:
        raise RegistryError(f"cross-validation {cv_id} has no completed refit: refit it first (python -m core.train "
                            f"... --val-fraction 0 --test-fraction 0 --calibrate-from {cv_id}, or Refit on the Train "
                            "page)")
    return max(found, key=lambda r: r.best_checkpoint.stat().st_mtime).best_checkpoint


def summary_figures(rep: dict[str, Any]) -> dict[str, Any]:
    """An entry's figures: each view's headline figures with intervals, per-class recall, false alarms."""
    out: dict[str, Any] = {}
    for view, fig in ((rep.get("files") or {}).get("views") or {}).items():
        if not fig:
            continue
        iv = fig["intervals"]
        out[view] = {**{k: [fig[k], iv[k]] for k in HEADLINE},
                     "always_other_accuracy": fig["majority_baseline"]["accuracy"], "n": fig["n"],
                     "recall": {c["class"]: [c["recall"], civ["recall"], c["support"]]
                                for c, civ in zip(fig["per_class"], iv["per_class"], strict=True)},
                     "false_alarms": fig["false_alarms"]}
    return out


VIEW_ORDER = ("originals", "all files", "all files, TTA")


def figures_rows(figures: dict[str, Any]) -> list[dict[str, str]]:
    """An entry's stored figures (`summary_figures`) as rows: per-class recall first, then macro-F1, balanced
    accuracy, accuracy beside the always-`other` accuracy on the same files, and the false alarms at the scan
    threshold; a column per view. The one source of the tables on Home, in the model card and in the README."""
    from core.bootstrap import fmt
    views = [v for v in VIEW_ORDER if v in figures]
    if not views:
        return []
    rows = []
    for name in figures[views[0]]["recall"]:
        rows.append({"figure": f"recall: {name}", **{
            v: (fmt(*figures[v]["recall"][name][:2], digits=2) + f" n={figures[v]['recall'][name][2]}")
            if figures[v]["recall"][name][2] else "no files" for v in views}})
    for key, label in (("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy")):
        rows.append({"figure": label, **{v: fmt(*figures[v][key]) for v in views}})
    rows.append({"figure": "always-other accuracy", **{v: f"{figures[v]['always_other_accuracy']:.3f}" for v in views}})
    rows.append({"figure": "false alarms at 0.9", **{
        v: "–" if figures[v]["false_alarms"]["rate"] is None else
        fmt(figures[v]["false_alarms"]["rate"], figures[v]["false_alarms"]["interval"]) for v in views}})
    return rows


def fmt_difference(d: dict[str, Any]) -> str:
    """A paired difference with its interval and verdict, as the gate reports it."""
    from core.bootstrap import fmt
    verdict = "within noise" if d["within_noise"] else ("better" if d["difference"] > 0 else "worse")
    return f"{fmt(d['difference'], d['interval'])} ({verdict})"


def markdown_table(rows: list[dict[str, str]]) -> str:
    """`figures_rows` as a Markdown table (the model card's and the README's)."""
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def promote(cv_id: str, runs_dir: Path | None = None, *, why: str = "", first: bool = False,
            checkpoint_name: str | None = None, checkpoint: Path | None = None, registry: Path | None = None,
            say: Callable[[str], None] = print, dry_run: bool = False) -> dict[str, Any]:
    """Make `cv_id`'s refit the default if it beats the current default on the same folds; RegistryError (with
    the figures) when refused. `first`: an empty registry's first champion (refused when one exists).
    `checkpoint`: ship this file instead of a refit (the first champion may be an existing checkpoint of the
    recipe, named in `why`). `dry_run`: the gate's figures and verdict only, on the challenger's out-of-fold
    predictions (no refit needed); nothing is written. Returns the new entry (with `dry_run`: the gate)."""
    from core.checkpoint import CheckpointError, load_checkpoint
    from core.experiment.runs import now_iso
    if not cv_id or "/" in cv_id or "\0" in cv_id or cv_id.startswith(".") or not ENTRY_ID.match(cv_id):
        raise RegistryError(f"promote: {cv_id!r} is not a cross-validation id")
    path = registry or registry_path()
    rep, files = challenger_files(cv_id, runs_dir)
    if dry_run:
        return _dry_run(cv_id, rep, files, path, say)
    source = checkpoint or find_refit(cv_id, runs_dir)
    try:
        loaded = load_checkpoint(source)
    except CheckpointError as exc:
        raise RegistryError(f"promote: {source}: {exc}") from None
    if checkpoint is None and (loaded.config.get("model"), loaded.image_size) != (
            rep["base"].get("model"), rep["base"].get("image_size") or loaded.image_size):
        raise RegistryError(f"promote: the refit {source.parent.name} is not the recipe of {cv_id}")
    fp = fingerprint(files)
    if checkpoint is not None and checkpoint.resolve().parent == path.resolve().parent:
        checkpoint_name = checkpoint_name or checkpoint.name  # already shipped: the entry names it, no copy
    name = checkpoint_name or f"hirise-{loaded.arch.replace('tf_', '').replace('_', '-')}-{loaded.image_size}px-{cv_id}.pt"
    tta = tta_decision(files, loaded)  # timed before the lock: a second promotion waits only for the writing
    with locked_registry(path) as reg:
        champion = current_entry(reg)
        if any(e["id"] == cv_id for e in reg["entries"]):
            raise RegistryError(f"promote: cross-validation {cv_id} is already in the registry")
        if champion is None and not first:
            raise RegistryError("promote: the registry has no default to beat; the first champion is set with --first")
        if champion is not None and first:
            raise RegistryError(f"promote: the registry already has a champion ({champion['id']}); a challenger "
                                "must beat it")
        gate: dict[str, Any] = {}
        if champion is not None:
            gate, gate_tta = _gate(cv_id, champion, rep, files, path)
            text = format_gate(cv_id, champion["id"], gate, gate_tta)
            if not gate["passes"]:
                raise RegistryError(text.replace("\n", "; "))
            say(text)
        say(tta["why"])
        target = path.parent / name
        say(_ship(source, target, loaded))
        save_oof(cv_id, files, path)
        entry = {"id": cv_id, "checkpoint": name, "arch": loaded.arch, "image_size": loaded.image_size,
                 "date": now_iso(), "why": why or (f"beat {champion['id']} on the same folds" if champion else
                                                    "the first champion"),
                 "cv": {"id": cv_id, "folds": rep["n_folds"], "seed": rep["seed"], "fingerprint": fp,
                        "recipe": {k: rep["base"].get(k) for k in ("model", "image_size", "epochs", "imbalance",
                                                                   "augment", "max_steps_per_epoch", "amp",
                                                                   "label_smoothing", "freeze_below")}},
                 "figures": summary_figures(rep), "temperature": rep.get("temperature"),
                 "tta": tta["on"], "tta_decision": tta,
                 "gate": {"against": champion["id"], **_gate_record(gate)} if champion else None,
                 "replaced": champion["id"] if champion else None}
        reg["entries"].append(entry)
        reg["current"] = cv_id
    say(f"promoted: {name} is the default (registry {path})")
    return entry


def _gate(cv_id: str, champion: dict[str, Any], rep: dict[str, Any], files: dict[str, Any],
          path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The challenger against the champion on the same folds and files, as sent and with 8-view averaging on both;
    RegistryError naming the difference when they are not on the same folds or files."""
    ccv, fp = champion["cv"], fingerprint(files)
    if (ccv.get("folds"), ccv.get("seed")) != (rep["n_folds"], rep["seed"]):
        raise RegistryError(f"promote: {cv_id} has {rep['n_folds']} folds with seed {rep['seed']}; the "
                            f"default {champion['id']} was cross-validated with {ccv.get('folds')} folds, seed "
                            f"{ccv.get('seed')}: cross-validate on the same folds")
    theirs = load_oof(champion["id"], path)
    if ccv.get("fingerprint") != fp and not _same_folds_plus_added(files, theirs, ccv.get("fingerprint")):
        differ = len(set(map(str, files["name"])) ^ set(map(str, theirs["name"])))
        raise RegistryError(f"promote: {cv_id} was scored on other data or folds than the default "
                            f"{champion['id']} (fingerprint {fp} against {ccv.get('fingerprint')}; "
                            f"{differ} files in one and not the other)")
    return compare(files, theirs), compare(files, theirs, "pred_tta")


def _same_folds_plus_added(files: dict[str, Any], theirs: dict[str, Any], champion_fingerprint: str | None) -> bool:
    """True when the challenger scored every one of the champion's files, with the same labels in the same folds,
    and more besides: tiles labelled in the studio since (they never move the folds, `fold_of_observation`). The
    gate then pairs the two on the champion's files alone."""
    names = set(map(str, theirs["name"]))
    keep = [i for i, n in enumerate(files["name"]) if str(n) in names]
    if len(keep) != len(names) or len(keep) == len(files["name"]):
        return False
    subset = {k: [files[k][i] for i in keep] for k in ("name", "y", "fold")}
    return fingerprint(subset) == champion_fingerprint


def _dry_run(cv_id: str, rep: dict[str, Any], files: dict[str, Any], path: Path,
             say: Callable[[str], None]) -> dict[str, Any]:
    """The gate `promote` would apply, said and returned: what a candidate's row in the model card quotes."""
    champion = current_entry(read_registry(path))
    if champion is None:
        raise RegistryError("promote: the registry has no default to compare with")
    gate, gate_tta = _gate(cv_id, champion, rep, files, path)
    say(format_gate(cv_id, champion["id"], gate, gate_tta) + " (dry run: nothing written)")
    return {**gate, "tta": gate_tta}


def refresh(cv_id: str, runs_dir: Path | None = None, registry: Path | None = None,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-read a registered default's cross-validation (its folds scored again since, e.g. with 8-view averaging
    by `score`): its stored predictions, figures and TTA decision are rewritten. Not a promotion: the same folds
    and files (fingerprint), the same checkpoint, the same place in the registry; RegistryError otherwise."""
    from core.checkpoint import CheckpointError, load_checkpoint
    from core.experiment.runs import now_iso
    path = registry or registry_path()
    rep, files = challenger_files(cv_id, runs_dir)
    entry = next((e for e in read_registry(path)["entries"] if e["id"] == cv_id), None)
    if entry is None:
        raise RegistryError(f"refresh: {cv_id} is not in the registry (promote it)")
    if entry["cv"].get("fingerprint") != fingerprint(files):
        raise RegistryError(f"refresh: {cv_id}'s files now differ from those it was registered with (fingerprint "
                            f"{fingerprint(files)} against {entry['cv'].get('fingerprint')})")
    try:
        loaded = load_checkpoint(path.parent / entry["checkpoint"])
    except CheckpointError as exc:
        raise RegistryError(f"refresh: {exc}") from None
    tta = tta_decision(files, loaded)
    with locked_registry(path) as reg:
        stored = next(e for e in reg["entries"] if e["id"] == cv_id)
        save_oof(cv_id, files, path)
        stored.update(figures=summary_figures(rep), temperature=rep.get("temperature"), tta=tta["on"],
                      tta_decision=tta, refreshed=now_iso())
    say(tta["why"])
    say(f"refreshed: {cv_id}'s figures and TTA decision (registry {path})")
    return stored


def set_scan_threshold(entry_id: str, value: float, why: str, evidence: dict[str, Any] | None = None,
                       registry: Path | None = None) -> dict[str, Any]:
    """Record the threshold scans with a registered default use (its checkpoint and figures unchanged): `why` says
    how it was chosen, `evidence` holds the figures it was chosen on. RegistryError when the entry is not there or
    the value is not a probability above 0."""
    from core.experiment.runs import now_iso
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise RegistryError(f"scan threshold {value!r}: give a probability above 0 and at most 1")
    if not why.strip():
        raise RegistryError("scan threshold: say why it was chosen")
    with locked_registry(registry) as reg:
        entry = next((e for e in reg["entries"] if e["id"] == entry_id), None)
        if entry is None:
            raise RegistryError(f"scan threshold: {entry_id} is not in the registry")
        entry["scan_threshold"] = {"value": float(value), "why": why.strip(), "evidence": evidence or {},
                                   "date": now_iso()}
    return entry


TTA_P50_LIMIT_MS = 60.0  # one tile, 8 views: above this, averaging is offered but not the default


def tta_decision(files: dict[str, Any], loaded, repeats: int = 15) -> dict[str, Any]:
    """Whether this model's predictions average the 8 flips and turns by default: only when that beats predicting
    the tile as sent beyond noise on every file (paired over observations: not worse on macro-F1 or accuracy,
    better on one) and one tile's 8-view prediction stays under TTA_P50_LIMIT_MS at the median."""
    import time

    import numpy as np

    from core.inference import predict_views
    tile = np.random.default_rng(0).integers(0, 256, (1, 227, 227), dtype=np.uint8)
    predict_views(loaded, tile, show_progress=False)  # the first call traces
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_views(loaded, tile, show_progress=False)
        times.append((time.perf_counter() - t0) * 1000)
    p50 = float(np.median(times))
    if files.get("pred_tta") is None:
        return {"on": False, "p50_ms": p50,
                "why": f"TTA off by default: the folds' predictions have no 8-view averages to judge it by (not "
                       f"scored); one tile's 8 views take {p50:.0f} ms at the median (limit {TTA_P50_LIMIT_MS:.0f} ms)"}
    versus = compare({**files, "pred": files["pred_tta"]}, files)
    on = versus["passes"] and p50 < TTA_P50_LIMIT_MS
    from core.bootstrap import fmt
    figures = ", ".join(f"{METRIC_LABELS[k]} {fmt(versus[k]['difference'], versus[k]['interval'])}"
                        for k in GATE_FIGURES)
    why = (f"TTA {'on' if on else 'off'} by default: 8-view averaging minus as sent on every file: {figures}; one "
           f"tile's 8 views take {p50:.0f} ms at the median (limit {TTA_P50_LIMIT_MS:.0f} ms)")
    return {"on": on, "why": why, "p50_ms": p50, **_gate_record(versus)}


def _gate_record(gate: dict[str, Any]) -> dict[str, Any]:
    return {k: gate[k] for k in (*HEADLINE, "files", "groups", "passes")}


def _ship(source: Path, target: Path, loaded) -> str:
    """The checkpoint in half precision (where the prediction is unchanged; otherwise as it is), beside the
    registry. Half precision is checked on the model's own weights: the largest change of a logit on random
    tiles is reported in the registry's figures by the ship tool; here it only has to load."""
    import torch

    from core.checkpoint import read_checkpoint
    from core.checkpoint_file import save_checkpoint
    if source.resolve() == target.resolve():
        return ship_twin(target)
    payload = read_checkpoint(source)
    payload["state_dict"] = {k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    save_checkpoint(target, payload)
    return ship_twin(target)


def ship_twin(checkpoint: Path) -> str:
    """A shipped checkpoint's ONNX twin, verified against it (`core.export`): said, never silently skipped; a
    default without one is still served, by torch (its note says why)."""
    from core.export import ExportError, export
    from core.onnx_model import OnnxError
    try:
        out, verified = export(checkpoint)
    except (ExportError, OnnxError, OSError) as exc:
        return f"no ONNX twin: {exc}"
    return f"ONNX twin {out.name}: {verified.describe()}"


def format_gate(cv_id: str, champion_id: str, gate: dict[str, Any], gate_tta: dict[str, Any] | None = None) -> str:
    from core.bootstrap import fmt
    lines = [f"{cv_id} (challenger) minus {champion_id} (default), on the {gate['files']} files of every held-out "
             f"observation both scored, each as sent (paired bootstrap over {gate['groups']} observations):"]
    for k in HEADLINE:
        d = gate[k]
        verdict = "within noise" if d["within_noise"] else ("challenger better" if d["difference"] > 0 else
                                                           "challenger worse")
        lines.append(f"  {METRIC_LABELS[k]}: {fmt(d['difference'], d['interval'])} {verdict}")
    if gate_tta:
        lines.append("  with 8-view averaging on both: " + ", ".join(
            f"{METRIC_LABELS[k]} {fmt(gate_tta[k]['difference'], gate_tta[k]['interval'])}" for k in GATE_FIGURES))
    if gate["passes"]:
        lines.append(f"accepted: not worse beyond noise on macro-F1 or accuracy, better on {', '.join(METRIC_LABELS[k] for k in gate['better'])}")
    else:
        why = (f"worse beyond noise on {', '.join(METRIC_LABELS[k] for k in gate['worse'])}" if gate["worse"] else
               "better beyond noise on neither macro-F1 nor accuracy")
        lines.append(f"refused: {why}; the default stays {champion_id}")
    return "\n".join(lines)
