"""The per-cell confidence filter, fitted by ``tune.py`` after the decoder (issue 22 item 4).

Why here: the filter is the last post-processing step, and its training data are the same OOF
images the decoder was tuned on, decoded with the parameters just chosen. Steps:

1. decode every OOF image with its type's tuned parameters; compute each cell's features and
   whether it matches a true cell at IoU 0.5
   (:func:`cellseg.postprocess.confidence.cell_features`, ``match_labels``);
2. **cross-fit**: every image's cells are scored by a model fitted without that image (leave
   one image out up to :data:`MAX_IMAGE_GROUPS` images, else leave one OOF fold out), so the
   cut-off is chosen on confidences no model saw the labels of;
3. per type, the cut-off of ``CUTOFF_GRID`` with the best mean OOF score (ties -> 0, i.e. no
   filter when it does not help); a held-out estimate (each image's cut-off chosen on the
   other images of its type) is logged beside it;
4. one final model fitted on every OOF cell, saved as ``confidence.skops`` + ``.json`` beside
   ``postprocess.yaml`` (skops: loading runs no pickled code).

Measured on the 40 real images out of fold (bench/results/confidence_cv_5fold*.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellseg.data.data_root import TrainData
from cellseg.postprocess.confidence import (
    CUTOFF_GRID,
    CellConfidence,
    ScoredImage,
    best_cutoff,
    cell_features,
    cross_fit_groups,
    cutoff_score_table,
    ids_hash,
)
from cellseg.postprocess.decode import decode_with_params
from cellseg.train import oof
from cellseg.tune.eval_sets import EvalSet

#: Up to this many OOF images, cross-fit by image (leave one out); above it, by OOF fold (a
#: few fits instead of hundreds on the full competition data).
MAX_IMAGE_GROUPS = 100


@dataclass
class TypeFilter:
    """One cell type's filter: the chosen cut-off and what it did on the OOF images."""

    cell_type: str
    cutoff: float
    n_images: int
    n_cells: int
    baseline: float      # mean OOF score without the filter (the tuned decoder)
    filtered: float      # with ``cutoff`` (chosen on these images: in-sample)
    held_out: float      # each image's cut-off chosen on the other images of its type
    dropped: int         # cells the cut-off removes


@dataclass
class ConfidenceFit:
    """What :func:`fit_confidence_filter` made."""

    model: CellConfidence
    types: dict[str, TypeFilter] = field(default_factory=dict)
    grouping: str = "image"
    n_fits: int = 0
    digest: str = ""  # of the training cells: names the model file, so a re-tune never
    #                   overwrites the model an earlier postprocess.yaml points to

    def table(self) -> str:
        """A short table for the end of ``tune.py``'s output."""
        head = (f"{'cell type':<10} {'cut-off':>8} {'no filter':>10} {'filtered':>10} "
                f"{'held-out':>10} {'dropped':>8}")
        lines = [head, "-" * len(head)]
        for f in self.types.values():
            lines.append(f"{f.cell_type:<10} {f.cutoff:>8.2f} {f.baseline:>10.4f} "
                         f"{f.filtered:>10.4f} {f.held_out:>10.4f} {f.dropped:>5d}/{f.n_cells}")
        lines.append(f"per-cell confidence cross-fitted by {self.grouping} ({self.n_fits} fits); "
                     f"'filtered' chose the cut-off on the same images, 'held-out' on the "
                     f"other images of the type")
        return "\n".join(lines)


def fit_confidence_filter(
    sets: Mapping[str, EvalSet],
    data: TrainData,
    params: Mapping[str, Mapping[str, Any]],
    seed: int = 0,
    record: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> ConfidenceFit | None:
    """Cross-fit the confidence model on the OOF cells and choose a cut-off per type.

    Args:
        sets: the deep eval sets the decoder was tuned on (cell type -> OOF maps + truth).
        data: the training data root (the raw images, for the contrast features).
        params: cell type -> the tuned decoding knobs.
        seed: the classifier's ``random_state``.
        record: what the model was made from, stored in its ``.json`` record.
        log: progress messages (None = quiet).

    Returns:
        The fit, or None when the OOF cells are all matched or all unmatched (nothing to
        learn: no filter).
    """
    images: list[tuple[str, str, int, ScoredImage, np.ndarray]] = []
    for cell_type, es in sets.items():
        for i, image_id in enumerate(es.ids):
            probs = oof.dequantize(es.inputs[i])
            labels = decode_with_params(probs, params[cell_type])
            _, X = cell_features(labels, probs, data.load_image(image_id), cell_type)
            images.append((image_id, cell_type, es.folds[i], ScoredImage(es.truths[i], labels),
                           X))
    X = np.concatenate([x for *_, x in images])
    y = np.concatenate([s.y for *_, s, _ in images])
    if np.unique(y).size < 2:
        if log:
            log("per-cell confidence: every OOF cell is "
                f"{'matched' if y.size and y[0] else 'unmatched'}: no filter")
        return None
    by_image = len(images) <= MAX_IMAGE_GROUPS or len({f for _, _, f, _, _ in images}) < 2
    keys = [image_id if by_image else fold for image_id, _, fold, _, _ in images]
    groups = np.concatenate([[k] * s.n for k, (_, _, _, s, _) in zip(keys, images)])
    p = np.full(len(y), np.nan)
    n_fits = 0
    for _, train, test in cross_fit_groups(groups):
        if np.unique(y[train]).size < 2:  # this group's complement is one class: no score
            p[test] = 1.0
            continue
        p[test] = CellConfidence(random_state=seed).fit(X[train], y[train]).predict_proba(
            X[test])
        n_fits += 1
    bounds = np.cumsum([0] + [s.n for *_, s, _ in images])
    scored = [(s, p[a:b]) for (*_, s, _), a, b in zip(images, bounds[:-1], bounds[1:])]

    model = CellConfidence(random_state=seed, record=dict(record or {})).fit(X, y)
    model.record.update(image_ids_hash=ids_hash([i for i, *_ in images]),
                        n_images=len(images), cross_fit=("leave one image out" if by_image
                                                         else "leave one OOF fold out"))
    digest = hashlib.sha1(np.ascontiguousarray(X).tobytes() + y.tobytes()
                          + repr(sorted(model.params.items())).encode()).hexdigest()[:12]
    fit = ConfidenceFit(model=model, grouping="image" if by_image else "OOF fold",
                        n_fits=n_fits + 1, digest=digest)
    for cell_type in sets:
        own = [scored[k] for k, im in enumerate(images) if im[1] == cell_type]
        table = cutoff_score_table(own)  # images x CUTOFF_GRID
        m = len(own)
        cut = best_cutoff(table.mean(axis=0))
        k_cut = CUTOFF_GRID.index(cut)
        # Held out: each image's cut-off is the best on the other images of its type.
        held = [table[k, CUTOFF_GRID.index(best_cutoff((table.sum(axis=0) - table[k])
                                                        / (m - 1)))] if m > 1 else table[k, 0]
                for k in range(m)]
        fit.types[cell_type] = TypeFilter(
            cell_type=cell_type, cutoff=cut, n_images=m,
            n_cells=int(sum(s.n for s, _ in own)),
            baseline=float(table[:, 0].mean()), filtered=float(table[:, k_cut].mean()),
            held_out=float(np.mean(held)),
            dropped=int(sum((q < cut).sum() for _, q in own)))
    model.record["cutoffs"] = {t: f.cutoff for t, f in fit.types.items()}
    return fit


__all__ = ["CUTOFF_GRID", "MAX_IMAGE_GROUPS", "ConfidenceFit", "TypeFilter",
           "fit_confidence_filter"]
