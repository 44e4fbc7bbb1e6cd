"""What an ensemble of models would score, from their saved evaluation reports (no model is run).

    python tools/ensemble_reports.py runs/a/eval_val.json runs/b/eval_val.json [...]

Averages the calibrated per-tile probabilities of reports that scored the same tiles (same tile-set
fingerprint) and prints the headline metrics of each report and of the average. A checkpoint holds one
network, so this is how an ensemble is judged before deciding whether it is worth shipping twice the
inference cost.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.evaluate import load_report
from core.metrics import classification_metrics, headline


def ensemble(reports: list[dict]) -> dict:
    """Metrics of the mean of the reports' calibrated probabilities; the reports must share their tiles."""
    names = [[p["name"] for p in r["predictions"]] for r in reports]
    if any(n != names[0] for n in names[1:]):
        raise ValueError("the reports scored different tiles (or in another order): compare like with like")
    classes = reports[0]["class_names"]
    truth = np.array([classes.index(p["true"]) for p in reports[0]["predictions"]])
    probs = np.mean([[p["probs"] for p in r["predictions"]] for r in reports], axis=0)
    return classification_metrics(truth, probs, classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="evaluation reports (eval_val.json or --out files)")
    args = parser.parse_args(argv)
    if len(args.reports) < 2:
        parser.error("give at least two reports")
    try:
        reports = [load_report(p) for p in args.reports]
        for path, report in zip(args.reports, reports, strict=True):
            print(f"{path!s:60s} n={report['n']:5d}  {headline(report)}")
        combined = ensemble(reports)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'ensemble (mean of calibrated probabilities)':60s} n={combined['n']:5d}  {headline(combined)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
