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

from cellseg.constants import IOU_THRESHOLDS

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


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary non-negative label ids to 0..n (0 stays background).

    Returns the relabelled image and the original ids (sorted; new id k is ``ids[k - 1]``),
    which the error overlays need to colour cells by their original labels.

    A look-up table over the id range (``bincount``) instead of ``np.unique``'s sort: 20x
    faster on a 520x704 image, which dominates the per-trial cost of tuning. Not
    ``skimage.segmentation.relabel_sequential`` (same labels): 7x slower (2.7 vs 18.9 ms).
    """
    flat = labels.ravel().astype(np.int64, copy=False)
    if flat.size == 0:
        return flat.reshape(labels.shape), np.zeros(0, np.int64)
    present = np.bincount(flat) > 0
    present[0] = False
    ids = np.flatnonzero(present)
    lut = np.zeros(present.size, np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[flat].reshape(labels.shape), ids


def _check_label_image(name: str, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    if labels.dtype != bool and labels.size and labels.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background)")
    return labels


@dataclass
class Overlap:
    """Pixel counts of every (true cell, predicted cell) pair: what IoU, merges and splits are
    computed from.

    Attributes:
        inter: (n_true, n_pred) intersection sizes in pixels.
        true_area, pred_area: cell sizes in pixels (a true cell's full mask, shared pixels
            included).
        true_ids, pred_ids: the label id of each row / column (for list truth, cell k has
            id k + 1, the :class:`cellseg.data.data_root.Instances` convention).
    """

    inter: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    true_ids: np.ndarray
    pred_ids: np.ndarray

    def iou(self) -> np.ndarray:
        union = self.true_area[:, None] + self.pred_area[None, :] - self.inter
        return np.where(union > 0, self.inter / np.maximum(union, 1), 0.0)


def overlap(truth: Truth, pred: np.ndarray) -> Overlap:
    """Intersections and areas of all cell pairs from one ``bincount`` over paired labels.

    Args:
        truth: label image (0 = background) or list of flat pixel-index arrays, one per cell.
        pred: label image of the same shape (0 = background); ids need not be consecutive.
    """
    pred = _check_label_image("pred", pred)
    pred_l, pred_ids = _relabel(pred)
    n_pred = pred_ids.size
    pred_flat = pred_l.ravel()
    pred_area = np.bincount(pred_flat, minlength=n_pred + 1)[1:]
    if isinstance(truth, np.ndarray) and truth.ndim == 2:
        truth = _check_label_image("truth", truth)
        if truth.shape != pred.shape:
            raise ValueError(f"truth shape {truth.shape} != pred shape {pred.shape}")
        truth_l, true_ids = _relabel(truth)
        n_true = true_ids.size
        t_flat = truth_l.ravel()
        true_area = np.bincount(t_flat, minlength=n_true + 1)[1:]
        keep = t_flat > 0
        pair = (t_flat[keep] - 1) * (n_pred + 1) + pred_flat[keep]
    else:
        cells = [np.asarray(c, np.int64).ravel() for c in truth]
        n_true = len(cells)
        true_ids = np.arange(1, n_true + 1)
        idx = np.concatenate(cells) if n_true else np.zeros(0, np.int64)
        sizes = np.array([c.size for c in cells], np.int64)
        owner = np.repeat(np.arange(n_true), sizes)
        if idx.size and (idx.min() < 0 or idx.max() >= pred_flat.size):
            raise ValueError(f"truth pixel index outside the image of {pred_flat.size} pixels")
        # Decoded masks are sorted without repeats (area = size); otherwise drop repeats, which
        # would count twice in the intersection.
        if not np.all((np.diff(idx) > 0) | (np.diff(owner) != 0)):
            cells = [np.unique(c) for c in cells]
            idx = np.concatenate(cells)
            sizes = np.array([c.size for c in cells], np.int64)
            owner = np.repeat(np.arange(n_true), sizes)
        true_area = sizes
        pair = owner * (n_pred + 1) + pred_flat[idx]
    inter = np.bincount(pair, minlength=n_true * (n_pred + 1)).reshape(n_true, n_pred + 1)[:, 1:]
    return Overlap(inter=inter, true_area=true_area, pred_area=pred_area,
                   true_ids=true_ids, pred_ids=pred_ids)


def iou_matrix(truth: Truth, pred: np.ndarray) -> np.ndarray:
    """IoU of every (true cell, predicted cell) pair, shape (n_true, n_pred).

    Args:
        truth: label image (0 = background) or list of flat pixel-index arrays, one per cell.
        pred: label image of the same shape (0 = background); ids need not be consecutive.
    """
    return overlap(truth, pred).iou()


def matched_pairs(iou: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a maximum one-to-one matching among pairs with IoU > threshold.

    Its size is the metric's TP count (:func:`match`); among maximum matchings the solver
    prefers higher IoU.
    """
    rows, cols = np.nonzero(iou > threshold)
    return match_candidates(rows, cols, iou[rows, cols])


def match_candidates(rows: np.ndarray, cols: np.ndarray,
                     values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`matched_pairs` on a sparse candidate list (row, column, IoU), sorted by row.

    Isolated candidate pairs (the usual case: one candidate per row and column) are taken
    directly; only the conflicting rest (overlapping truth) goes to the assignment solver, so
    800 cells cost no 800x800 assignment.
    """
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if rows.size == 0:
        return rows, cols
    row_deg = np.bincount(rows)
    col_deg = np.bincount(cols)
    simple = (row_deg[rows] == 1) & (col_deg[cols] == 1)
    r, c = rows[simple], cols[simple]
    if not simple.all():
        hard_r, ri = np.unique(rows[~simple], return_inverse=True)
        hard_c, ci = np.unique(cols[~simple], return_inverse=True)
        # Cardinality first (weight > any IoU sum of a smaller matching), then IoU.
        weight = np.zeros((hard_r.size, hard_c.size))
        weight[ri, ci] = min(weight.shape) + 1 + np.asarray(values)[~simple]
        rr, cc = linear_sum_assignment(weight, maximize=True)
        ok = weight[rr, cc] > 0
        r = np.concatenate([r, hard_r[rr[ok]]])
        c = np.concatenate([c, hard_c[cc[ok]]])
    order = np.argsort(r, kind="stable")
    return r[order], c[order]


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
