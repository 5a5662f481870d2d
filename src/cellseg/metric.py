"""The competition metric (same as the 2018 Data Science Bowl), vectorised.

Per image, for each IoU threshold t in 0.50, 0.55, ..., 0.95: a prediction matches a truth when
IoU > t (strict); precision(t) = TP / (TP + FP + FN); the image score is the mean over the ten
thresholds. The dataset score is the mean of image scores (not pooled counts).

IoU of all pairs comes from one ``bincount`` over paired labels. Truth may be a label image
(no overlaps, the fast path) or a list of per-cell flat pixel indices (overlapping annotations:
a pixel owned by two true cells counts for both).

Convention for an image with neither truth nor prediction: score 1.0 (nothing to find, nothing
found). Every Sartorius image has cells, so this only matters for user data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from .constants import IOU_THRESHOLDS

Truth = np.ndarray | Sequence[np.ndarray]


@dataclass
class MatchResult:
    """Matching of one image at every threshold (StarDist-style record)."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_true: int
    n_pred: int
    precision: np.ndarray = field(init=False)  # TP / (TP + FP + FN) per threshold
    score: float = field(init=False)

    def __post_init__(self) -> None:
        denom = self.tp + self.fp + self.fn
        self.precision = np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)
        self.score = float(self.precision.mean())


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary non-negative label ids to 0..n (0 stays background).

    A look-up table over the id range (``bincount``) instead of ``np.unique``'s sort: 20x
    faster on a 520x704 image, which dominates the per-trial cost of tuning.
    """
    flat = labels.ravel().astype(np.int64, copy=False)
    if flat.size == 0:
        return flat.reshape(labels.shape), 0
    present = np.bincount(flat) > 0
    present[0] = False
    lut = np.zeros(present.size, np.int64)
    n = int(present.sum())
    lut[present] = np.arange(1, n + 1)
    return lut[flat].reshape(labels.shape), n


def _check_label_image(name: str, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    if labels.dtype != bool and labels.size and labels.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background)")
    return labels


def iou_matrix(truth: Truth, pred: np.ndarray) -> np.ndarray:
    """IoU of every (true cell, predicted cell) pair, shape (n_true, n_pred).

    Args:
        truth: label image (0 = background) or list of flat pixel-index arrays, one per cell.
        pred: label image of the same shape (0 = background); ids need not be consecutive.
    """
    pred = _check_label_image("pred", pred)
    pred_l, n_pred = _relabel(pred)
    pred_flat = pred_l.ravel()
    pred_area = np.bincount(pred_flat, minlength=n_pred + 1)[1:]
    if isinstance(truth, np.ndarray) and truth.ndim == 2:
        truth = _check_label_image("truth", truth)
        if truth.shape != pred.shape:
            raise ValueError(f"truth shape {truth.shape} != pred shape {pred.shape}")
        truth_l, n_true = _relabel(truth)
        t_flat = truth_l.ravel()
        true_area = np.bincount(t_flat, minlength=n_true + 1)[1:]
        keep = t_flat > 0
        pair = (t_flat[keep] - 1) * (n_pred + 1) + pred_flat[keep]
    else:
        cells = [np.asarray(c, np.int64).ravel() for c in truth]
        n_true = len(cells)
        true_area = np.array([np.unique(c).size for c in cells], np.int64)
        if n_true and any(c.size and (c.min() < 0 or c.max() >= pred_flat.size) for c in cells):
            raise ValueError(f"truth pixel index outside the image of {pred_flat.size} pixels")
        idx = np.concatenate(cells) if n_true else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(n_true), [c.size for c in cells])
        pair = owner * (n_pred + 1) + pred_flat[idx]
    inter = np.bincount(pair, minlength=n_true * (n_pred + 1)).reshape(n_true, n_pred + 1)[:, 1:]
    union = true_area[:, None] + pred_area[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _n_matches(candidates: np.ndarray) -> int:
    """Size of a maximum one-to-one matching among candidate pairs.

    For t >= 0.5 and non-overlapping truth each cell has at most one candidate, so the count
    is the number of candidates; overlapping truth can give a prediction two candidates, which
    the assignment solver resolves.
    """
    if candidates.size == 0:
        return 0
    if candidates.sum(axis=0).max() <= 1 and candidates.sum(axis=1).max() <= 1:
        return int(candidates.sum())
    rows, cols = linear_sum_assignment(-candidates.astype(np.float64))
    return int(candidates[rows, cols].sum())


def match(truth: Truth, pred: np.ndarray,
          thresholds: Sequence[float] = IOU_THRESHOLDS) -> MatchResult:
    """Match predictions to truths at every threshold (IoU > t, strict)."""
    iou = iou_matrix(truth, pred)
    n_true, n_pred = iou.shape
    th = np.asarray(thresholds, np.float64)
    tp = np.array([_n_matches(iou > t) for t in th], np.int64)
    return MatchResult(thresholds=th, tp=tp, fp=n_pred - tp, fn=n_true - tp,
                       n_true=n_true, n_pred=n_pred)


def image_score(truth_labels: Truth, pred_labels: np.ndarray) -> float:
    """The competition score of one image (mean precision over the ten thresholds)."""
    return match(truth_labels, pred_labels).score


def score_table(records: Iterable[tuple[str, str, Truth, np.ndarray]]) -> pd.DataFrame:
    """Score many images: one row per image with score, counts and precision per threshold.

    Args:
        records: (image id, cell type, truth, pred labels) tuples.
    """
    rows = []
    for image_id, cell_type, truth, pred in records:
        res = match(truth, pred)
        row = {"id": image_id, "cell_type": cell_type, "score": res.score,
               "n_true": res.n_true, "n_pred": res.n_pred}
        for t, p, tp in zip(res.thresholds, res.precision, res.tp):
            row[f"p@{t:.2f}"] = float(p)
            row[f"tp@{t:.2f}"] = int(tp)
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per-cell-type and overall means of an image score table (the numbers to report)."""
    if table.empty:
        raise ValueError("summarize: no scored images")
    cols = ["score"] + [c for c in table.columns if c.startswith("p@")]
    per_type = table.groupby("cell_type")[cols].mean()
    per_type.insert(0, "images", table.groupby("cell_type").size())
    overall = table[cols].mean().to_frame().T
    overall.insert(0, "images", len(table))
    overall.index = ["overall"]
    return pd.concat([per_type, overall])
