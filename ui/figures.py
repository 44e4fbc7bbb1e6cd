"""Plotly figures for the app, built from core's plain data (summaries, metrics rows, reports)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.classes import CLASS_NAMES, class_hex

SPLIT_COLOURS = {"train": "#4C78A8", "val": "#F58518", "test": "#54A24B"}
PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]


def _layout(fig: go.Figure, title: str = "", height: int = 380) -> go.Figure:
    """Shared look. The legend sits in a row just above the plot; a title goes above the legend, at the top of
    the figure, with room kept for both (a title at plotly's default place lay over the legend)."""
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=95 if title else 10, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    if title:
        fig.update_layout(title=dict(text=title, x=0, xanchor="left", xref="paper", y=0.99, yanchor="top",
                                     yref="container"))
    return fig


def _mode(n_points: int) -> str:
    """Lines, with markers while there are few points: a curve of one point is otherwise invisible."""
    return "lines+markers" if n_points <= 20 else "lines"


def class_counts(summary: dict, log_scale: bool = True) -> go.Figure:
    """Tiles per class and split (log scale by default: the rare classes would be invisible)."""
    fig = go.Figure()
    for split, counts in summary["counts"].items():
        originals = summary["originals"][split]
        fig.add_bar(name=split, x=summary["classes"], y=counts, marker_color=SPLIT_COLOURS.get(split),
                    customdata=np.stack([originals], axis=-1),
                    hovertemplate="%{x}: %{y} tiles (%{customdata[0]} originals)<extra>" + split + "</extra>")
    fig.update_layout(barmode="group", yaxis_title="tiles" + (" (log scale)" if log_scale else ""))
    if log_scale:
        fig.update_yaxes(type="log", dtick=1, tickformat=",d")  # 1, 10, 100, ...: no bare minor-tick digits
    return _layout(fig)


def confusion_matrix(confusion: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES,
                     normalize: bool = False, title: str = "") -> go.Figure:
    """Rows are the true class, columns the prediction; hover shows counts and row rates either way."""
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(1)
    n = len(class_names)
    # a true class the split has no tile of has no rates: its row is left blank, not filled with 0%
    rate = np.divide(cm, rows[:, None], out=np.full_like(cm, np.nan), where=rows[:, None] > 0)
    z = rate if normalize else cm
    text = [["–" if normalize and not rows[i] else f"{rate[i, j]:.0%}" if normalize else f"{int(cm[i, j])}"
             for j in range(n)] for i in range(n)]
    hover = [[f"true {class_names[i]}, predicted {class_names[j]}<br>" +
              (f"{int(cm[i, j])} of {int(rows[i])} tiles ({rate[i, j]:.1%} of the true class)" if rows[i]
               else f"the split has no {class_names[i]} tiles") for j in range(n)] for i in range(n)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(class_names), y=list(class_names), text=text, texttemplate="%{text}", colorscale="Blues",
        hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", zmin=0, showscale=False))
    # Heatmap cells cannot be selected in Streamlit (streamlit#8760): an invisible marker per cell can.
    fig.add_scatter(x=[class_names[j] for i in range(n) for j in range(n)],
                    y=[class_names[i] for i in range(n) for j in range(n)], mode="markers",
                    marker=dict(size=36, color="rgba(0,0,0,0)", symbol="square"), hoverinfo="none",
                    showlegend=False, customdata=[[i, j] for i in range(n) for j in range(n)])
    fig.update_yaxes(autorange="reversed", title="true class")
    fig.update_xaxes(title="predicted class", side="bottom")
    fig.update_layout(clickmode="event+select", dragmode=False)
    return _layout(fig, title, height=520)


def training_curves(rows: list[dict]) -> go.Figure:
    """Loss (per step and per epoch), then val accuracy next to macro-F1 and balanced accuracy."""
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    refit = bool(epochs) and all(r.get("val_macro_f1") is None for r in epochs)  # no validation split: no panel
    fig = make_subplots(rows=1, cols=1 if refit else 2, subplot_titles=("loss",) if refit else ("loss", "validation"))
    if steps:
        per_epoch = {r["epoch"]: r["step"] for r in epochs}
        fig.add_scatter(x=[r["step"] for r in steps], y=[r["train_loss"] for r in steps], mode=_mode(len(steps)),
                        name="train loss (steps)", line=dict(color="#BAB0AC", width=1), row=1, col=1)
        fig.add_scatter(x=[per_epoch[r["epoch"]] for r in epochs], y=[r["train_loss"] for r in epochs],
                        mode="lines+markers", name="train loss (epoch)", line=dict(color=PALETTE[0]), row=1, col=1)
        validated = [r for r in epochs if r.get("val_loss") is not None]  # a refit has no validation
        fig.add_scatter(x=[per_epoch[r["epoch"]] for r in validated], y=[r["val_loss"] for r in validated],
                        mode="lines+markers", name="val loss", line=dict(color=PALETTE[1]), row=1, col=1)
        fig.update_xaxes(title_text="step", row=1, col=1)
    if not refit:
        for key, label, colour in (("val_macro_f1", "macro-F1", PALETTE[3]), ("val_balanced_accuracy",
                                   "balanced accuracy", PALETTE[2]), ("val_accuracy", "accuracy", PALETTE[4])):
            shown = [r for r in epochs if r.get(key) is not None]
            fig.add_scatter(x=[r["epoch"] for r in shown], y=[r[key] for r in shown], mode="lines+markers",
                            name=label, line=dict(color=colour), row=1, col=2)
        fig.update_xaxes(title_text="epoch", dtick=1, row=1, col=2)  # whole epochs, never 1.2, 1.4, ...
        fig.update_yaxes(range=[0, 1], row=1, col=2)
    _layout(fig, height=400)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), margin=dict(t=30, b=40))
    return fig


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per run, for every chart of a page (a run keeps its colour when another chart lacks a run)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def compare_curves(runs: dict[str, list[dict]], key: str, label: str,
                   colours: Mapping[str, str] | None = None) -> go.Figure:
    colours = colours or run_colours(list(runs))
    fig = go.Figure()
    for name, rows in runs.items():
        epochs = [r for r in rows if r.get("kind") == "epoch" and r.get(key) is not None]
        fig.add_scatter(x=[r["epoch"] for r in epochs], y=[r[key] for r in epochs], mode="lines+markers",
                        name=name, line=dict(color=colours[name]))
    fig.update_layout(xaxis_title="epoch", yaxis_title=label, xaxis=dict(dtick=1))
    return _layout(fig, label, height=320)


