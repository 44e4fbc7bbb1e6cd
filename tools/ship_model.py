"""Make a finished run's best checkpoint the shipped model, and measure what it is worth.

    python tools/ship_model.py runs/RUN [--out checkpoints/hirise-efficientnet-lite0.pt] [--runs-dir DIR]

A refit on all the data (no validation split) is described by its cross-validation: the .json then holds that
cross-validation's pooled out-of-fold report (figures with intervals, per class, per fold), and half precision is
checked by agreement with the fp32 weights on every original tile (it has no held-out tiles of its own).

Stores the weights in half precision (after checking on the validation split that it costs nothing
measurable), then writes the checkpoint's .json beside it: validation and test metrics (with and without
test-time augmentation), per class with support, and the calibration temperature, for the model card.
The checkpoint carries the files of its validation and test splits, so these figures are measured, and
later re-measured, on exactly those tiles.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.checkpoint import load_checkpoint, model_from_payload, read_checkpoint
from core.checkpoint_file import save_checkpoint
from core.data import DataSpec, RecordTiles, load_dataset
from core.evaluate import evaluate_model
from core.metrics import headline
from core.settings import DEFAULT_CHECKPOINT

KEEP = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "top2_accuracy", "majority_baseline",
        "per_class", "confusion", "n", "calibration")


def summary(report: dict) -> dict:
    out = {k: report[k] for k in KEEP if k in report}
    out["calibration"] = {k: v for k, v in report["calibration"].items() if not k.startswith("reliability")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--runs-dir", type=Path, help="where the refit's cross-validation lives (default: "
                        "HIRISE_RUNS_DIR or runs/)")
    args = parser.parse_args()
    best = args.run / "best.pt"
    payload = read_checkpoint(best)
    cfg = payload["config"]
    data = load_dataset(DataSpec.from_mapping(cfg))
    full = model_from_payload(payload, best)  # the file is read once
    half = {**payload, "state_dict": {k: v.half() if v.is_floating_point() else v
                                      for k, v in payload["state_dict"].items()}}
    save_checkpoint(args.out, half)
    shipped = load_checkpoint(args.out)
    if payload.get("cv"):
        return ship_refit(args, payload, data, full, shipped)
    figures: dict = {"run": args.run.name, "epoch": payload["epoch"], "temperature": payload["temperature"],
                     "config": cfg, "split_method": data.split_method, "arch": payload["arch"],
                     "image_size": payload["image_size"]}
    for name, model, split, tta in (("val_fp32", full, "val", False), ("val", shipped, "val", False),
                                    ("val_tta", shipped, "val", True), ("test", shipped, "test", False),
                                    ("test_tta", shipped, "test", True)):
        report = evaluate_model(model, data, split, originals_only=True, tta=tta)
        figures[name] = summary(report)
        print(f"{name:9s} n={report['n']:4d}  {headline(report)}  [{report['tiles_from']}]")
    drift = abs(figures["val"]["macro_f1"] - figures["val_fp32"]["macro_f1"])
    print(f"half precision changes val macro-F1 by {drift:.4f}; file {args.out.stat().st_size / 2**20:.1f} MiB")
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")


def ship_refit(args: argparse.Namespace, payload: dict, data, full, shipped) -> None:
    """The .json of a refit: its cross-validation's report, and fp16 against fp32 on every original tile."""
    from core.experiment import cv
    from core.inference import predict_logits
    records = [r for r in data.records if r.is_original]
    tiles = RecordTiles(data, records)
    a, b = predict_logits(full, tiles), predict_logits(shipped, tiles)
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    report = cv.report(payload["cv"]["id"], args.runs_dir)
    pooled = report["pooled"]
    figures = {"run": args.run.name, "epoch": payload["epoch"], "temperature": payload["temperature"],
               "config": payload["config"], "arch": payload["arch"], "image_size": payload["image_size"],
               "cv": {**payload["cv"], "folds": report["folds"], "fold_spread": report["fold_spread"],
                      "curve": report["curve"]},
               "out_of_fold": {k: pooled[k] for k in KEEP if k in pooled and k != "calibration"} |
                              {"intervals": pooled["intervals"], "observations": pooled["observations"]},
               "half_precision": {"tiles": len(records), "same_prediction": agree,
                                  "max_logit_change": float(abs(a - b).max())}}
    print(cv.format_report(report))
    print(f"half precision: the same prediction on {agree:.2%} of {len(records)} originals; "
          f"file {args.out.stat().st_size / 2**20:.1f} MiB")
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
