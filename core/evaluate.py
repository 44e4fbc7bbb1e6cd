"""Evaluate a checkpoint on a split: metrics that keep the rare classes visible, curves, calibration, mistakes.

    python -m core.evaluate --data PATH [--data PATH ...] --split val [--checkpoint PATH] [--tta] [--bf16]
                            [--out report.json]

A model is scored only on the tiles of the split it never trained on (`core.seen`): a line says how many were
left out and why, and it is refused when none is left.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from core.bootstrap import fmt, intervals, statistic_interval
from core.calibration import ece_columns, ece_of_sums, expected_calibration_error, fit_temperature, reliability_diagram
from core.checkpoint import CheckpointError, LoadedModel, load_checkpoint
from core.cliargs import add_engine_argument
from core.data import DataError, HiriseData, Record, RecordTiles
from core.data.cli import add_data_arguments, load_from_args
from core.data.records import HELD_OUT
from core.experiment.runs import jsonable, write_json_atomic
from core.inference import predict_logits, probabilities, uses_bf16
from core.metrics import classification_metrics, confused_pairs, headline, per_class_curves
from core.progress import ProgressCallback
from core.seen import TrainingSet, training_set, unseen
from core.settings import DEFAULT_CHECKPOINT, DEFAULT_TTA

REPORT_FORMAT = "hirise-studio-evaluation/1"
EVALUATION_SPLITS = (*HELD_OUT, "train", "all")  # the data's splits, held-out first, or every tile
FEW_TILES = 30  # below this support a class's figures move a lot with one tile more or less
TOP_LOSSES = 24


def evaluate_model(loaded: LoadedModel, data: HiriseData, split: str = "val", originals_only: bool = True,
                   tta: bool = False, batch_size: int = 64, on_progress: ProgressCallback | None = None,
                   calibrate: bool = False, bf16: bool = False, unseen_by: Sequence[TrainingSet] | None = None,
                   records: Sequence[Record] | None = None, tiles_from: str = "") -> dict:
    """A JSON-able report of `loaded` on one split of `data` (see the module docstring for the CLI).

    `unseen_by`: score only the tiles none of these models trained on (`core.seen`: NothingUnseen, a DataError,
    when none is left); the report's `excluded` says how many were left out and why. `records`: score these
    tiles, which `tiles_from` says where they came from, rather than the split's (Compare's common tiles).

    Metrics are computed on calibrated probabilities (softmax(logits / T) with the checkpoint's T);
    ECE is given with and without T so the calibration itself can be judged. With `calibrate`, T is
    first fitted on these same logits and set on `loaded` (training does this on val, once: one pass
    over the split serves both the fit and the report). `bf16`: see `core.inference.predict_logits`.
    """
    if records is None:
        records, tiles_from = evaluation_records(loaded, data, split, originals_only)
    excluded, what = None, "tiles" if split == "all" else f"{split} tiles"
    if unseen_by is not None:
        records, excluded = unseen(records, unseen_by, what)
    logits = predict_logits(loaded, RecordTiles(data, records), batch_size=batch_size, tta=tta,
                            on_progress=on_progress, bf16=bf16)
    report = report_from_logits(loaded, data, list(records), logits, split=split, originals_only=originals_only,
                                tiles_from=tiles_from, tta=tta, calibrate=calibrate,
                                precision="bf16" if uses_bf16(loaded, bf16) else "fp32")
    if excluded is not None:
        report["excluded"] = excluded.to_dict(what)
    return report


def scored_warnings(data: HiriseData, y: np.ndarray, names: list[str], split: str) -> list[str]:
    """The data's warnings that concern this report: its sources' own, and a class missing from the tiles scored
    here (not from some other split: `--split all` scores every tile, and a class absent from test is no
    warning about it)."""
    out = data.source_warnings
    present, held = set(np.unique(y).tolist()), set(np.unique(data.labels(data.records)).tolist())
    missing = [name for i, name in enumerate(names) if i not in present and i in held]
    if missing:
        out.append(f"{', '.join(missing)}: no tiles in the {split} tiles scored here, so "
                   f"{'their' if len(missing) > 1 else 'its'} recall is undefined and macro-F1 averages over the "
                   "other classes")
    return out


def report_from_logits(loaded: LoadedModel, data: HiriseData, records: list[Record], logits: np.ndarray, *,
                       split: str, originals_only: bool, tiles_from: str, tta: bool = False, calibrate: bool = False,
                       precision: str = "fp32") -> dict:
    """`evaluate_model`'s report from logits already computed for `records` (training's last validation pass
    also gives the features the out-of-distribution reference needs: one pass serves both)."""
    names = list(loaded.class_names)
    y = data.labels(records)
    if calibrate:
        loaded.temperature = fit_temperature(logits, y)
    raw, probs = probabilities(logits), probabilities(logits, loaded.temperature)
    pred = probs.argmax(1)

    report = classification_metrics(y, probs, names)
    groups = [r.observation for r in records]
    report["intervals"] = intervals(y, pred, groups, len(names))
    top2 = (np.argsort(-probs, axis=1)[:, :2] == y[:, None]).any(1).astype(np.float64)
    report["intervals"]["top2_accuracy"] = statistic_interval(np.stack([top2, np.ones_like(top2)], 1), groups,
                                                              lambda s: s[:, 0] / np.maximum(s[:, 1], 1))
    report["intervals"]["ece_calibrated"] = statistic_interval(ece_columns(probs, y), groups, ece_of_sums)
    report["curves"] = per_class_curves(y, probs, names)
    report["calibration"] = {"temperature": loaded.temperature,
                             "ece_uncalibrated": expected_calibration_error(raw, y),
                             "ece_calibrated": expected_calibration_error(probs, y),
                             "reliability_uncalibrated": reliability_diagram(raw, y),
                             "reliability_calibrated": reliability_diagram(probs, y)}
    report["confused_pairs"] = confused_pairs(report["confusion"], names)
    report["few_tiles"] = [c["class"] for c in report["per_class"] if 0 < c["support"] < FEW_TILES]
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:TOP_LOSSES]
    report["top_losses"] = [{"source": records[i].source, "path": records[i].path, "name": records[i].name,
                             "true": names[y[i]], "pred": names[pred[i]], "prob": float(probs[i, pred[i]]),
                             "true_prob": float(probs[i, y[i]])} for i in worst]
    # every tile's logits too: pooled across folds, they are the cross-validation's out-of-fold predictions
    report["predictions"] = [{"source": r.source, "path": r.path, "name": r.name, "observation": r.observation,
                              "true": names[t], "pred": names[p], "probs": [round(float(v), 5) for v in row],
                              "logits": [round(float(v), 4) for v in raw_row]}
                             for r, t, p, row, raw_row in zip(records, y, pred, probs, np.asarray(logits), strict=True)]
    report.update({
        "format": REPORT_FORMAT,
        "checkpoint": {"path": str(loaded.path) if loaded.path else None, "arch": loaded.arch,
                       "temperature": loaded.temperature, "image_size": loaded.image_size, "epoch": loaded.epoch},
        "data": {"sources": [s.name for s in data.sources], "split_method": data.split_method,
                 "warnings": scored_warnings(data, y, names, split), "leakage": list(data.leakage)},
        "split": split, "originals_only": originals_only, "tta": tta, "n": len(records), "tiles_from": tiles_from,
        "tiles_digest": tiles_digest(r.name for r in records),
        "precision": precision,
    })
    return jsonable(report)


def evaluation_records(loaded: LoadedModel, data: HiriseData, split: str,
                       originals_only: bool) -> tuple[list[Record], str]:
    """The tiles to score a model on, and a sentence saying where that choice came from (DataError if none).

    A checkpoint records the files of its validation and test splits. When every one of them is in the
    loaded data, the model is scored on exactly those tiles (and their augmented copies when asked), so
    two models trained on the same data are compared on the same tiles, whatever split the data would make
    today. Otherwise the data's own split is used, and the sentence says why."""
    if split not in EVALUATION_SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(EVALUATION_SPLITS)})")
    records, tiles_from = _chosen_records(loaded, data, split, originals_only)
    if not records:
        kind = "original " if originals_only else ""
        raise DataError(f"the {split} split has no {kind}tiles (split method: {data.split_method})")
    return records, tiles_from