def grouped_bars(values: dict[str, Sequence[float | None]], categories: Sequence[str], title: str, y_title: str,
                 colours: Mapping[str, str] | None = None,
                 intervals: Mapping[str, Sequence[Sequence[float] | None]] | None = None) -> go.Figure:
    """One bar per (category, series); a None value draws no bar. `intervals` (by series, a [low, high] or None
    per category) draws each bar's 95% interval as an error bar."""
    colours = colours or run_colours(list(values))
    fig = go.Figure()
    for name, ys in values.items():
        error = None
        ivs = (intervals or {}).get(name)
        if ivs:
            up = [iv[1] - y if iv and y is not None else 0 for y, iv in zip(ys, ivs, strict=False)]  # an older report may lack some
            down = [y - iv[0] if iv and y is not None else 0 for y, iv in zip(ys, ivs, strict=False)]
            error = dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1, width=3)
        # each bar carries its figure, so a 0 reads "0.00" and a class with no tiles reads "no tiles"
        fig.add_bar(name=name, x=list(categories), y=[0 if y is None else y for y in ys], marker_color=colours[name],
                    error_y=error, text=["no tiles" if y is None else f"{y:.2f}" for y in ys],
                    textposition="outside", textangle=-90, cliponaxis=False)
    fig.update_layout(barmode="group", yaxis_title=y_title, yaxis_range=[0, 1.15],
                      yaxis_tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    return _layout(fig, title)


def probability_bars(probs: Sequence[float], class_names: Sequence[str] = CLASS_NAMES,
                     highlight: int | None = None) -> go.Figure:
    order = np.argsort(probs)
    colours = [PALETTE[3] if i == highlight else PALETTE[0] for i in order]
    # every bar labelled: a long bar holds its figure, a short one (down to 0) carries it just outside
    fig = go.Figure(go.Bar(x=[probs[i] for i in order], y=[class_names[i] for i in order], orientation="h",
                           marker_color=colours, text=[f"{probs[i]:.1%}" if probs[i] >= 0.001 else "<0.1%" for i in order],
                           textposition=["inside" if probs[i] > 0.6 else "outside" for i in order], cliponaxis=False,
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    return _layout(fig, height=260)


def one_vs_rest_curves(curves: dict, kind: str) -> go.Figure:
    """PR (`kind='pr'`) or ROC curves per class from an evaluation report's `curves` entry."""
    fig = go.Figure()
    for i, (name, c) in enumerate(curves.get("classes", {}).items()):
        colour = class_hex(name) if name in CLASS_NAMES else PALETTE[i % len(PALETTE)]
        if kind == "pr":
            # a step: each point's precision holds from the previous recall to its own (how AP sums them)
            fig.add_scatter(x=c["pr"]["recall"], y=c["pr"]["precision"], mode="lines",
                            line=dict(color=colour, shape="vh"), name=f"{name} (AP {c['average_precision']:.2f}, n={c['support']})")
        else:
            fig.add_scatter(x=c["roc"]["fpr"], y=c["roc"]["tpr"], mode="lines", line=dict(color=colour),
                            name=f"{name} (AUC {c['roc_auc']:.2f}, n={c['support']})")
    if kind == "roc":
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False)
    fig.update_layout(xaxis_title="recall" if kind == "pr" else "false positive rate",
                      yaxis_title="precision" if kind == "pr" else "true positive rate",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02])
    fig = _layout(fig, "precision-recall (one vs rest)" if kind == "pr" else "ROC (one vs rest)", height=560)
    # eight long entries: below the plot, clear of the title (above, they ran over it)
    return fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.15, x=0), margin=dict(t=50))


