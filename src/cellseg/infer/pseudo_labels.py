"""Pseudo-labels: a trained experiment labels unlabelled images, keeping the cells it is sure of.

Why: the competition ships ~1,500 unlabelled images (``train_semi_supervised/``) against 606
labelled ones; top entries trained on the network's own confident predictions of them. This
module runs the fold ensemble with TTA (:class:`cellseg.infer.ensemble.FoldEnsemble`) on a folder of
images, decodes each image's cells with its predicted type's tuned post-processing, scores
every cell and writes the confident ones as a data root in the competition layout
(``train.csv`` + ``train/<id>.png``) that training can read as extra data. Rounds repeat:
train -> label -> train.

Confidence of a cell: the mean body probability (channel 0) over its pixels, in [0, 1]. A cell
is kept when

* its confidence is at least the type's threshold, ``max(seed_threshold, (1 +
  mask_threshold) / 2, min_confidence)`` with the type's tuned parameters: the seed threshold
  is the level the post-processing itself trusts as a cell centre, so a kept cell is on
  average as sure as a seed has to be; and since every pixel of a cell is above
  ``mask_threshold`` by construction (its mean too), the cell's mean must also lie in the
  upper half of ``[mask_threshold, 1]`` (with real_cpu-tuned shsy5y, mask 0.70 > seed 0.66,
  the seed rule alone kept every cell);
* it grew from a seed of its own: its peak seed score ``body * (1 - border)`` exceeds the
  type's ``seed_threshold`` (``keep_unseeded`` regions, the post-processing's fallback for
  faint blobs, are never kept).

An image is skipped (and listed with the reason in ``pseudo_images.csv``) when its predicted
type is uncertain (top probability below ``min_type_prob``, unless a type is forced), when it
has no confident cell, or when fewer than ``min_kept_fraction`` of its predicted cells are
kept: the dropped cells become background in the written labels, so an image that loses many
of them would teach the network that cells are background.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.constants import CELL_TYPES, TRAIN_COLUMNS
from cellseg.data import rle
from cellseg.data.coco import check_root_out, keep_user_entry, safe_id
from cellseg.data.data_root import SOURCE_FILE
from cellseg.data.images import IMAGE_SUFFIXES, image_size, read_image_uint8, write_png
from cellseg.exceptions import CocoError, DataError, PseudoLabelError
from cellseg.experiment import POSTPROCESS_FILE

IMAGES_FILE = "pseudo_images.csv"
PSEUDO_COLUMNS: tuple[str, ...] = (*TRAIN_COLUMNS, "confidence")


@dataclass
class CellScores:
    """Per-cell statistics of one decoded image (index k = label k + 1)."""

    confidence: np.ndarray  # mean body probability inside the cell
    peak_seed: np.ndarray   # max of body * (1 - border) inside the cell
    area: np.ndarray        # pixels


def cell_scores(probs: np.ndarray, labels: np.ndarray) -> CellScores:
    """Score every instance of ``labels`` (0 = background, 1..n) on the maps ``probs``
    (H x W x C, channel 0 body, channel 1 touching border when present); vectorised."""
    from scipy import ndimage

    probs = np.asarray(probs, np.float32)
    if probs.ndim == 2:
        probs = probs[..., None]
    body = np.clip(probs[..., 0], 0.0, 1.0)
    border = np.clip(probs[..., 1], 0.0, 1.0) if probs.shape[-1] > 1 else 0.0
    seed = body * (1.0 - border)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        empty = np.zeros(0, np.float64)
        return CellScores(empty, empty, np.zeros(0, np.int64))
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    total = np.bincount(flat, weights=body.ravel().astype(np.float64), minlength=n + 1)[1:]
    confidence = np.divide(total, area, out=np.zeros(n), where=area > 0)
    peak = np.asarray(ndimage.maximum(seed, labels, index=np.arange(1, n + 1)), np.float64)
    return CellScores(np.clip(confidence, 0.0, 1.0), peak, area.astype(np.int64))


def type_thresholds(params: Mapping[str, Mapping[str, Any]], min_confidence: float
                    ) -> dict[str, float]:
    """Confidence threshold per cell type:
    ``max(seed_threshold, (1 + mask_threshold) / 2, min_confidence)``."""
    out = {}
    for t in CELL_TYPES:
        if t in params:
            seed = float(params[t].get("seed_threshold", 0.5))
            mask = float(params[t].get("mask_threshold", 0.3))
            out[t] = max(seed, (1.0 + mask) / 2.0, float(min_confidence))
    return out


def select_cells(probs: np.ndarray, labels: np.ndarray, seed_threshold: float,
                 threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep the confident, seeded cells of one image.

    Returns:
        ``(kept_labels, confidences, n_predicted)``: a label image holding only the kept
        cells (renumbered 1..m in their original order) and their confidences.
    """
    scores = cell_scores(probs, labels)
    n = scores.confidence.size
    keep = (scores.confidence >= threshold) & (scores.peak_seed > seed_threshold) \
        & (scores.area > 0)
    lut = np.zeros(n + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels], scores.confidence[keep], n


