"""What a data set holds: counts per class and split, baselines, oddities. Shown by the CLI and the app."""
from __future__ import annotations

from collections import Counter

from core.classes import CLASS_NAMES

from .dataset import HiriseData
from .records import SPLITS


def summarize(data: HiriseData) -> dict:
    """A JSON-able summary. Baselines are over originals: what evaluation scores by default."""
    splits = [s for s in SPLITS if any(r.split == s for r in data.records)]
    counts = {s: Counter(r.label for r in data.records if r.split == s) for s in splits}
    originals = {s: Counter(r.label for r in data.records if r.split == s and r.is_original) for s in splits}
    baseline = {}
    for s in splits:
        total = sum(originals[s].values())
        majority = max(originals[s].values(), default=0)
        baseline[s] = {"accuracy": majority / total if total else 0.0,
                       "class": CLASS_NAMES[originals[s].most_common(1)[0][0]] if total else None}
    mean, std = data.pixel_stats() if any(r.split == "train" for r in data.records) else (None, None)
    return {
        "sources": [{"name": s.name, "kind": s.kind, "location": s.location, "records": len(s.records),
                     "missing": len(s.missing), "missing_examples": s.missing[:5],
                     "split_repeats": sum(s.repeats.values()), "unlabelled_files": s.unlabelled,
                     "warnings": s.warnings} for s in data.sources],
        "total": len(data.records),
        "classes": list(CLASS_NAMES),
        "counts": {s: [counts[s][i] for i in range(len(CLASS_NAMES))] for s in splits},
        "originals": {s: [originals[s][i] for i in range(len(CLASS_NAMES))] for s in splits},
        "augmented": {s: sum(counts[s].values()) - sum(originals[s].values()) for s in splits},
        "observations": {s: len({r.observation for r in data.records if r.split == s and r.observation})
                         for s in splits},
        "training_only_tiles": sum(r.trainable_only for r in data.records),
        "majority_baseline": baseline,
        "pixel_mean": mean,
        "pixel_std": std,
        "split_method": data.split_method,
        "leakage": data.leakage,
        "unreadable": [{"file": f, "reason": why} for f, why in data.unreadable],
        "merge": data.merge_report.lines() if len(data.sources) > 1 else [],
        "warnings": data.warnings,
        "label_overrides": data.overrides.as_dict() if data.overrides is not None else None,  # issue 16
    }


def format_summary(summary: dict) -> str:
    """A plain-text report for the terminal."""
    lines = []
    for s in summary["sources"]:
        lines.append(f"source {s['name']}: {s['kind']}, {s['records']} labelled tiles, {s['missing']} missing, "
                     f"{s['split_repeats']} split-file repeats, {s['unlabelled_files']} unlabelled files")
    lines.append(f"split: {summary['split_method']}")
    splits = list(summary["counts"])
    width = max(len(c) for c in summary["classes"]) + 2
    lines.append("")
    lines.append("class".ljust(width) + "".join(f"{s:>16}" for s in splits))
    for i, name in enumerate(summary["classes"]):
        cells = "".join(f"{summary['counts'][s][i]:>8} ({summary['originals'][s][i]:>5})" for s in splits)
        lines.append(name.ljust(width) + cells)
    lines.append("total".ljust(width) + "".join(
        f"{sum(summary['counts'][s]):>8} ({sum(summary['originals'][s]):>5})" for s in splits))
    lines.append("(all files (originals); augmented copies per split: "
                 + ", ".join(f"{s} {summary['augmented'][s]}" for s in splits) + ")")
    lines.append("observations per split: " + ", ".join(f"{s} {n}" for s, n in summary["observations"].items())
                 + f"; tiles without an observation (train only): {summary['training_only_tiles']}")
    lines.append("majority-class baseline accuracy (originals): " + ", ".join(
        f"{s} {b['accuracy']:.3f} ({b['class']})" for s, b in summary["majority_baseline"].items()))
    if summary["pixel_mean"] is not None:
        lines.append(f"training pixel mean {summary['pixel_mean']:.4f}, std {summary['pixel_std']:.4f}")
    lines.append("leakage: " + ("; ".join(summary["leakage"]) if summary["leakage"] else "none"))
    lo = summary.get("label_overrides")
    if lo:  # issue 16
        lines.append(f"label overrides: {len(lo['changed'])} label(s) changed by {lo['file']}"
                     + (f", {len(lo['unmatched'])} name no tile here" if lo["unmatched"] else ""))
    if summary["merge"]:
        lines.append("")
        lines.append("merge report:")
        lines.extend("  " + m for m in summary["merge"])
    if summary["warnings"]:
        lines.append("")
        lines.extend(f"warning: {w}" for w in summary["warnings"])
    return "\n".join(lines)
