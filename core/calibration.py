"""Temperature scaling and calibration error: how far the model's confidence can be taken at its word.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on validation
logits; it changes confidences, never the predicted class.
"""
from __future__ import annotations

import math

import numpy as np

T_MIN, T_MAX = 0.05, 20.0  # outside this range the fit says more about the data than the model


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T minimising the NLL of softmax(logits / T); 1.0 when it can't be fitted.

    Optimises log T with LBFGS, so T stays positive. Too few tiles, a single class, or
    non-finite logits return 1.0 (no calibration) rather than an overfitted value.
    """
    import torch  # only fitting needs it: softmax serves without torch (core.predict on an ONNX twin)
    import torch.nn.functional as F

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) < 2 or len(labels) != len(logits) or not np.isfinite(logits).all():
        return 1.0
    if len(np.unique(labels)) < 2 or labels.min() < 0 or labels.max() >= logits.shape[1]:
        return 1.0
    z = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t) or not T_MIN <= t <= T_MAX:
        return 1.0
    return t


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of (N, C) logits divided by a temperature."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: count, accuracy and mean confidence of the top-1 prediction."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to the first bin
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return count, acc, mean_conf, np.linspace(0.0, 1.0, n_bins + 1)


def ece_columns(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """(N, 3 * n_bins) per tile: its bin (one-hot), its top-1 hit and its confidence in that bin's slots; summed
    over any set of tiles they give that set's ECE (`ece_of_sums`): what the bootstrap resamples."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels, dtype=np.int64)).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out = np.zeros((len(conf), 3 * n_bins))
    rows = np.arange(len(conf))
    out[rows, idx] = 1.0
    out[rows, n_bins + idx] = correct
    out[rows, 2 * n_bins + idx] = conf
    return out


def ece_of_sums(sums: np.ndarray) -> np.ndarray:
    """ECE from (..., 3 * n_bins) sums of `ece_columns`: sum over bins of |hits - confidence| over the tiles."""
    n_bins = sums.shape[-1] // 3
    count, hits, conf = sums[..., :n_bins], sums[..., n_bins:2 * n_bins], sums[..., 2 * n_bins:]
    return np.abs(hits - conf).sum(-1) / np.maximum(count.sum(-1), 1e-12)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: the support-weighted mean |accuracy - confidence| over equal-width bins."""
    if len(labels) == 0:
        return 0.0
    count, acc, conf, _ = _bins(probs, labels, n_bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(acc[used] - conf[used])) / count.sum())


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """JSON-able data for a reliability diagram (empty bins have accuracy/confidence None)."""
    if len(labels) == 0:
        return {"bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(), "count": [0] * n_bins,
                "accuracy": [None] * n_bins, "confidence": [None] * n_bins, "ece": 0.0}
    count, acc, conf, edges = _bins(probs, labels, n_bins)
    return {"bin_edges": [float(e) for e in edges],
            "count": [int(c) for c in count],
            "accuracy": [None if c == 0 else float(a) for c, a in zip(count, acc, strict=True)],
            "confidence": [None if c == 0 else float(m) for c, m in zip(count, conf, strict=True)],
            "ece": expected_calibration_error(probs, labels, n_bins)}
