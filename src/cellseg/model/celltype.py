"""Whole-image cell-type classifier: which tuned post-processing an image gets.

Why not the network's cell-type head: it is trained on foreground-centred crops and was used
on whole images, where it collapsed (synthetic: one type for every image; real: 13 of 21
held-back images called cort against 10 true). The three types differ mostly in *how many*
cells there are and *how big* they are (shsy5y ~400 small packed cells, cort ~40 small sparse
ones, astro ~90 large irregular ones), which is a property of the whole image, not of a crop.

So the type is decided by a small linear model on whole-image statistics that measure cell
size and density directly (:func:`image_features`, version 2: band-pass energy shares from 1.5
to 24 px, Laplacian-of-Gaussian blob densities, foreground fraction and connected-component
sizes of a thresholded local-contrast map). Every feature is a ratio, share or count, so a
global brightness / contrast change leaves it unchanged, and counts are per pixel, so a crop
keeps them. It is fitted on the fold's training images *and* randomly degraded copies of them
(:func:`augment_image`: gamma, contrast, brightness, blur, noise, small zoom, crop, uneven
illumination; :meth:`CellTypeClassifier.fit_images`): fitted on clean images only, the old
classifier was 40/40 out of fold on the real images but fell to 23-30 % under a blur of 2 px,
vignetting or shot noise, and called 2 of 6 shsy5y images of another set astro
(``bench/results/celltype_stress.md``). It trains in seconds (``train.py`` does it before the
network) and is stored as plain JSON beside the model (``fold<K>/cell_type_classifier.json``):
no pickle, so loading an untrusted experiment runs no code. Inference averages the folds'
probabilities; :func:`choose_cell_type` turns them into a routing decision (the most probable
type, or the best expected score when the classifier is unsure and a routing-score matrix is
known).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellseg import fileio
from cellseg.constants import CELL_TYPES
from cellseg.exceptions import CellTypeClassifierError

FEATURES_VERSION = 2
_PRE_SIGMA = 1.0  # denoising before everything: the finest scale that matters is ~2 px
_DOG_SIGMAS = (1.5, 2.4, 3.8, 6.0, 9.5, 15.0, 24.0)  # band edges of the size spectrum
_LOG_SIGMAS = (2.5, 4.0, 6.5, 10.0)  # blob counts (radius ~ sigma * sqrt(2))
_CC_SIGMAS = (2.0, 4.0)  # local-contrast maps that are thresholded into cell regions
_PER = 1e5  # counts per 100,000 pixels: a crop keeps its density
DEFAULT_AUGMENT = 8  # augmented copies per training image (CellTypeClassifier.fit_images)


def _feature_names() -> list[str]:
    names = [f"dog_share_{a}-{b}" for a, b in pairwise(_DOG_SIGMAS)]
    names.append("dog_peak_log_sigma")
    names += [f"log_blobs_per_1e5px_s{s}" for s in _LOG_SIGMAS]
    for s in _CC_SIGMAS:
        names += [f"lc{s}_foreground_fraction", f"lc{s}_log_p90_over_p10",
                  f"lc{s}_log_p50_over_p10", f"lc{s}_log_components_per_1e5px",
                  f"lc{s}_log_median_area", f"lc{s}_log_p90_area",
                  f"lc{s}_log_weighted_area", f"lc{s}_largest_fraction"]
    return names


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of a 1-D sample (float, no 8-bit rounding)."""
    hist, edges = np.histogram(values, bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def image_features(image: np.ndarray) -> np.ndarray:
    """Whole-image statistics of cell size and density (float64 vector, :data:`FEATURE_NAMES`).

    Every feature is a ratio, a share or a count, so it is unchanged by any global brightness
    offset and contrast gain (exactly, up to float rounding); intensity percentiles and other
    raw-level statistics, which depend on the microscope, are not used. The image is smoothed
    by sigma 1 px first, so pixel noise weighs little. Counts are per 100,000 pixels, so a crop
    of the image keeps them.

    - size spectrum: share of the band-pass (difference-of-Gaussians) energy in 6 bands from
      1.5 to 24 px, and the energy-weighted mean log scale (where the structures are);
    - blob density: local maxima of the scale-normalised Laplacian of Gaussian at 4 scales
      that stand out 4x above its median magnitude;
    - cell regions: the local-contrast map (local standard deviation at 2 and 4 px) is split
      by Otsu's threshold of its log; foreground fraction, contrast spread (p90 / p10,
      p50 / p10), and connected-component count, median / p90 / area-weighted size, and
      the largest component's share of the foreground.

    Left out on purpose (``bench/celltype_stress.py``): the version-1 features' raw intensity
    percentiles and gradient level, and the radial power spectrum, whose high-frequency
    bands follow the camera's noise (with them, strong shot noise turned shsy5y into astro).

    Args:
        image: one grayscale image (H x W, any numeric dtype, at least 8 x 8).
    """
    x = np.asarray(image, np.float32)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2 or min(x.shape) < 8:
        raise ValueError(f"image_features: expected a 2-D image of at least 8x8, got {x.shape}")
    x = (x - x.mean()) / (x.std() + 1e-6)
    area = float(x.size)
    xs = cv2.GaussianBlur(x, (0, 0), _PRE_SIGMA)
    feats: list[float] = []
    # size spectrum
    blurred = [cv2.GaussianBlur(xs, (0, 0), s) for s in _DOG_SIGMAS]
    bands = np.array([np.abs(a - b).mean() for a, b in pairwise(blurred)])
    shares = bands / (bands.sum() + 1e-12)
    feats += [float(np.log(v + 1e-6)) for v in shares]
    mids = np.log(np.sqrt(np.array(_DOG_SIGMAS[:-1]) * np.array(_DOG_SIGMAS[1:])))
    feats.append(float((shares * mids).sum()))
    # blob density
    for s in _LOG_SIGMAS:
        resp = np.abs(cv2.Laplacian(cv2.GaussianBlur(xs, (0, 0), s), cv2.CV_32F)) * s * s
        k = 2 * round(s) + 1
        peaks = (resp >= cv2.dilate(resp, np.ones((k, k), np.uint8))) & \
            (resp > 4.0 * (float(np.median(resp)) + 1e-9))
        feats.append(float(np.log1p(peaks.sum() * _PER / area)))
    # cell regions from local contrast
    for s in _CC_SIGMAS:
        mean = cv2.GaussianBlur(xs, (0, 0), s)
        lc = np.sqrt(np.maximum(cv2.GaussianBlur(xs * xs, (0, 0), s) - mean * mean, 0)) + 1e-6
        log_lc = np.log(lc)
        p10, p50, p90 = np.percentile(log_lc, (10, 50, 90))
        fg = log_lc > _otsu(log_lc.ravel()[::4])
        _, _, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
        areas = areas[areas >= 4]
        total = max(float(areas.sum()), 1.0)
        if areas.size == 0:
            areas = np.ones(1)
        feats += [float(fg.mean()), float(p90 - p10), float(p50 - p10),
                  float(np.log1p(areas.size * _PER / area)),
                  float(np.log(np.median(areas))), float(np.log(np.percentile(areas, 90))),
                  float(np.log((areas * areas).sum() / total)), float(areas.max() / total)]
    return np.asarray(feats, np.float64)


FEATURE_NAMES: tuple[str, ...] = tuple(_feature_names())


# Version 1 (2026-12-01 .. 12-05)
_V1_SCALES = (1, 2, 4, 8, 16)
_V1_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_V1_SPECTRUM_EDGES = np.geomspace(0.005, 0.5, 9)


def image_features_v1(image: np.ndarray) -> np.ndarray:
    """Version 1 of :func:`image_features` (intensity percentiles, local contrast, band-pass
    energy, gradient, radial power spectrum), kept so that classifiers of experiments trained
    before version 2 still load and route as they did.

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
    feats: list[float] = [float(v) for v in np.percentile(x, _V1_PERCENTILES)]
    prev = x
    for s in _V1_SCALES:
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
    for lo, hi in zip(_V1_SPECTRUM_EDGES[:-1], _V1_SPECTRUM_EDGES[1:]):
        feats.append(float(np.log(power[(radius >= lo) & (radius < hi)].sum() / total + 1e-12)))
    return np.asarray(feats, np.float64)


#: Feature function of each version a classifier file may hold.
FEATURE_FUNCTIONS: dict[int, Any] = {1: image_features_v1, 2: image_features}


def augment_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One randomly degraded copy of an image (uint8), for training the classifier to ignore
    what differs between microscopes and sessions: gamma, contrast, brightness, focus,
    noise, a small zoom, a crop, uneven illumination. Each is drawn independently (most with
    probability 1/2) from moderate ranges."""
    x = np.asarray(image, np.float32)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    h, w = x.shape
    top = max(float(x.max()), 1.0)
    if rng.random() < 0.5:
        x = top * (np.clip(x, 0, None) / top) ** float(np.exp(rng.uniform(-0.35, 0.35)))
    if rng.random() < 0.5:
        m = float(x.mean())
        x = (x - m) * float(np.exp(rng.uniform(-0.5, 0.35))) + m + float(rng.uniform(-30, 30))
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if rng.random() < 0.5:
            r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
            x = x * (1 - float(rng.uniform(0, 0.35)) * r2 / 2)
        else:
            a = float(rng.uniform(0, 2 * np.pi))
            ramp = (np.cos(a) * (xx / w - 0.5) + np.sin(a) * (yy / h - 0.5))
            x = x * (1 + float(rng.uniform(0, 0.5)) * ramp)
    if rng.random() < 0.4:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.5, 1.6)))
    if rng.random() < 0.4:
        x = x + rng.normal(0, float(rng.uniform(2, 9)), x.shape).astype(np.float32)
    if rng.random() < 0.3:
        f = float(np.exp(rng.uniform(-0.12, 0.12)))
        x = cv2.resize(x, (max(8, round(w * f)), max(8, round(h * f))),
                       interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.4:
        hh, ww = x.shape
        f = float(np.sqrt(rng.uniform(0.35, 0.9)))
        ch, cw = max(8, int(hh * f)), max(8, int(ww * f))
        y0, x0 = int(rng.integers(0, hh - ch + 1)), int(rng.integers(0, ww - cw + 1))
        x = x[y0:y0 + ch, x0:x0 + cw]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def training_features(images: Sequence[np.ndarray], cell_types: Sequence[str],
                      n_augment: int = 0, seed: int = 0, n_threads: int = 1
                      ) -> tuple[np.ndarray, list[str]]:
    """Features of ``images`` and of ``n_augment`` :func:`augment_image` copies of each
    (seeded: the same call gives the same rows, whatever ``n_threads``), with their types
    repeated.

    The copies are drawn in one thread, in order, from one generator; only the features,
    the slow part (OpenCV and SciPy release the GIL), run on ``n_threads`` threads, a few
    images at a time so that memory stays flat: 606 images x 9 copies took ~7 min serially.
    """
    if len(images) != len(cell_types):
        raise ValueError(f"training_features: {len(images)} images for {len(cell_types)} types")
    rng = np.random.default_rng(seed)
    n_threads = max(1, int(n_threads))
    block = 4 * n_threads
    feats: list[np.ndarray] = []
    types: list[str] = []
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for start in range(0, len(images), block):
            copies = []
            for image, t in zip(images[start:start + block], cell_types[start:start + block]):
                copies.append(image)
                copies += [augment_image(image, rng) for _ in range(n_augment)]
                types += [str(t)] * (1 + n_augment)
            feats += list(pool.map(image_features, copies))
    return np.stack(feats), types


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

    @classmethod
    def fit_images(cls, images: Sequence[np.ndarray], cell_types: Sequence[str],
                   n_augment: int = DEFAULT_AUGMENT, c: float = 1.0, seed: int = 0,
                   n_threads: int = 1) -> CellTypeClassifier:
        """Train on whole images and ``n_augment`` :func:`augment_image` copies of each.

        Why the copies: fitted on clean images only, the classifier was 40/40 out of fold
        but lost most images to a blur, uneven illumination or noise that real microscopes
        produce (``bench/results/celltype_stress.md``); the copies teach it to ignore those.
        """
        feats, types = training_features(images, cell_types, n_augment, seed, n_threads)
        clf = cls.fit(feats, types, c=c, seed=seed)
        clf.n_train = {t: int(sum(str(u) == t for u in cell_types)) for t in clf.classes}
        return clf

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
        """Probabilities for whole images (each any size), with the features of this
        classifier's version."""
        features = FEATURE_FUNCTIONS[self.feature_version]
        return self.predict_proba(np.stack([features(im) for im in images]))

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
            if raw.get("feature_version") not in FEATURE_FUNCTIONS:
                raise CellTypeClassifierError(
                    f"feature version {raw.get('feature_version')!r}, this code computes "
                    f"versions {sorted(FEATURE_FUNCTIONS)}; retrain the fold")
            clf = cls(classes=[str(t) for t in raw["classes"]],
                      mean=np.asarray(raw["mean"], np.float64),
                      scale=np.asarray(raw["scale"], np.float64),
                      coef=np.asarray(raw["coef"], np.float64),
                      intercept=np.asarray(raw["intercept"], np.float64),
                      n_train={str(k): int(v) for k, v in raw["n_train"].items()},
                      feature_version=int(raw["feature_version"]))
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
    """Mean probability over classifiers (e.g. one per fold), features computed once per
    feature version."""
    if not classifiers:
        raise ValueError("ensemble_proba: no classifiers")
    feats = {v: np.stack([FEATURE_FUNCTIONS[v](im) for im in images])
             for v in sorted({c.feature_version for c in classifiers})}
    return np.mean([c.predict_proba(feats[c.feature_version]) for c in classifiers],
                   axis=0).astype(np.float32)


@dataclass(frozen=True)
class CellTypeChoice:
    """The type whose tuned post-processing an image gets, and why."""

    cell_type: str
    reason: str
    confident: bool


def choose_cell_type(probs: Sequence[float] | np.ndarray, threshold: float = 0.6,
                     routing_scores: dict[str, dict[str, float]] | None = None
                     ) -> CellTypeChoice:
    """Pick the type to route an image to from its classifier probabilities.

    Rule: if the top probability is at least ``threshold`` (or no ``routing_scores`` are
    given), the most probable type. Otherwise the type with the highest *expected score*
    ``sum_t p(t) * routing_scores[t][r]`` over the types ``t`` the image may truly be: the
    decision that loses least when the classifier is unsure (e.g. astro's parameters cost a
    shsy5y or cort image far more than cort's cost an astro image).

    Args:
        probs: probabilities in ``CELL_TYPES`` order (one image).
        threshold: below this top probability, the image counts as uncertain; ``> 1``
            always uses the expected score.
        routing_scores: ``[true type][routed type]`` -> mean score of images of the true
            type decoded with the routed type's parameters (measured out of fold, e.g. by
            ``bench/celltype_stress.py``); types missing from it are never chosen by it.
    """
    p = np.asarray(probs, np.float64).ravel()
    if p.size != len(CELL_TYPES) or not np.all(np.isfinite(p)) or p.sum() <= 0:
        raise ValueError(f"choose_cell_type: expected {len(CELL_TYPES)} finite probabilities, "
                         f"got {p.tolist()}")
    p = p / p.sum()
    top = int(np.argmax(p))
    if p[top] >= threshold or not routing_scores:
        return CellTypeChoice(CELL_TYPES[top], f"most probable ({p[top]:.2f})",
                              bool(p[top] >= threshold))
    routed = [r for r in CELL_TYPES if all(r in routing_scores.get(t, {}) for t in CELL_TYPES)]
    if not routed:
        return CellTypeChoice(CELL_TYPES[top], f"most probable ({p[top]:.2f}); routing scores "
                              f"incomplete", False)
    expected = {r: float(sum(p[j] * routing_scores[t][r] for j, t in enumerate(CELL_TYPES)))
                for r in routed}
    best = max(routed, key=lambda r: expected[r])
    return CellTypeChoice(best, f"uncertain (top {CELL_TYPES[top]} {p[top]:.2f} < "
                          f"{threshold:g}): highest expected score {expected[best]:.3f}", False)


__all__ = [
    "FEATURE_FUNCTIONS",
    "FEATURE_NAMES",
    "CellTypeChoice",
    "CellTypeClassifier",
    "CellTypeClassifierError",
    "augment_image",
    "choose_cell_type",
    "ensemble_proba",
    "image_features",
    "image_features_v1",
    "training_features",
]
