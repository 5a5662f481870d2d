"""A confidence for every decoded cell: the probability that it matches a true cell.

A small scikit-learn model (:class:`sklearn.ensemble.HistGradientBoostingClassifier`) scores
each cell of a decoded label image from features of the cell, the network's probability maps
and the image (:func:`cell_features`, columns :data:`FEATURE_NAMES`). Its training label is
whether the cell matches a true cell at IoU >= 0.5 (:func:`match_labels`, the metric's own
matching: :func:`cellseg.metrics.error_analysis.error_analysis`, strictly IoU > 0.5 as the
competition counts it).

Training must be cross-fitted (:func:`cross_fit_groups`): no image is scored by a model that
saw its cells. ``tune.py`` does it on the OOF images (:mod:`cellseg.tune.confidence_fit`):
leave-one-image-out confidences, a cut-off per type chosen where it raises the OOF score
(:func:`choose_cutoff`, scored exactly by :class:`ScoredImage`), then one model fitted on
every OOF cell, saved beside ``postprocess.yaml``. ``infer``, ``segment``, ``pseudo_label``,
``export`` and the Kaggle package apply it (:class:`cellseg.infer.ensemble.FoldEnsemble`).
Measured on the 40 real images out of fold (bench/results/confidence_cv_5fold*.md): about
+0.01 held out, every type up at tuning seed 42.

Model files: ``skops.io`` (``.skops``, a zip of JSON and arrays; loading executes no pickled
code) with an explicit list of trusted types (:data:`TRUSTED_TYPES`); a file holding any other
type, or a plain pickle, is refused. Beside it, ``<name>.json`` records what the model was
trained on (experiment, folds, a hash of the image ids, number of cells, features, versions)
and the SHA-256 of the model file, checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cellseg import fileio
from cellseg.constants import CELL_TYPES

#: Feature columns of :func:`cell_features`, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "area",              # pixels
    "rel_area",          # area / median cell area of the image
    "body_mean",         # body probability inside the cell
    "body_min",
    "body_p10",          # 10th percentile (robust minimum)
    "seed_peak",         # max of body * (1 - border) inside: the decoder's seed score
    "border_mean",       # touching-border probability inside
    "border_outline",    # border probability on the cell's inner outline
    "body_outline",      # body probability on the inner outline
    "body_ring",         # body probability on a 2-px ring outside the cell
    "solidity",          # area / convex hull area
    "eccentricity",
    "perim2_area",       # perimeter^2 / (4 pi area): 1 for a disc
    "extent",            # area / bounding-box area
    "contrast",          # image std inside / image std (local texture)
    "contrast_ring",     # |mean inside - mean on the ring| / image std
    "edge_dist",         # pixels from the cell's bounding box to the nearest image edge
    "n_neighbours",      # other cells touching the 2-px ring
    *(f"type_{t}" for t in CELL_TYPES),  # cell-type one-hot (the type the image was decoded as)
)

#: Non-default types a saved model may hold (besides numpy / builtins that skops trusts).
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)

MODEL_SUFFIX = ".skops"
RING_PX = 2


class ConfidenceModelError(ValueError):
    """A confidence model file that is missing, unsafe, or does not match its record."""


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _check_inputs(labels: np.ndarray, probs: np.ndarray,
                  image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer label image, got {labels.dtype} "
                         f"{labels.shape}")
    probs = np.asarray(probs, np.float32)
    if probs.ndim == 2:
        probs = probs[..., None]
    if probs.shape[:2] != labels.shape:
        raise ValueError(f"probs shape {probs.shape} does not match labels {labels.shape}")
    body = probs[..., 0]
    border = probs[..., 1] if probs.shape[2] > 1 else np.zeros_like(body)
    if image is not None and np.asarray(image).shape[:2] != labels.shape:
        raise ValueError(f"image shape {np.asarray(image).shape} does not match labels "
                         f"{labels.shape}")
    return labels, body, border


def cell_features(labels: np.ndarray, probs: np.ndarray, image: np.ndarray | None,
                  cell_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Features of every cell of a decoded label image.

    Args:
        labels: int label image, 0 = background (ids need not be consecutive).
        probs: float H x W x C probability maps in [0, 1] (0 = body, 1 = touching border), or
            H x W (body only; the border features are then 0).
        image: the grayscale image (any dtype) or None (contrast features are then 0).
        cell_type: one of ``CELL_TYPES`` (the type the image was decoded as).

    Returns:
        ``(ids, X)``: the sorted cell ids and a float64 array (n_cells, len(FEATURE_NAMES)).
    """
    from skimage.measure import regionprops
    from skimage.segmentation import expand_labels, find_boundaries

    if cell_type not in CELL_TYPES:
        raise ValueError(f"unknown cell type {cell_type!r}; valid: {list(CELL_TYPES)}")
    labels, body, border = _check_inputs(labels, probs, image)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    n = ids.size
    X = np.zeros((n, len(FEATURE_NAMES)), np.float64)
    if n == 0:
        return ids, X
    col = {name: k for k, name in enumerate(FEATURE_NAMES)}
    h, w = labels.shape
    area = ndimage.sum_labels(np.ones_like(body), labels, ids)
    X[:, col["area"]] = area
    X[:, col["rel_area"]] = area / max(float(np.median(area)), 1.0)
    X[:, col["body_mean"]] = ndimage.mean(body, labels, ids)
    X[:, col["body_min"]] = ndimage.minimum(body, labels, ids)
    X[:, col["seed_peak"]] = ndimage.maximum(body * (1.0 - border), labels, ids)
    X[:, col["border_mean"]] = ndimage.mean(border, labels, ids)
    outline = np.where(find_boundaries(labels, mode="inner"), labels, 0)
    grown = expand_labels(labels, RING_PX)
    ring = np.where(labels == 0, grown, 0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a cell with no ring: NaN -> 0
        X[:, col["border_outline"]] = np.nan_to_num(ndimage.mean(border, outline, ids))
        X[:, col["body_outline"]] = np.nan_to_num(ndimage.mean(body, outline, ids))
        X[:, col["body_ring"]] = np.nan_to_num(ndimage.mean(body, ring, ids))
    # Neighbours: distinct other labels within the ring's reach (dilate each cell by RING_PX
    # and look at which labels its grown ring touches in the original image).
    X[:, col["n_neighbours"]] = _touching_counts(labels, ids)
    if image is not None:
        img = np.asarray(image, np.float32)
        if img.ndim == 3:
            img = img.mean(axis=2)
        scale = float(img.std()) or 1.0
        inside_mean = ndimage.mean(img, labels, ids)
        X[:, col["contrast"]] = np.sqrt(np.maximum(
            ndimage.mean(img * img, labels, ids) - inside_mean ** 2, 0.0)) / scale
        with np.errstate(invalid="ignore", divide="ignore"):
            ring_mean = ndimage.mean(img, ring, ids)
        X[:, col["contrast_ring"]] = np.nan_to_num(np.abs(inside_mean - ring_mean)) / scale
    props = regionprops(labels)
    by_id = {p.label: p for p in props}
    for k, cell_id in enumerate(ids):
        p = by_id[int(cell_id)]
        r0, c0, r1, c1 = p.bbox
        X[k, col["body_p10"]] = float(np.percentile(body[p.slice][p.image], 10))
        X[k, col["solidity"]] = float(p.solidity)
        X[k, col["eccentricity"]] = float(p.eccentricity)
        X[k, col["perim2_area"]] = float(p.perimeter) ** 2 / (4.0 * np.pi * max(p.area, 1))
        X[k, col["extent"]] = float(p.extent)
        X[k, col["edge_dist"]] = float(min(r0, c0, h - r1, w - c1))
    X[:, col[f"type_{cell_type}"]] = 1.0
    return ids, X


def _touching_counts(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """How many other cells lie within RING_PX pixels of each cell (4-neighbour shifts)."""
    pairs: set[tuple[int, int]] = set()
    for d in range(1, RING_PX + 1):
        for a, b in ((labels[d:, :], labels[:-d, :]), (labels[:, d:], labels[:, :-d])):
            m = (a != b) & (a > 0) & (b > 0)
            if m.any():
                u = np.stack([a[m], b[m]], axis=1)
                u = np.unique(np.sort(u, axis=1), axis=0)
                pairs.update(map(tuple, u.tolist()))
    counts = dict.fromkeys(ids.tolist(), 0)
    for i, j in pairs:
        counts[i] = counts.get(i, 0) + 1
        counts[j] = counts.get(j, 0) + 1
    return np.array([counts[int(i)] for i in ids], np.float64)


def match_labels(truth: Any, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training labels: for each decoded cell (sorted ids), 1 if it matches a true cell at
    IoU 0.5 (the metric's one-to-one matching, IoU > 0.5), else 0.

    Uses :func:`cellseg.metrics.error_analysis.error_analysis` (the metric's matching), so
    the rule is exactly the one the score counts. Returns ``(ids, y)``.
    """
    from cellseg.metrics.error_analysis import error_analysis

    rec = error_analysis(truth, labels)
    return np.asarray(rec.pred_ids), rec.pred_matched.astype(np.int64)


def filter_cells(labels: np.ndarray, ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The label image without the cells whose ``keep`` is False (their pixels -> 0)."""
    labels = np.asarray(labels)
    ids = np.asarray(ids)
    drop = ids[~np.asarray(keep, bool)]
    if drop.size == 0:
        return labels.copy()
    return np.where(np.isin(labels, drop), 0, labels).astype(labels.dtype)


# --------------------------------------------------------------------------------------------
# Exact scores of filtered label images
# --------------------------------------------------------------------------------------------


class ScoredImage:
    """One decoded image whose score can be recomputed for any subset of its cells.

    A pair's IoU does not depend on the other predicted cells, so the candidate pairs
    (IoU > 0.5) are found once and each subset is scored by the metric's own matching
    (:func:`cellseg.metrics.score.match_candidates`): the same figure the competition metric
    gives the filtered label image, without decoding or overlapping again.

    Attributes:
        ids: the decoded cells' ids (sorted, as :func:`cell_features`).
        y: 1 where a cell matches a true cell at IoU 0.5 (:func:`match_labels`).
    """

    def __init__(self, truth: Any, labels: np.ndarray) -> None:
        from cellseg.metrics.score import overlap

        ov = overlap(truth, labels)
        self.ids = np.asarray(ov.pred_ids)
        ids_m, self.y = match_labels(truth, labels)
        if not np.array_equal(ids_m, self.ids):
            raise ValueError("ScoredImage: the matcher and the overlap disagree on the cell ids")
        self.n_true = int(ov.inter.shape[0])
        flat = np.flatnonzero(ov.inter)
        pr, pc = np.divmod(flat, max(ov.inter.shape[1], 1))
        inter = ov.inter.ravel()[flat]
        iou = inter / (ov.true_area[pr] + ov.pred_area[pc] - inter)
        keep = iou > 0.5
        self.rows, self.cols, self.iou = pr[keep], pc[keep], iou[keep]

    @property
    def n(self) -> int:
        return int(self.ids.size)

    def score(self, keep: np.ndarray | None = None) -> tuple[float, float]:
        """``(competition score, mean matched IoU at 0.5)`` keeping only the cells where
        ``keep`` (all cells when None)."""
        from cellseg.constants import IOU_THRESHOLDS
        from cellseg.metrics.score import MatchResult, match_candidates

        keep = np.ones(self.n, bool) if keep is None else np.asarray(keep, bool)
        m = keep[self.cols]
        r, c, v = self.rows[m], self.cols[m], self.iou[m]
        n_pred = int(keep.sum())
        tp = []
        mean_iou = float("nan")
        for t in IOU_THRESHOLDS:
            sel = v > t
            rr, cc = match_candidates(r[sel], c[sel], v[sel])
            tp.append(rr.size)
            if t == IOU_THRESHOLDS[0] and rr.size:
                lookup = {(a, b): x for a, b, x in zip(r[sel], c[sel], v[sel])}
                mean_iou = float(np.mean([lookup[(a, b)] for a, b in zip(rr, cc)]))
        tp_arr = np.asarray(tp, np.int64)
        res = MatchResult(np.asarray(IOU_THRESHOLDS, np.float64), tp_arr, n_pred - tp_arr,
                          self.n_true - tp_arr, self.n_true, n_pred)
        return res.score, mean_iou


#: Cut-offs :func:`choose_cutoff` tries (0 = keep every cell).
CUTOFF_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(19))  # 0 .. 0.9


def cutoff_score_table(images: Sequence[tuple[ScoredImage, np.ndarray]],
                       grid: Sequence[float] = CUTOFF_GRID) -> np.ndarray:
    """Score of each image (rows; each given with its cells' confidences) at each cut-off of
    ``grid`` (columns)."""
    return np.array([[im.score(p >= v)[0] for v in grid] for im, p in images],
                    np.float64).reshape(len(images), len(grid))


def best_cutoff(mean_scores: np.ndarray, grid: Sequence[float] = CUTOFF_GRID) -> float:
    """The cut-off of ``grid`` with the best mean score; ties (to 1e-9) go to the least
    filtering, so a filter that does not help is 0 (off)."""
    return float(grid[int(np.argmax(np.round(np.asarray(mean_scores), 9)))])


def choose_cutoff(images: Sequence[tuple[ScoredImage, np.ndarray]],
                  grid: Sequence[float] = CUTOFF_GRID) -> float:
    """The best cut-off of ``grid`` on ``images`` (:func:`best_cutoff` of their mean)."""
    return best_cutoff(cutoff_score_table(images, grid).mean(axis=0), grid)


# --------------------------------------------------------------------------------------------
# Cross-fitting
# --------------------------------------------------------------------------------------------


def cross_fit_groups(groups: Sequence[Any]) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """Cross-fitting splits by group: for each distinct group g, yield ``(g, train_rows,
    test_rows)`` where the test rows are exactly g's rows and no training row belongs to g.

    A group is an image (leave-one-image-out) or a fold (train on fold 0's images, score fold
    1's and vice versa): every image is then scored by a model that never saw it.
    """
    groups = np.asarray(list(groups), dtype=object)
    for g in dict.fromkeys(groups.tolist()):
        test = groups == g
        yield g, np.flatnonzero(~test), np.flatnonzero(test)


def cross_fit_predict(X: np.ndarray, y: np.ndarray, groups: Sequence[Any],
                      random_state: int = 0, **params: Any) -> np.ndarray:
    """Out-of-group probabilities: each row scored by a model fitted on the other groups."""
    out = np.full(len(y), np.nan)
    for _, train, test in cross_fit_groups(groups):
        model = CellConfidence(random_state=random_state, **params).fit(X[train], y[train])
        out[test] = model.predict_proba(X[test])
    return out


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

#: HistGradientBoostingClassifier settings: small trees and strong regularisation (a few
#: thousand cells from a few images).
DEFAULT_PARAMS: dict[str, Any] = {"max_iter": 150, "learning_rate": 0.05, "max_leaf_nodes": 15,
                                  "min_samples_leaf": 20, "l2_regularization": 1.0}


class CellConfidence:
    """Per-cell confidence: P(the decoded cell matches a true cell at IoU 0.5)."""

    def __init__(self, random_state: int = 0, record: Mapping[str, Any] | None = None,
                 **params: Any) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.params = {**DEFAULT_PARAMS, **params}
        self.random_state = int(random_state)
        self.model = HistGradientBoostingClassifier(random_state=self.random_state,
                                                    **self.params)
        self.record: dict[str, Any] = dict(record or {})
        self.fitted = False

    # -- training and scoring ----------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray) -> CellConfidence:
        X = np.asarray(X, np.float64)
        y = np.asarray(y).astype(np.int64)
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"X must be (n_cells, {len(FEATURE_NAMES)}), got {X.shape}")
        if np.unique(y).size < 2:
            raise ValueError("fit: the training cells are all of one class (need matched and "
                             "unmatched cells)")
        with _one_thread():
            self.model.fit(X, y)
        self.fitted = True
        self.record.update(n_cells=len(y), n_positive=int(y.sum()),
                           features=list(FEATURE_NAMES))
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(match) of each row of X (a 1-D array)."""
        if not self.fitted:
            raise ValueError("CellConfidence: not fitted")
        X = np.asarray(X, np.float64)
        if X.shape[0] == 0:
            return np.zeros(0)
        with _one_thread():
            return self.model.predict_proba(X)[:, 1]

    def cell_probabilities(self, labels: np.ndarray, probs: np.ndarray,
                           image: np.ndarray | None, cell_type: str
                           ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, p)``: each decoded cell's confidence."""
        ids, X = cell_features(labels, probs, image, cell_type)
        return ids, self.predict_proba(X)

    def filter(self, labels: np.ndarray, cutoff: float, probs: np.ndarray,
               image: np.ndarray | None, cell_type: str) -> np.ndarray:
        """The label image without the cells whose confidence is below ``cutoff``."""
        ids, p = self.cell_probabilities(labels, probs, image, cell_type)
        return filter_cells(labels, ids, p >= cutoff)

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, **record: Any) -> Path:
        """Write ``<path>.skops`` (the fitted estimator) and ``<path>.json`` (what it was
        trained on, ``record`` added). Returns the model path."""
        import sklearn
        import skops
        import skops.io as sio

        if not self.fitted:
            raise ValueError("CellConfidence.save: not fitted")
        path = Path(path).with_suffix(MODEL_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        sio.dump(self.model, tmp)
        os.replace(tmp, path)
        side = {**self.record, **record,
                "model_file": path.name, "sha256": _sha256(path),
                "random_state": self.random_state, "params": self.params,
                "sklearn": sklearn.__version__, "skops": skops.__version__,
                "features": list(FEATURE_NAMES), "trusted_types": list(TRUSTED_TYPES)}
        self.record = side
        fileio.write_text(path.with_suffix(".json"), json.dumps(side, indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CellConfidence:
        """Load a model written by :meth:`save`, refusing anything else.

        Raises:
            ConfidenceModelError: missing file or record, hash mismatch with the record,
                another feature list, a file that is not a skops archive (e.g. a pickle), or
                one holding a type outside :data:`TRUSTED_TYPES`.
        """
        import skops.io as sio
        from sklearn.ensemble import HistGradientBoostingClassifier

        path = Path(path).with_suffix(MODEL_SUFFIX)
        side_path = path.with_suffix(".json")
        if not path.is_file() or not side_path.is_file():
            raise ConfidenceModelError(f"{path}: confidence model or its record {side_path.name}"
                                       f" not found")
        record = json.loads(side_path.read_text())
        if record.get("sha256") != _sha256(path):
            raise ConfidenceModelError(f"{path}: the file does not match its record "
                                       f"{side_path.name} (sha256 differs)")
        if list(record.get("features", [])) != list(FEATURE_NAMES):
            raise ConfidenceModelError(f"{path}: trained on other features "
                                       f"{record.get('features')}; this code computes "
                                       f"{list(FEATURE_NAMES)}")
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:  # e.g. a pickle
            raise ConfidenceModelError(f"{path}: not a skops model file ({exc})") from None
        unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if unknown:
            raise ConfidenceModelError(f"{path}: refuses to load untrusted type(s) {unknown}")
        try:
            model = sio.load(path, trusted=list(TRUSTED_TYPES))
        except Exception as exc:  # noqa: BLE001 - any failure inside skops: refuse the file
            raise ConfidenceModelError(f"{path}: could not load ({exc})") from None
        if not isinstance(model, HistGradientBoostingClassifier):
            raise ConfidenceModelError(f"{path}: holds a {type(model).__name__}, not a "
                                       f"HistGradientBoostingClassifier")
        import sklearn

        if record.get("sklearn") != sklearn.__version__:
            warnings.warn(f"{path}: saved with scikit-learn {record.get('sklearn')}, loaded "
                          f"with {sklearn.__version__}; refit it if its scores look off",
                          stacklevel=2)
        out = cls(random_state=record.get("random_state", 0), record=record,
                  **record.get("params", {}))
        out.model = model
        out.fitted = True
        return out


def _one_thread() -> Any:
    """One OpenMP thread for fitting / scoring: a few thousand cells fit in ~0.2 s on one
    thread, but took ~40 s with OpenMP's default threads on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ids_hash(image_ids: Iterable[str]) -> str:
    """Short hash of a set of image ids (order-free): which images a model saw."""
    return hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]


__all__ = [
    "CUTOFF_GRID",
    "FEATURE_NAMES",
    "TRUSTED_TYPES",
    "CellConfidence",
    "ConfidenceModelError",
    "ScoredImage",
    "best_cutoff",
    "cell_features",
    "choose_cutoff",
    "cross_fit_groups",
    "cross_fit_predict",
    "cutoff_score_table",
    "filter_cells",
    "ids_hash",
    "match_labels",
]
