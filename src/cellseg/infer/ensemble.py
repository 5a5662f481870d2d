"""A trained experiment as one predictor: fold models x TTA -> maps -> cell type -> instances.

Why one class: ``infer.py`` (competition test folder), ``segment.py`` (any images) and
``pseudo_label.py`` (unlabelled images) all need the same steps with the same choices (which
folds, heads, TTA, the whole-image cell-type classifiers, the tuned per-type post-processing).
Loading them once here keeps those choices in one place and the commands thin.

Usage::

    ens = FoldEnsemble.load(cfg, exp_dir)             # folds/heads/TTA from cfg.infer
    probs, type_probs = ens.predict([img1, img2])     # images of one shape, as read
    kind = ens.cell_type(type_probs[0])               # override or argmax
    labels = ens.decode(probs[0], kind, img1)         # that type's tuned parameters, then
                                                      # its confidence cut-off
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cellseg.config import Config
from cellseg.constants import CELL_TYPES
from cellseg.exceptions import CellTypeClassifierError, InferenceError
from cellseg.experiment import CLASSIFIER_FILE, find_fold_models
from cellseg.model.celltype import CellTypeClassifier, choose_cell_type, ensemble_proba
from cellseg.readout import check_tta, parse_heads


def load_classifiers(model_files: Sequence[tuple[int, Path]]) -> list[CellTypeClassifier]:
    """The whole-image cell-type classifiers beside the fold models; empty when any fold
    lacks one (an experiment trained before they existed falls back to the network head)."""
    paths = [p.parent / CLASSIFIER_FILE for _, p in model_files]
    if not all(p.is_file() for p in paths):
        return []
    try:
        return [CellTypeClassifier.load(p) for p in paths]
    except CellTypeClassifierError as exc:
        raise InferenceError(str(exc)) from None


def check_heads(heads: str) -> None:
    """Raise InferenceError unless ``heads`` is ``mean``, ``last`` or ``prune=L``."""
    try:
        parse_heads(heads)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None


@dataclass
class FoldEnsemble:
    """Loaded fold models of one experiment with how to run them (see module doc)."""

    models: list[Any]
    model_files: list[tuple[int, Path]]
    classifiers: list[CellTypeClassifier]
    params: dict[str, dict[str, Any]]
    heads: str = "mean"
    tta: list[str] = field(default_factory=lambda: ["identity"])
    batch_size: int = 2
    cell_type_override: str | None = None
    model_load_s: float = 0.0
    #: per-cell confidence model (cellseg.postprocess.confidence.CellConfidence) or None
    confidence: Any = None
    #: cell type -> confidence cut-off (0 or absent = keep every decoded cell)
    cutoffs: dict[str, float] = field(default_factory=dict)
    #: postprocess.yaml's routing_scores: how an uncertain image's type is chosen
    routing: dict[str, dict[str, float]] | None = None

    @property
    def folds(self) -> list[int]:
        return [k for k, _ in self.model_files]

    @property
    def cell_type_source(self) -> str:
        if self.cell_type_override is not None:
            return "override"
        return "whole-image classifier" if self.classifiers else "network head"

    @classmethod
    def load(
        cls,
        cfg: Config,
        exp_dir: str | os.PathLike,
        folds: Sequence[int] | None = None,
        heads: str | None = None,
        tta: Sequence[str] | None = None,
        cell_type: str | None = None,
        warn_untuned: bool = True,
    ) -> FoldEnsemble:
        """Check the options and files cheaply, then load the models (TensorFlow).

        Args:
            cfg: resolved config (:func:`cellseg.experiment.resolve_config`); ``infer.*`` gives
                the defaults of ``folds``, ``heads``, ``tta`` and the batch size.
            exp_dir: ``output/<exp>`` with ``fold<K>/best.keras``.
            folds: folds to ensemble; None = ``cfg.infer.folds`` or every trained fold.
            heads: ``mean`` | ``last`` | ``prune=L``; None = ``cfg.infer.heads``.
            tta: TTA variants; None = ``cfg.infer.tta``.
            cell_type: force this type (and its parameters) for every image.
            warn_untuned: warn when ``postprocess.yaml`` is missing.

        Raises:
            InferenceError: bad options, no model, a damaged model or classifier, models
                without a cell-type head and no override.
        """
        from cellseg.postprocess.tuned import TunedPostprocess, check_tuned_on, params_by_type

        heads = cfg.infer.heads if heads is None else heads
        tta = list(cfg.infer.tta if tta is None else tta)
        folds = list(cfg.infer.folds if folds is None else folds) or None
        check_heads(heads)
        if cell_type is not None and cell_type not in CELL_TYPES:
            raise InferenceError(f"cell type {cell_type!r} unknown; expected one of {CELL_TYPES}")
        model_files = find_fold_models(exp_dir, folds)
        classifiers = load_classifiers(model_files)
        tuned = TunedPostprocess.find(exp_dir)  # read once: every use below sees one file
        params = params_by_type(exp_dir, cfg, warn=warn_untuned, tuned=tuned)
        confidence, cutoffs = (load_confidence_filter(tuned, exp_dir) if cfg.infer.confidence
                               else (None, {}))
        routing = tuned.routing_scores if tuned is not None else None

        try:
            tta = check_tta(tta)
        except ValueError as exc:
            raise InferenceError(str(exc)) from None

        from cellseg.model.network import CELL_TYPE_OUTPUT, output_names  # TensorFlow from here on

        check_tuned_on(exp_dir, heads, tta, list(model_files), tuned=tuned)
        t0 = time.perf_counter()
        from cellseg.model.predict import load_models

        models = load_models([p for _, p in model_files])
        load_s = time.perf_counter() - t0
        with_head = [m for m in models if CELL_TYPE_OUTPUT in output_names(m)]
        if cell_type is None and not with_head and not classifiers:
            raise InferenceError(
                f"the models of {exp_dir} have no cell-type head (trained with "
                f"model.cell_type_head: false), so the post-processing parameters cannot be "
                f"chosen per image: pass --cell-type, one of {CELL_TYPES}"
            )
        if with_head:
            n_types = int(with_head[0].get_layer(CELL_TYPE_OUTPUT).units)
            if n_types != len(CELL_TYPES):
                raise InferenceError(f"the cell-type head has {n_types} classes; expected "
                                     f"{len(CELL_TYPES)} ({CELL_TYPES})")
        return cls(models=models, model_files=list(model_files), classifiers=classifiers,
                   params=params, heads=heads, tta=tta,
                   batch_size=max(int(cfg.infer.batch_size), 1),
                   cell_type_override=cell_type, model_load_s=load_s,
                   confidence=confidence, cutoffs=cutoffs, routing=routing)

    def predict(self, raw_images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probability maps ``(N, H, W, C)`` float32 and cell-type probabilities ``(N, 3)``.

        ``raw_images`` are H x W images of one shape as read (any numeric dtype); each is
        standardised here. The type probabilities come from the whole-image classifiers when
        the experiment has them, else from the network head (``(N, 0)`` without either).
        """
        from cellseg.model.predict import normalize_image

        batch = np.stack([normalize_image(r) for r in raw_images])
        probs, type_probs = self.predict_normalized(batch)
        if self.classifiers:
            type_probs = ensemble_proba(self.classifiers, list(raw_images))
        return probs, type_probs

    def predict_normalized(self, batch: np.ndarray, batch_size: int | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """The fold models x TTA with this ensemble's heads on already standardised images
        ``(N, H, W)``: ``(probs (N, H, W, C), network-head type probs (N, 3 or 0))``. For
        callers that standardise with other statistics (tiles of a large image use the whole
        image's mean and std)."""
        from cellseg.model.predict import predict_images

        return predict_images(self.models, batch, heads=self.heads, tta=self.tta,
                              batch_size=batch_size or self.batch_size)

    def cell_type(self, type_probs: np.ndarray) -> str:
        """The override, else :func:`~cellseg.model.celltype.choose_cell_type`: the most
        probable type, or, when its probability is below 0.6 and the tuning measured what each
        wrong type costs (``routing_scores``), the type with the best expected score."""
        if self.cell_type_override is not None:
            return self.cell_type_override
        return choose_cell_type(type_probs, routing_scores=self.routing).cell_type

    def decode(self, probs: np.ndarray, cell_type: str, image: np.ndarray) -> np.ndarray:
        """One image's instance labels (H x W int32): ``cell_type``'s tuned parameters, then
        its confidence cut-off (:meth:`decode_scored`)."""
        return self.decode_scored(probs, cell_type, image)[0]

    def decode_scored(self, probs: np.ndarray, cell_type: str, image: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, confidence)``: the decoded cells that pass the type's cut-off,
        numbered 1..n, and each one's confidence (``confidence[i - 1]`` for cell ``i``).

        The confidence is the tuned model's probability that the cell matches a true cell at
        IoU 0.5 when the experiment has one, else the cell's mean body probability.
        ``image`` is the grayscale image the maps were made from (same H x W, as read).
        """
        from cellseg.postprocess.confidence import filter_cells
        from cellseg.postprocess.decode import decode_with_params

        labels = decode_with_params(probs, self.params[cell_type])
        if self.confidence is not None:
            ids, p = self.confidence.cell_probabilities(labels, probs, image, cell_type)
            cut = self.cutoffs.get(cell_type, 0.0)
            if cut > 0:
                keep = p >= cut
                labels, ids, p = filter_cells(labels, ids, keep), ids[keep], p[keep]
        else:
            ids = np.unique(labels)
            ids = ids[ids > 0]
            body = np.asarray(probs)[..., 0] if np.ndim(probs) == 3 else np.asarray(probs)
            p = (np.asarray(ndimage.mean(body, labels, ids), np.float64) if ids.size
                 else np.zeros(0))
        lut = np.zeros(int(labels.max()) + 1, np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        return lut[labels], np.asarray(p, np.float32)


def load_confidence_filter(tuned: Any, exp_dir: str | os.PathLike
                           ) -> tuple[Any, dict[str, float]]:
    """The per-cell confidence model and cut-offs that ``tuned`` (the experiment's
    :class:`~cellseg.postprocess.tuned.TunedPostprocess`, or None) names, or ``(None, {})``
    without one; a named model that is missing or unsafe is an InferenceError."""
    from cellseg.postprocess.confidence import ConfidenceModelError

    if tuned is None:
        return None, {}
    try:
        model = tuned.load_confidence(exp_dir)
    except ConfidenceModelError as exc:
        raise InferenceError(f"{exc}; re-run `python src/tune.py --exp {Path(exp_dir).name}` "
                             f"or pass --set infer.confidence=false") from None
    return model, (tuned.cutoffs() if model is not None else {})


__all__ = ["FoldEnsemble", "load_confidence_filter"]
