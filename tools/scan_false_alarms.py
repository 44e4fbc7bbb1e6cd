"""Scan false alarms out of fold: what a scan of unseen observations costs in false alarms, per recipe, before it
ships.

Each fold's model scans mosaics of its held-out observations' original tiles (10 x 10 cells of 227 px: 88 `other`
tiles and 12 landmark tiles at random places, the shape of the mosaic issue 29 was measured on) at the scan's
default window sizes and step, with the calibration temperature its refit would get (fitted on the cross-
validation's pooled out-of-fold logits, as `--calibrate-from` does). Per threshold: the detections (after the
scan's merging), the false alarms (detections centred on an `other` cell), and the landmark cells found (a
detection of the cell's class centred in it). Cross-validations on the same folds scan the same mosaics (the same
held-out tiles and seed), so their counts compare pair by pair.

    HIRISE_RUNS_DIR=runs .venv/bin/python tools/scan_false_alarms.py CV_ID [CV_ID ...] [--mosaics 1] [--seed 0]
        [--thresholds 0.9,0.95,0.98,0.99] [--json OUT] [--set-threshold [--from-json OUT]]

`--set-threshold` (two CVs: the registered default's, then the one it replaced) records in the registry of defaults
the lowest threshold of the sweep at which the default's false alarms are at most half of those of the model it
replaced at the standard threshold (issue 29: "at most half today's false alarms"), with the figures and the
landmarks it still finds; scans with the default model use it (core.settings.DEFAULT_SCAN_THRESHOLD).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.calibration import fit_temperature  # noqa: E402
from core.checkpoint import load_checkpoint  # noqa: E402
from core.classes import CLASS_NAMES  # noqa: E402
from core.data import DataSpec, load_dataset  # noqa: E402
from core.defaults import RegistryError, set_scan_threshold  # noqa: E402
from core.evaluate import evaluation_records  # noqa: E402
from core.experiment.cv import fold_runs, load_manifest, out_of_fold  # noqa: E402
from core.imageio import TILE_SIZE  # noqa: E402
from core.scan.detections import detections_of  # noqa: E402
from core.scan.raster import ArrayRaster  # noqa: E402
from core.scan.scanner import DEFAULT_SIZES, DEFAULT_STEP, scan  # noqa: E402
from core.settings import STANDARD_SCAN_THRESHOLD  # noqa: E402

GRID = 10
LANDMARK_CELLS = 12


def mosaic(tiles: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A GRID x GRID mosaic of held-out originals: 88 `other` tiles and 12 landmark tiles at random cells.
    Returns the image and each cell's class."""
    others, landmarks = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    cells = GRID * GRID
    chosen_land = rng.choice(landmarks, size=min(LANDMARK_CELLS, len(landmarks)), replace=False)
    chosen_other = rng.choice(others, size=cells - len(chosen_land), replace=len(others) < cells - len(chosen_land))
    order = rng.permutation(np.concatenate([chosen_land, chosen_other]))
    image = np.zeros((GRID * TILE_SIZE, GRID * TILE_SIZE), np.uint8)
    cell_class = np.zeros((GRID, GRID), int)
    for k, i in enumerate(order):
        r, c = divmod(k, GRID)
        image[r * TILE_SIZE:(r + 1) * TILE_SIZE, c * TILE_SIZE:(c + 1) * TILE_SIZE] = tiles[i]
        cell_class[r, c] = labels[i]
    return image, cell_class