def lr_finder(result: dict) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=result["lrs"], y=result["losses"], mode="lines", name="loss", line=dict(color="#BAB0AC"))
    fig.add_scatter(x=result["lrs"], y=result["smoothed"], mode="lines", name="smoothed", line=dict(color=PALETTE[0]))
    if result.get("suggested_lr"):
        fig.add_vline(x=result["suggested_lr"], line_dash="dash", line_color=PALETTE[3],
                      annotation_text=f"suggested {result['suggested_lr']:.1e}", annotation_position="bottom right")
    fig.update_xaxes(type="log", title="learning rate", dtick=1, exponentformat="power")
    fig.update_yaxes(title="loss", range=[0, min(max(result["smoothed"] or [1]) * 1.1, 3 * min(result["smoothed"] or
                                                                                             [1]) + 1)])
    return _layout(fig, "LR range test", height=320)


def reliability(calibration: dict) -> go.Figure:
    """Reliability diagram before and after temperature scaling: accuracy against confidence per bin, the
    diagonal being perfect calibration. Marker area follows the bin's tile count, so a wild point backed by two
    tiles reads as such."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="perfectly calibrated")
    temperature = calibration.get("temperature", 1.0)
    for key, label, colour in (("reliability_uncalibrated", "before (T = 1)", PALETTE[1]),
                               ("reliability_calibrated", f"after (T = {temperature:.2f})", PALETTE[0])):
        diagram = calibration.get(key)
        if not diagram:
            continue
        used = [i for i, c in enumerate(diagram["count"]) if c > 0]
        counts = [diagram["count"][i] for i in used]
        biggest = max(counts, default=1)
        fig.add_scatter(x=[diagram["confidence"][i] for i in used], y=[diagram["accuracy"][i] for i in used],
                        mode="lines+markers", line=dict(color=colour),
                        marker=dict(size=[6 + 18 * (c / biggest) ** 0.5 for c in counts], color=colour),
                        customdata=counts, name=f"{label}, ECE {diagram['ece']:.3f}",
                        hovertemplate="confidence %{x:.2f}, accuracy %{y:.2f}<br>%{customdata} tiles<extra></extra>")
    fig.update_layout(xaxis_title="confidence (top class)", yaxis_title="accuracy", xaxis_range=[0, 1.02],
                      yaxis_range=[0, 1.02])
    return _layout(fig, "reliability: before and after temperature scaling", height=420)
