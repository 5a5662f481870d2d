"""Whole-image cell-type classifier: which tuned post-processing an image gets.

Why not the network's cell-type head: it is trained on foreground-centred crops and was used
on whole images, where it collapsed (synthetic: one type for every image; real: 13 of 21
held-back images called cort against 10 true). The three types differ mostly in *how many*
cells there are and *how big* they are (shsy5y ~400 small packed cells, cort ~40 small sparse
ones, astro ~90 large irregular ones), which is a property of the whole image, not of a crop.

So the type is decided by a small linear model on whole-image statistics that capture cell
size and density: intensity percentiles, local contrast at five scales (1-16 px), band-pass
(difference-of-Gaussians) energy per scale, gradient magnitude and the radial power spectrum.
It trains in a second on a fold's training images (``train.py`` does it before the network)
and is stored as plain JSON beside the model (``fold<K>/cell_type_classifier.json``): no
pickle, so loading an untrusted experiment runs no code. Inference averages the folds'
probabilities. On the 40 real images its out-of-fold accuracy is reported by
``bench/real_cv.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellseg import fileio
from cellseg.constants import CELL_TYPES
from cellseg.exceptions import CellTypeClassifierError

FEATURES_VERSION = 1
_SCALES = (1, 2, 4, 8, 16)
_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_SPECTRUM_EDGES = np.geomspace(0.005, 0.5, 9)


def image_features(image: np.ndarray) -> np.ndarray:
    """Whole-image statistics that separate the cell types (float64 vector).

    Args:
        image: one grayscale image (H x W, any numeric dtype); it is standardised first, so
            brightness and contrast of the microscope do not matter.
    """
    x = np.asarray(image, np.float32)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2 or min(x.shape) < 8:
        raise ValueError(f"image_features: expected a 2-D image of at least 8x8, got {x.shape}")
    x = (x - x.mean()) / (x.std() + 1e-6)
    feats: list[float] = [float(v) for v in np.percentile(x, _PERCENTILES)]
    prev = x
    for s in _SCALES:
        mean = cv2.GaussianBlur(x, (0, 0), s)
        local_std = np.sqrt(np.maximum(cv2.GaussianBlur(x * x, (0, 0), s) - mean * mean, 0))
        feats += [float(local_std.mean()), float(local_std.std()),
                  float(np.percentile(local_std, 90))]
        feats.append(float(np.abs(prev - mean).mean()))  # band-pass energy at this scale
        prev = mean
    grad = np.hypot(cv2.Sobel(x, cv2.CV_32F, 1, 0), cv2.Sobel(x, cv2.CV_32F, 0, 1))
    feats += [float(grad.mean()), float(grad.std())]
    power = np.abs(np.fft.rfft2(x)) ** 2
    radius = np.hypot(np.fft.fftfreq(x.shape[0])[:, None], np.fft.rfftfreq(x.shape[1])[None])
    total = float(power.sum()) + 1e-12
    for lo, hi in zip(_SPECTRUM_EDGES[:-1], _SPECTRUM_EDGES[1:]):
        feats.append(float(np.log(power[(radius >= lo) & (radius < hi)].sum() / total + 1e-12)))
    return np.asarray(feats, np.float64)


@dataclass
class CellTypeClassifier:
    """Standardise features, then multinomial logistic regression (scikit-learn's fit).

    Attributes:
        classes: the cell types it was trained on (a subset of ``CELL_TYPES``).
        mean, scale: feature standardisation.
        coef, intercept: ``(n_classes, n_features)`` and ``(n_classes,)`` (for two classes,
            scikit-learn's single row is expanded to two so one formula serves every case).
        n_train: training images per class (what the model was made from).
    """

    classes: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_train: dict[str, int]
    feature_version: int = FEATURES_VERSION

    @classmethod
    def fit(cls, features: np.ndarray, cell_types: Sequence[str], c: float = 1.0,
            seed: int = 0) -> "CellTypeClassifier":
        """Train on ``features`` (N x F, from :func:`image_features`) and their true types."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(features, np.float64)
        y = np.asarray(list(cell_types))
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"CellTypeClassifier.fit: {x.shape} features for {len(y)} labels")
        unknown = sorted(set(y) - set(CELL_TYPES))
        if unknown:
            raise ValueError(f"CellTypeClassifier.fit: unknown cell types {unknown}")
        classes = [t for t in CELL_TYPES if t in set(y)]
        n_train = {t: int((y == t).sum()) for t in classes}
        scaler = StandardScaler().fit(x)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        if len(classes) == 1:  # nothing to learn: always that type
            coef = np.zeros((1, x.shape[1]))
            intercept = np.zeros(1)
        else:
            model = LogisticRegression(C=c, max_iter=5000, random_state=seed)
            model.fit((x - scaler.mean_) / scale, y)
            order = [list(model.classes_).index(t) for t in classes]
            coef, intercept = model.coef_, model.intercept_
            if len(classes) == 2:  # binary: one row for the positive class
                coef = np.vstack([-coef, coef]) / 2.0
                intercept = np.concatenate([-intercept, intercept]) / 2.0
            coef, intercept = coef[order], intercept[order]
        return cls(classes, scaler.mean_.copy(), scale, np.asarray(coef, np.float64),
                   np.asarray(intercept, np.float64), n_train)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """``(N, len(CELL_TYPES))`` probabilities in ``CELL_TYPES`` order (0 for an unseen type)."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if x.shape[1] != self.mean.size:
            raise CellTypeClassifierError(f"{x.shape[1]} features given; the classifier "
                                          f"expects {self.mean.size}")
        logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        out = np.zeros((len(x), len(CELL_TYPES)), np.float32)
        for j, t in enumerate(self.classes):
            out[:, CELL_TYPES.index(t)] = p[:, j]
        return out

    def predict_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities for whole images (each any size)."""
        return self.predict_proba(np.stack([image_features(im) for im in images]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cellseg.CellTypeClassifier", "feature_version": self.feature_version,
                "classes": self.classes, "n_train": self.n_train,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (atomically)."""
        fileio.write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CellTypeClassifier":
        """Read a file written by :meth:`save`; errors name the file and what is wrong."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            if raw.get("feature_version") != FEATURES_VERSION:
                raise CellTypeClassifierError(
                    f"feature version {raw.get('feature_version')!r}, this code computes "
                    f"version {FEATURES_VERSION}; retrain the fold")
            clf = cls(classes=[str(t) for t in raw["classes"]],
                      mean=np.asarray(raw["mean"], np.float64),
                      scale=np.asarray(raw["scale"], np.float64),
                      coef=np.asarray(raw["coef"], np.float64),
                      intercept=np.asarray(raw["intercept"], np.float64),
                      n_train={str(k): int(v) for k, v in raw["n_train"].items()})
        except CellTypeClassifierError as exc:
            raise CellTypeClassifierError(f"{path}: {exc}") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CellTypeClassifierError(f"{path}: not a cell-type classifier file "
                                          f"({type(exc).__name__}: {exc})") from None
        n_f, n_c = clf.mean.size, len(clf.classes)
        bad = [t for t in clf.classes if t not in CELL_TYPES]
        if bad or clf.scale.size != n_f or clf.coef.shape != (n_c, n_f) \
                or clf.intercept.shape != (n_c,):
            raise CellTypeClassifierError(f"{path}: inconsistent shapes or unknown types {bad}")
        return clf


def ensemble_proba(classifiers: Sequence[CellTypeClassifier],
                   images: Sequence[np.ndarray]) -> np.ndarray:
    """Mean probability over classifiers (e.g. one per fold), features computed once."""
    if not classifiers:
        raise ValueError("ensemble_proba: no classifiers")
    feats = np.stack([image_features(im) for im in images])
    return np.mean([c.predict_proba(feats) for c in classifiers], axis=0).astype(np.float32)


__all__ = [
    "CellTypeClassifier",
    "CellTypeClassifierError",
    "ensemble_proba",
    "image_features",
]
