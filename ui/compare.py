"""Side-by-side facts about runs: settings that differ, headline metrics, per-class F1."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from core.bootstrap import paired_difference
from core.checkpoint import LoadedModel
from core.classes import CLASS_NAMES
from core.data import HiriseData, Record
from core.data.records import parse_name
from core.evaluate import evaluation_records
from core.experiment.runs import Run
from core.seen import MIN_COMMON_TILES, Exclusion, training_set, unseen
from core.training.config import RunConfig
from ui.intervals import interval_text


def _resolved(path: object) -> str:
    try:
        return str(Path(str(path)).expanduser().resolve())
    except (OSError, RuntimeError):
        return str(path)


def settings_table(runs: Sequence[Run], models: Mapping[str, dict] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One column per run (and per shipped model: name -> its checkpoint's config), one row per option; and
    the options whose values differ between them."""
    defaults = RunConfig().to_dict()
    configs = {run.name: run.config() for run in runs} | dict(models or {})
    effective = {run.name: run.status().get("effective") for run in runs}
    columns = {}
    for name, config in configs.items():
        cfg = {**defaults, **config}
        if isinstance(cfg.get("data"), list):  # the same folders, written relative or absolute, are the same data
            cfg["data"] = [_resolved(p) for p in cfg["data"]]
        shown = {k: ", ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in cfg.items()}
        columns[name] = shown | effective_settings(cfg, effective.get(name))
    table = pd.DataFrame(columns)
    differing = [k for k in table.index if table.loc[k].nunique() > 1]
    return table, differing


def common_tiles(models: Mapping[str, LoadedModel], data: HiriseData,
                 minimum: int | None = None) -> tuple[list[Record], str, Exclusion]:
    """The validation tiles every compared model is scored on: those of `data` (the first model's recorded
    validation originals when `data` holds them all, else the data's own split) that none of the models trained
    on (`core.seen`), where they came from, and what was left out. NothingUnseen (its message in words) when
    fewer than `minimum` (default `core.seen.MIN_COMMON_TILES`) are left: too few to tell models apart."""
    name, first = next(iter(models.items()))
    candidates, tiles_from = evaluation_records(first, data, "val", originals_only=True)
    tiles_from = tiles_from.replace("the checkpoint", f"{name}'s checkpoint")
    common, exclusion = unseen(candidates, [training_set(model, name) for name, model in models.items()],
                               "val tiles", MIN_COMMON_TILES if minimum is None else minimum)
    return common, tiles_from, exclusion


def metrics_table(runs: Sequence[Run], reports: Mapping[str, dict | None]) -> pd.DataFrame:
    """Headline validation metrics of each run's best checkpoint (from its saved evaluation, `reports` by run
    name, when present), and of any other model whose report is in `reports` (a shipped model). The tile-set
    fingerprint says whether two rows were scored on the same tiles."""
    rows = []
    for run in runs:
        report = reports.get(run.name)
        row = run.best_epoch()
        if report:
            rows.append(_report_row(run.name, report, row.get("epoch")))
        elif row:
            rows.append({"run": run.name, "macro-F1": row.get("val_macro_f1"),
                         "balanced accuracy": row.get("val_balanced_accuracy"), "accuracy": row.get("val_accuracy"),
                         "majority baseline": None, "val tiles": None, "tile set": None, "best epoch": row.get("epoch")})
    names = {run.name for run in runs}
    rows += [_report_row(name, report, report["checkpoint"].get("epoch")) for name, report in reports.items()
             if name not in names and report]
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def _report_row(name: str, report: dict, epoch: int | None) -> dict:
    iv = report.get("intervals") or {}
    return {"run": name, "macro-F1": report["macro_f1"], "macro-F1 95%": interval_text(iv.get("macro_f1")),
            "balanced accuracy": report["balanced_accuracy"],
            "balanced accuracy 95%": interval_text(iv.get("balanced_accuracy")),
            "accuracy": report["accuracy"], "accuracy 95%": interval_text(iv.get("accuracy")),
            "majority baseline": report["majority_baseline"]["accuracy"],
            "val tiles": report["n"], "tile set": report.get("tiles_digest"), "best epoch": epoch}


def per_class_intervals(reports: Mapping[str, dict | None], key: str) -> dict[str, list[list[float] | None]]:
    """Each report's 95% interval of a per-class figure ("f1", "recall"), by model name, for the bars' error bars
    (reports saved before intervals existed have none)."""
    out = {}
    for name, report in reports.items():
        per_class = ((report or {}).get("intervals") or {}).get("per_class")
        if per_class:
            out[name] = [c.get(key) for c in per_class]
    return out


def paired_differences(reports: Mapping[str, dict | None]) -> pd.DataFrame:
    """For every two models scored on the same tiles (equal tile-set fingerprints), the difference of each headline
    figure with its 95% interval from a paired bootstrap over observations (`core.bootstrap.paired_difference`):
    the same observation draws score both models, so what the split happened to hold cancels out."""
    usable = {name: r for name, r in reports.items() if r and r.get("predictions") and r.get("tiles_digest")}
    rows = []
    names = list(usable)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = usable[a], usable[b]
            if ra["tiles_digest"] != rb["tiles_digest"]:
                continue
            class_names = list(ra["class_names"])
            by_name = {p["name"]: p for p in rb["predictions"]}
            common = [p for p in ra["predictions"] if p["name"] in by_name]
            if not common:
                continue
            y = [class_names.index(p["true"]) for p in common]
            groups = [p.get("observation") or parse_name(p["name"]).observation for p in common]
            diff = paired_difference(y, [class_names.index(p["pred"]) for p in common],
                                     [class_names.index(by_name[p["name"]]["pred"]) for p in common], groups,
                                     len(class_names))
            row = {"A": a, "B": b, "tiles": len(common), "observations": diff["groups"]}
            for key, label in (("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"),
                               ("accuracy", "accuracy")):
                d = diff[key]
                low, high = d["interval"] or (None, None)
                row[f"{label} A−B"] = f"{d['difference']:+.3f}" + (f" ({low:+.2f} to {high:+.2f})" if low is not None
                                                                  else "")  # signed: a difference crosses 0
                row[f"{label} verdict"] = "within noise" if d["within_noise"] else ("A better" if d["difference"] > 0
                                                                                    else "B better")
            rows.append(row)
    return pd.DataFrame(rows)


def per_class(runs: Sequence[Run], reports: Mapping[str, dict | None], key: str = "f1") -> dict[str, list[float]]:
    """Per-class F1 (or recall) of each run's saved evaluation (`reports` by run name), in class order."""
    out = {}
    for run in runs:
        report = reports.get(run.name)
        if report:
            out[run.name] = _per_class_values(report, key)
        else:
            row = run.best_epoch()
            if key == "recall" and row.get("val_recall"):  # no tiles of a class: no bar (None), not a 0
                support = row.get("val_support") or {}
                out[run.name] = [None if support.get(c) == 0 else row["val_recall"].get(c) for c in CLASS_NAMES]
    names = {run.name for run in runs}
    out |= {name: _per_class_values(report, key) for name, report in reports.items() if name not in names and report}
    return out


def _per_class_values(report: dict, key: str) -> list[float | None]:
    """A report's per-class `key` in class order; None (no bar) for a class its split has no tile of."""
    values = {c["class"]: (c[key] if c["support"] else None) for c in report["per_class"]}
    return [values.get(c) for c in CLASS_NAMES]


def effective_settings(cfg: dict, effective: dict | None = None) -> dict[str, str]:
    """The options whose stored value leaves the answer to the model or the machine (image_size 0, an empty
    freeze_below, amp), as what the run trained with: what its log says, not what was asked. `effective` is what
    training recorded in the run's status; older runs and shipped models get it worked out from the model."""
    from core.models import frozen_stages, spec

    effective = effective or {}
    out: dict[str, str] = {}
    try:
        model = spec(cfg["model"])
    except (KeyError, ValueError):
        return out
    size = effective.get("input_size") or cfg.get("image_size") or model.native_size
    out["image_size"] = f"{size}" + (" (the model's own)" if not cfg.get("image_size") else "")
    try:
        frozen = effective.get("frozen", frozen_stages(cfg["model"], cfg.get("freeze", "none"), cfg.get("freeze_below")))
    except ValueError:
        frozen = None
    if cfg.get("freeze") != "below":
        out["freeze_below"] = "— (freeze is not 'below')"
    elif frozen is not None:
        point = cfg.get("freeze_below") or f"{model.fine_tune_from or 'none'} (the model's own point)"
        out["freeze_below"] = f"{point}: frozen {', '.join(frozen) if frozen else 'nothing'}"
    # core.training.engine.use_bf16 / eval_bf16: bf16 training steps wherever the device has bf16; validation and every
    # prediction in fp32 for the models whose predictions bf16 changes (EfficientNet-Lite)
    evaluation = "" if model.bf16_safe else ", validation in fp32"
    if "amp" in effective:
        out["amp"] = f"bf16 on{evaluation}" if effective["amp"] else (
            "off (asked for; no bf16 on that machine)" if cfg.get("amp") else "off")
    elif cfg.get("amp"):
        out["amp"] = f"bf16 where the device has it{evaluation}"
    return out