def _chosen_records(loaded: LoadedModel, data: HiriseData, split: str,
                    originals_only: bool) -> tuple[list[Record], str]:
    wanted = set(loaded.splits.get(split, {}).get("files") or ()) if split in HELD_OUT else set()
    if wanted:
        originals = data.recorded(loaded.splits, split)
        if originals is not None:
            landmarks = {r.landmark for r in originals}
            chosen = originals if originals_only else [r for r in data.records if r.landmark in landmarks]
            copies = "" if originals_only else f" and their augmented copies, {len(chosen)} files in all"
            return chosen, f"the {len(wanted)} {split} originals recorded in the checkpoint{copies}"
        present = len(wanted & {r.name for r in data.records if r.is_original})
        return (data.select(split, originals_only),
                f"this data's own {split} split: only {present} of the "
                f"{len(wanted)} {split} tiles recorded in the checkpoint are in the loaded data")
    return data.select(split, originals_only), f"this data's own {split} split"


def tiles_digest(names: Iterable[str]) -> str:
    """A short fingerprint of a set of tiles: equal digests mean two reports scored the same tiles."""
    return hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:12]


def save_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON, atomically."""
    path = Path(path)
    write_json_atomic(path, report, indent=None)
    return path


def load_report(path: str | Path) -> dict:
    """Read a report written by `save_report`; ValueError when the file is something else."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not a readable evaluation report ({exc})") from exc
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path.name} is not a HiRISE Studio evaluation report")
    return report


