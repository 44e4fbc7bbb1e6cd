"""What a completed run's kept model gets, after the engine (`core.training.engine.fit`) is done: its calibration
temperature, its out-of-distribution reference, its evaluation report, and for a cross-validation fold the scores of
every file a user could send. The run lifecycle (`core.training.runner`) calls `finish` on the run's one writer."""
from __future__ import annotations

import torch

from core.checkpoint import model_from_payload, read_checkpoint
from core.data import RecordTiles
from core.evaluate import evaluation_records, report_from_logits
from core.experiment.runs import Run
from core.inference import predict_features
from core.metrics import headline
from core.ood import OODError
from core.ood.fit import fit_reference
from core.training.batches import TrainData
from core.training.config import RunConfig


def finish(run: Run, cfg: RunConfig, td: TrainData, device: torch.device, log) -> None:
    """Calibrate the best checkpoint on validation and save its evaluation for the app (on the training device)."""
    if not len(td.val):
        return finish_refit(run, cfg, td, device, log)
    payload = read_checkpoint(run.best_checkpoint)
    loaded = model_from_payload(payload, run.best_checkpoint, device)
    # one pass over val: its logits fit the temperature and make the report, its features calibrate the OOD check
    records, tiles_from = evaluation_records(loaded, td.data, "val", originals_only=True)
    features, logits = predict_features(loaded, RecordTiles(td.data, records), batch_size=cfg.batch_size * 2)
    report = report_from_logits(loaded, td.data, records, logits, split="val", originals_only=True,
                                tiles_from=tiles_from, calibrate=True)
    temperature = loaded.temperature
    payload["temperature"] = float(temperature)
    try:  # what the app tells an input unlike the training tiles by (core.ood); a run never fails for it
        payload["ood"] = fit_reference(loaded, td.data, known=(records, features), with_train_quantiles=True).to_dict()
    except OODError as exc:
        log(f"warning: no out-of-distribution reference: {exc}")
    run.save_checkpoint("best", payload)
    run.save_evaluation(report)
    log(f"calibration temperature {temperature:.3f}; best checkpoint on val: {headline(report)}")
    if cfg.cv_folds:  # a fold also scores every file a user could send: the copies, as sent and averaged (TTA)
        from core.experiment.cv_files import score_fold
        score_fold(run, td.data, tta=True, say=log)


def finish_refit(run: Run, cfg: RunConfig, td: TrainData, device: torch.device, log) -> None:
    """A run with no validation split: its temperature and out-of-distribution calibration come from the
    out-of-fold predictions of the cross-validation it names (`calibrate_from`), so nothing is fitted on tiles
    this model trained on, and its checkpoint records that cross-validation's figures (`core.experiment.cv.refit_record`)."""
    from core.experiment import cv
    payload = read_checkpoint(run.best_checkpoint)
    if not cfg.calibrate_from:
        log("no calibration: name a cross-validation (calibrate_from) to calibrate a refit on its out-of-fold "
            "predictions; the temperature stays 1 and there is no out-of-distribution reference")
        return
    try:
        record = cv.refit_record(cfg.calibrate_from, run.path.parent)
    except (FileNotFoundError, cv.CVError) as exc:
        log(f"warning: no calibration from cross-validation {cfg.calibrate_from}: {exc}")
        return
    payload["temperature"] = record["temperature"]
    payload["metrics"] = {**record["metrics"], "split": "out-of-fold"}
    payload["cv"] = record["cv"]
    loaded = model_from_payload(payload, run.best_checkpoint, device)
    try:
        density = fit_reference(loaded, td.data, with_train_quantiles=True, val_from_ratio=record["ood_ratio"])
        payload["ood"] = density.to_dict()
    except OODError as exc:
        log(f"warning: no out-of-distribution reference: {exc}")
    run.save_checkpoint("best", payload)
    log(f"calibration from cross-validation {cfg.calibrate_from}: temperature {record['temperature']:.3f} "
        f"(fitted on {record['cv']['tiles']} out-of-fold tiles); out-of-fold {headline(record['metrics'])}")
