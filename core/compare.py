"""Side-by-side facts about runs: settings that differ, headline metrics, per-class F1."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .classes import CLASS_NAMES
from .config import RunConfig
from .runs import Run


def settings_table(runs: Sequence[Run]) -> tuple[pd.DataFrame, list[str]]:
    """One column per run, one row per option; and the options whose values differ between runs."""
    defaults = RunConfig().to_dict()
    columns = {}
    for run in runs:
        cfg = {**defaults, **run.config()}
        columns[run.name] = {k: ", ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in cfg.items()}
    table = pd.DataFrame(columns)
    differing = [k for k in table.index if table.loc[k].nunique() > 1]
    return table, differing


def metrics_table(runs: Sequence[Run], reports: Mapping[str, dict | None]) -> pd.DataFrame:
    """Headline validation metrics of each run's best checkpoint (from its saved evaluation, `reports` by run
    name, when present)."""
    rows = []
    for run in runs:
        report = reports.get(run.name)
        row = run.best_epoch()
        if report:
            rows.append({"run": run.name, "macro-F1": report["macro_f1"], "balanced accuracy": report["balanced_accuracy"],
                         "accuracy": report["accuracy"], "majority baseline": report["majority_baseline"]["accuracy"],
                         "val tiles": report["n"], "best epoch": row.get("epoch")})
        elif row:
            rows.append({"run": run.name, "macro-F1": row["val_macro_f1"],
                         "balanced accuracy": row["val_balanced_accuracy"], "accuracy": row["val_accuracy"],
                         "majority baseline": None, "val tiles": None, "best epoch": row.get("epoch")})
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def per_class(runs: Sequence[Run], reports: Mapping[str, dict | None], key: str = "f1") -> dict[str, list[float]]:
    """Per-class F1 (or recall) of each run's saved evaluation (`reports` by run name), in class order."""
    out = {}
    for run in runs:
        report = reports.get(run.name)
        if report:
            values = {c["class"]: c[key] for c in report["per_class"]}
            out[run.name] = [values.get(c, 0.0) for c in CLASS_NAMES]
        else:
            row = run.best_epoch()
            if key == "recall" and row.get("val_recall"):
                out[run.name] = [row["val_recall"].get(c, 0.0) for c in CLASS_NAMES]
    return out