@dataclass
class PseudoSummary:
    """What :func:`pseudo_label` wrote and skipped (also in ``source.json``)."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    per_type: dict[str, dict[str, int]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    #: one message per input image that could not be read (skipped, listed in IMAGES_FILE)
    errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        c = self.counts
        lines = [(f"wrote {self.out}: {c.get('images_written', 0)} of {c.get('images', 0)} "
                  f"images, {c.get('cells_kept', 0)} of {c.get('cells_predicted', 0)} "
                  f"predicted cells kept")]
        for t, v in self.per_type.items():
            lines.append(f"  {t}: {v['images']} images, {v['cells']} cells "
                         f"(confidence >= {self.thresholds.get(t, float('nan')):.3f})")
        for key, what in (("skipped_unreadable", "unreadable image"),
                          ("skipped_type_uncertain", "cell type uncertain"),
                          ("skipped_no_confident_cell", "no confident cell"),
                          ("skipped_few_kept", "too few cells kept")):
            if c.get(key):
                lines.append(f"  skipped, {what}: {c[key]} images (see {IMAGES_FILE})")
        return "\n".join(lines)


def images_with_ids(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """The image files of ``folder`` (not recursive, hidden files skipped) with a safe,
    unique id each (``a b.png`` -> ``a_b``; a clash gets ``_2``, ``_3``, ...; a name with
    nothing usable gets ``img_<hash>``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PseudoLabelError(f"{folder}: images folder not found")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PseudoLabelError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    out, taken = [], set()
    for path in files:
        try:
            base = safe_id(path.stem)
        except CocoError:  # nothing usable in the name (e.g. "..png"): name it by its hash
            base = "img_" + hashlib.sha1(path.name.encode("utf-8", "surrogateescape"),
                                         usedforsecurity=False).hexdigest()[:12]
        image_id, k = base, 1
        while image_id in taken:
            k += 1
            image_id = f"{base}_{k}"
        taken.add(image_id)
        out.append((path, image_id))
    return out


def _sha256(path: Path) -> str | None:
    return fileio.file_digest(path) if path.is_file() else None


def pseudo_label(
    ens: Any,
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    exp_dir: str | os.PathLike,
    *,
    min_confidence: float = 0.5,
    min_type_prob: float = 0.6,
    min_kept_fraction: float = 0.5,
    chunk: int = 8,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> PseudoSummary:
    """Label every image of ``images_dir`` with ``ens`` and write the confident cells.

    Args:
        ens: a loaded :class:`cellseg.infer.ensemble.FoldEnsemble` (``predict``, ``cell_type``,
            ``decode``, ``params``, ``folds``, ``heads``, ``tta``).
        images_dir: unlabelled images (PNG / TIFF / JPEG; 16-bit scaled to 8 bits).
        out: data root to write: ``train.csv`` (+ ``confidence``), ``train/<id>.png``,
            ``pseudo_images.csv`` (every input image, its type and what happened to it) and
            ``source.json`` (experiment, folds, heads, TTA, post-processing, thresholds).
        exp_dir: the experiment folder (for ``postprocess.yaml`` provenance).
        min_confidence: lower bound of every type's confidence threshold (see module doc).
        min_type_prob: skip an image whose top cell-type probability is lower (ignored when
            the ensemble forces a type).
        min_kept_fraction: skip an image keeping fewer of its predicted cells than this.
        chunk: images of one shape predicted together.
        overwrite: replace the data root's files in a non-empty ``out``.
        progress: called with (1, number of images) after each image.
        provenance: extra entries for ``source.json`` (command, config).
    """
    for name, value in (("min_confidence", min_confidence), ("min_type_prob", min_type_prob),
                        ("min_kept_fraction", min_kept_fraction)):
        if not 0.0 <= float(value) <= 1.0:
            raise PseudoLabelError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    images_dir, out, exp_dir = Path(images_dir), Path(out), Path(exp_dir)
    files = images_with_ids(images_dir)
    check_root_out(out, overwrite, protect=(images_dir,), error=PseudoLabelError)
    rows: list[tuple] = []
    report: list[dict[str, Any]] = []
    errors: list[str] = []
    counts = {"images": len(files), "images_written": 0, "skipped_unreadable": 0,
              "skipped_type_uncertain": 0, "skipped_no_confident_cell": 0,
              "skipped_few_kept": 0, "cells_predicted": 0, "cells_kept": 0,
              "rescaled_to_uint8": 0}

    def unreadable(path: Path, image_id: str, exc: Exception) -> None:
        """One corrupt file is skipped and listed, as an uncertain image is."""
        msg = fileio.printable(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
        errors.append(msg)
        counts["skipped_unreadable"] += 1
        report.append({"id": image_id, "file": fileio.printable(path.name), "cell_type": "",
                       "type_prob": "", **{f"prob_{t}": "" for t in CELL_TYPES},
                       "cells_predicted": 0, "cells_kept": 0,
                       "status": f"skipped: unreadable ({msg})"})
        if progress is not None:
            progress(1, len(files))

    shapes: dict[str, tuple[int, int]] = {}
    for path, image_id in files:
        try:
            shapes[image_id] = image_size(path)
        except (DataError, OSError) as exc:
            unreadable(path, image_id, exc)
    thresholds = type_thresholds(ens.params, min_confidence)
    forced = getattr(ens, "cell_type_override", None)

    # Group by shape (the ensemble predicts one shape at a time), keep the folder's order.
    by_shape: dict[tuple[int, int], list[tuple[Path, str]]] = {}
    for path, image_id in files:
        if image_id in shapes:
            by_shape.setdefault(shapes[image_id], []).append((path, image_id))
    per_type: dict[str, dict[str, int]] = {}
    # The root is built in a temporary sibling of ``out`` and swapped in when complete: an
    # --overwrite never loses the old root, a killed run leaves ``out`` as it was.
    with fileio.replace_folder(out, carry=keep_user_entry) as stage:
        (stage / "train").mkdir()
        _label_groups(ens, by_shape, stage, chunk, counts, rows, report, per_type, thresholds,
                      forced, min_type_prob, min_kept_fraction, unreadable, progress,
                      len(files))
        _write_root(stage, ens, files, rows, report, counts, per_type, thresholds, forced,
                    exp_dir, images_dir, provenance, min_confidence, min_type_prob,
                    min_kept_fraction)
    return PseudoSummary(out, counts, dict(sorted(per_type.items())), thresholds, errors)


def _label_groups(ens: Any, by_shape: Mapping[tuple[int, int], list[tuple[Path, str]]],
                  stage: Path, chunk: int, counts: dict[str, int], rows: list[tuple],
                  report: list[dict[str, Any]], per_type: dict[str, dict[str, int]],
                  thresholds: Mapping[str, float], forced: str | None, min_type_prob: float,
                  min_kept_fraction: float, unreadable: Callable[[Path, str, Exception], None],
                  progress: Callable[[int, int], None] | None, n_files: int) -> None:
    """Predict, decode and select each shape group's images; PNGs go to ``stage/train``."""
    for group in by_shape.values():
        for start in range(0, len(group), max(int(chunk), 1)):
            part, images = [], []
            for path, image_id in group[start:start + max(int(chunk), 1)]:
                try:
                    image, rescaled = read_image_uint8(path)
                except (DataError, OSError) as exc:
                    unreadable(path, image_id, exc)
                    continue
                counts["rescaled_to_uint8"] += int(rescaled)
                part.append((path, image_id))
                images.append(image)
            if not images:
                continue
            probs, type_probs = ens.predict(images)
            for i, ((path, image_id), image) in enumerate(zip(part, images)):
                tp = np.asarray(type_probs[i], np.float64) if np.size(type_probs) else \
                    np.zeros(0)
                kind = ens.cell_type(tp)
                top = float(tp.max()) if tp.size else float("nan")
                entry = {"id": image_id, "file": fileio.printable(path.name), "cell_type": kind,
                         "type_prob": round(top, 4) if tp.size else "",
                         **{f"prob_{t}": (round(float(tp[k]), 4) if tp.size == len(CELL_TYPES)
                                          else "") for k, t in enumerate(CELL_TYPES)},
                         "cells_predicted": 0, "cells_kept": 0, "status": ""}
                report.append(entry)
                if progress is not None:
                    progress(1, n_files)
                if forced is None and tp.size and top < min_type_prob:
                    counts["skipped_type_uncertain"] += 1
                    entry["status"] = f"skipped: cell type uncertain ({top:.3f} < " \
                                      f"{min_type_prob})"
                    continue
                labels = ens.decode(probs[i], kind, image)
                seed_thr = float(ens.params[kind].get("seed_threshold", 0.5))
                kept, conf, n_pred = select_cells(probs[i], labels, seed_thr, thresholds[kind])
                entry["cells_predicted"], entry["cells_kept"] = n_pred, int(conf.size)
                counts["cells_predicted"] += n_pred
                if conf.size == 0:
                    counts["skipped_no_confident_cell"] += 1
                    entry["status"] = "skipped: no confident cell"
                    continue
                if conf.size < min_kept_fraction * n_pred:
                    counts["skipped_few_kept"] += 1
                    entry["status"] = (f"skipped: kept {conf.size} of {n_pred} cells "
                                       f"(< {min_kept_fraction:g})")
                    continue
                height, width = image.shape
                codes = rle.encode_labels(kept)
                rows.extend((image_id, code, width, height, kind, "", "", image_id, "",
                             round(float(c), 4)) for code, c in zip(codes, conf))
                write_png(stage / "train" / f"{image_id}.png", image)
                entry["status"] = "written"
                counts["images_written"] += 1
                counts["cells_kept"] += int(conf.size)
                st = per_type.setdefault(kind, {"images": 0, "cells": 0})
                st["images"] += 1
                st["cells"] += int(conf.size)



def _write_root(stage: Path, ens: Any, files: list[tuple[Path, str]], rows: list[tuple],
                report: list[dict[str, Any]], counts: dict[str, int],
                per_type: dict[str, dict[str, int]], thresholds: Mapping[str, float],
                forced: str | None, exp_dir: Path, images_dir: Path,
                provenance: Mapping[str, Any] | None, min_confidence: float,
                min_type_prob: float, min_kept_fraction: float) -> None:
    """``pseudo_images.csv``, ``train.csv`` and ``source.json`` of the new root (last)."""
    order = {image_id: k for k, (_, image_id) in enumerate(files)}
    report.sort(key=lambda e: order[e["id"]])
    rows.sort(key=lambda r: order[r[0]])  # stable: cells keep their order within an image
    fileio.write_text(stage / IMAGES_FILE,
                      pd.DataFrame(report).to_csv(index=False, lineterminator="\n"))
    table = pd.DataFrame(rows, columns=list(PSEUDO_COLUMNS))
    fileio.write_text(stage / "train.csv", table.to_csv(index=False, lineterminator="\n"))
    pp_path = exp_dir / POSTPROCESS_FILE
    source = {
        "tool": "pseudo_label",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **dict(provenance or {}),
        "exp_dir": str(exp_dir.resolve()),
        "images_dir": str(images_dir.resolve()),
        "folds": [int(k) for k in ens.folds],
        "model_files": [str(p) for _, p in getattr(ens, "model_files", [])],
        "heads": ens.heads, "tta": list(ens.tta),
        "cell_type_source": getattr(ens, "cell_type_source", None),
        "cell_type_forced": forced,
        "postprocess_file": str(pp_path.resolve()) if pp_path.is_file() else None,
        "postprocess_sha256": _sha256(pp_path),
        "postprocess_params": {t: dict(v) for t, v in ens.params.items()},
        "confidence": "mean body probability inside the cell; kept when >= the type's "
                      "threshold, max(seed_threshold, (1 + mask_threshold) / 2, "
                      "min_confidence), and the cell's peak seed score > seed_threshold",
        "thresholds": thresholds,
        "min_confidence": float(min_confidence), "min_type_prob": float(min_type_prob),
        "min_kept_fraction": float(min_kept_fraction),
        "counts": counts, "per_cell_type": dict(sorted(per_type.items())),
    }
    fileio.write_text(stage / SOURCE_FILE, json.dumps(source, indent=2, default=str) + "\n")