def count(found: list, cell_class: np.ndarray) -> dict[str, int]:
    """Detections, false alarms (centred on an `other` cell) and landmark cells found (by their own class)."""
    false_alarms, hit = 0, set()
    for d in found:
        cx, cy = d.centre
        r, c = min(int(cy // TILE_SIZE), GRID - 1), min(int(cx // TILE_SIZE), GRID - 1)
        if cell_class[r, c] == 0:
            false_alarms += 1
        elif CLASS_NAMES[cell_class[r, c]] == d.label:
            hit.add((r, c))
    return {"detections": len(found), "false_alarms": false_alarms, "landmarks_found": len(hit),
            "landmark_cells": int((cell_class != 0).sum()), "other_cells": int((cell_class == 0).sum())}


def study(cv_id: str, mosaics: int, seed: int, thresholds: list[float]) -> dict:
    manifest = load_manifest(cv_id)
    oof, _ = out_of_fold(manifest)
    temperature = float(fit_temperature(oof["logits"], oof["y"]))
    folds = fold_runs(manifest)
    if any(run is None for _, run in folds):
        raise SystemExit(f"error: cross-validation {cv_id} is incomplete")
    data = load_dataset(DataSpec.from_mapping(folds[0][1].config()))
    totals = {t: {} for t in thresholds}
    per_fold = []
    for k, run in folds:
        loaded = load_checkpoint(run.best_checkpoint, engine="torch")
        loaded.temperature = temperature  # the refit's calibration, not the fold's own
        records, _ = evaluation_records(loaded, data, "val", originals_only=True)
        records = sorted(records, key=lambda r: r.name)  # the same order for every recipe on these folds
        tiles, labels = data.tiles(records), np.array([r.label for r in records])
        rng = np.random.default_rng([seed, k])
        for m in range(mosaics):
            image, cell_class = mosaic(tiles, labels, rng)
            t0 = time.perf_counter()
            result = scan([ArrayRaster(image, f"fold{k}-mosaic{m}")], loaded=loaded, sizes=DEFAULT_SIZES,
                          step=DEFAULT_STEP, threshold=min(thresholds))[0]
            row = {"fold": k, "mosaic": m, "seconds": round(time.perf_counter() - t0, 1)}
            for t in thresholds:
                counts = count(detections_of(result, t), cell_class)
                row[str(t)] = counts
                for key, value in counts.items():
                    totals[t][key] = totals[t].get(key, 0) + value
            per_fold.append(row)
            print(f"  {cv_id} fold {k} mosaic {m}: " + "; ".join(
                f"{t}: {row[str(t)]['false_alarms']} false alarms, {row[str(t)]['landmarks_found']}/"
                f"{row[str(t)]['landmark_cells']} landmarks" for t in thresholds) + f" ({row['seconds']} s)", flush=True)
    return {"cv": cv_id, "temperature": temperature, "totals": {str(t): v for t, v in totals.items()},
            "mosaics": per_fold}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cvs", nargs="+", metavar="CV_ID")
    parser.add_argument("--mosaics", type=int, default=1, help="mosaics per fold (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", default="0.9,0.95,0.98,0.99")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--set-threshold", action="store_true",
                        help="record the first CV's scan threshold in the registry of defaults (see above)")
    parser.add_argument("--from-json", type=Path, help="with --set-threshold: the figures an earlier run wrote with "
                        "--json for these CVs, not scanned again")
    args = parser.parse_args()
    thresholds = sorted(float(t) for t in args.thresholds.split(","))
    if not thresholds or not all(0 < t <= 1 for t in thresholds) or args.mosaics < 1:
        parser.error("--thresholds: probabilities in (0, 1]; --mosaics: at least 1")
    if args.set_threshold and (len(args.cvs) != 2 or STANDARD_SCAN_THRESHOLD not in thresholds):
        parser.error(f"--set-threshold: give the default's CV and the replaced one's, and sweep {STANDARD_SCAN_THRESHOLD}")
    if args.from_json:
        if not args.set_threshold:
            parser.error("--from-json goes with --set-threshold")
        try:
            saved = {r["cv"]: r for r in json.loads(args.from_json.read_text())}
            results = [saved[cv] for cv in args.cvs]
            thresholds = sorted(float(t) for t in results[0]["totals"])
            args.mosaics = max(r["mosaic"] for r in results[0]["mosaics"]) + 1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--from-json {args.from_json}: not the figures of these CVs ({exc})")
        return choose_threshold(results[0], results[1], thresholds, args)
    results = [study(cv, args.mosaics, args.seed, thresholds) for cv in args.cvs]
    print(f"\nout of fold, {args.mosaics} mosaic(s) per fold of {GRID}x{GRID} held-out originals "
          f"({GRID * GRID - LANDMARK_CELLS} other, {LANDMARK_CELLS} landmarks), sizes {DEFAULT_SIZES}, step "
          f"{DEFAULT_STEP}, seed {args.seed}:")
    for res in results:
        for t in thresholds:
            tot = res["totals"][str(t)]
            print(f"  {res['cv']} (T {res['temperature']:.3f}) at {t}: {tot['false_alarms']} false alarms on "
                  f"{tot['other_cells']} other cells, {tot['landmarks_found']}/{tot['landmark_cells']} landmark cells "
                  f"found, {tot['detections']} detections")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.set_threshold:
        return choose_threshold(results[0], results[1], thresholds, args)
    return 0


def choose_threshold(default: dict, replaced: dict, thresholds: list[float], args: argparse.Namespace) -> int:
    """The lowest swept threshold with at most half the replaced model's false alarms at the standard threshold."""
    budget = replaced["totals"][str(STANDARD_SCAN_THRESHOLD)]["false_alarms"] / 2
    fits = [t for t in thresholds if default["totals"][str(t)]["false_alarms"] <= budget]
    if not fits:
        print(f"no swept threshold keeps {default['cv']} within {budget:g} false alarms: nothing recorded",
              file=sys.stderr)
        return 1
    chosen = fits[0]
    mine, theirs = default["totals"][str(chosen)], replaced["totals"][str(STANDARD_SCAN_THRESHOLD)]
    why = (f"chosen out of fold: the lowest threshold at which this default's scans of {len(default['mosaics'])} "
           f"mosaics of held-out originals raise at most half the false alarms of the model it replaced at "
           f"{STANDARD_SCAN_THRESHOLD} ({mine['false_alarms']} against {theirs['false_alarms']} on "
           f"{mine['other_cells']} other cells), finding {mine['landmarks_found']} of {mine['landmark_cells']} "
           f"landmark cells (against {theirs['landmarks_found']})")
    evidence = {"replaced_cv": replaced["cv"], "seed": args.seed, "mosaics_per_fold": args.mosaics,
                "totals": default["totals"], "replaced_totals": replaced["totals"]}
    try:
        set_scan_threshold(default["cv"], chosen, why, evidence)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"recorded: scans with {default['cv']} use {chosen}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