def format_report(report: dict) -> str:
    """The report as text: headline with baseline, per-class table, confusion matrix, worst confusions."""
    names = report["class_names"]
    ck = report["checkpoint"]
    lines = [f"{ck['arch']} checkpoint {ck['path']} on {report['split']} "
             f"({report['n']} {'original ' if report['originals_only'] else ''}tiles"
             f"{', 8x TTA' if report['tta'] else ''}{', bf16' if report.get('precision') == 'bf16' else ''}; "
             f"split: {report['data']['split_method']})",
             f"tiles: {report.get('tiles_from', 'the data split')} (fingerprint {report.get('tiles_digest', '-')})",
             headline(report)]
    if report.get("excluded"):  # tiles the model trained on, left out (`core.seen`)
        lines.insert(2, report["excluded"]["sentence"])
    iv = report.get("intervals")
    if iv:
        lines.append(f"95% intervals ({iv['method']}): macro-F1 {fmt(report['macro_f1'], iv['macro_f1'])} | "
                     f"balanced acc {fmt(report['balanced_accuracy'], iv['balanced_accuracy'])} | "
                     f"acc {fmt(report['accuracy'], iv['accuracy'])}")
    base = report["majority_baseline"]
    lines.append(f"always-{base['class']} baseline: macro-F1 {base['macro_f1']:.3f} | balanced acc "
                 f"{base['balanced_accuracy']:.3f} | acc {base['accuracy']:.3f}")
    cal = report["calibration"]
    lines.append(f"calibration: ECE {cal['ece_uncalibrated']:.3f} raw -> {cal['ece_calibrated']:.3f} "
                 f"at temperature {cal['temperature']:.2f}")
    curves = report["curves"]["classes"]
    lines += ["", f"{'class':<14}{'support':>8}{'precision':>22}{'recall':>22}{'F1':>22}{'AP':>7}{'AUC':>7}"]
    class_iv = (iv or {}).get("per_class") or [{}] * len(report["per_class"])
    for c, civ in zip(report["per_class"], class_iv, strict=True):
        cv = curves.get(c["class"])
        ap = f"{cv['average_precision']:7.3f}" if cv else f"{'-':>7}"
        auc = f"{cv['roc_auc']:7.3f}" if cv else f"{'-':>7}"
        mark = " *" if c["class"] in report["few_tiles"] else ""
        precision = fmt(c["precision"], civ.get("precision")) if c.get("predicted", 1) else "never predicted"
        recall = fmt(c["recall"], civ.get("recall")) if c["support"] else "no tiles"
        f1 = fmt(c["f1"], civ.get("f1")) if c["support"] else "-"
        lines.append(f"{c['class']:<14}{c['support']:>8}{precision:>22}{recall:>22}{f1:>22}{ap}{auc}{mark}")
    if report["few_tiles"]:
        lines.append(f"* fewer than {FEW_TILES} tiles: one tile more or less moves these figures a lot; "
                     "read them as rough")
    for name, why in report["curves"]["skipped"].items():
        lines.append(f"  no PR/ROC curve for {name}: {why}")
    short = [n[:6] for n in names]
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 14 + "".join(f"{s:>8}" for s in short)]
    for name, row in zip(names, report["confusion"], strict=True):
        lines.append(f"{name:<14}" + "".join(f"{v:>8}" for v in row))
    lines += ["", "most confused (true -> predicted)" if report["confused_pairs"] else "most confused: none"]
    for p in report["confused_pairs"][:8]:
        lines.append(f"  {p['true']} -> {p['pred']}: {p['count']} ({p['fraction_of_true']:.0%} of {p['true']})")
    if report["top_losses"]:
        lines += ["", "surest mistakes"]
        for t in report["top_losses"][:5]:
            lines.append(f"  {t['name']}: {t['true']} predicted {t['pred']} at {t['prob']:.2f}")
    for w in report["data"]["warnings"] + report["data"]["leakage"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help=f"checkpoint file (default: {DEFAULT_CHECKPOINT})")
    add_engine_argument(parser)
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="a data folder or zip; repeat to merge several")
    parser.add_argument("--split", choices=EVALUATION_SPLITS, default="val")
    parser.add_argument("--all-files", action="store_true",
                        help="include the augmented copies (-r90, -fh, ...), not only the original tiles")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=DEFAULT_TTA,
                        help="average over the 8 flips and 90-degree turns (default: "
                             f"{'on' if DEFAULT_TTA else 'off'}, as the registry of defaults decided)")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast where native (about 2x faster on a bf16 CPU; a few predictions may flip)")
    parser.add_argument("--out", help="write the full report as JSON to this file")
    parser.add_argument("--batch-size", type=int, default=64)
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        loaded = load_checkpoint(args.checkpoint, engine=args.engine)
        data = load_from_args(args.data, args)
        report = evaluate_model(loaded, data, args.split, originals_only=not args.all_files, tta=args.tta,
                                batch_size=args.batch_size, bf16=args.bf16, unseen_by=[training_set(loaded)])
        if args.out:
            save_report(report, args.out)
    except CheckpointError as exc:
        hint = "" if args.checkpoint else " (train a model first, or pass --checkpoint PATH)"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"engine: {loaded.engine_note}")  # last: the report's lines keep their places
    if args.out:
        print(f"\nreport written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
