"""The images a tuning study scores: per cell type, the OOF maps (or raw images) and the truth.

Why by true cell type: each parameter set is tuned on the images that truly are that type (type
from ``train.csv``), on their out-of-fold (OOF) maps, so no image scores a model that saw it in
training. The images are loaded once per process into an :class:`EvalSet` per cell type (maps
as uint8, 4x smaller than float32: ~0.7 MB per 520 x 704 image, ~450 MB for all 606 real
images) and scored for every trial by :class:`cellseg.tune.scoring.Evaluator`.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellseg.config import Config
from cellseg.constants import CELL_TYPES
from cellseg.data.data_root import TrainData
from cellseg.exceptions import DataError, TuningError
from cellseg.experiment import fold_dirs, oof_dir
from cellseg.train import oof

#: Tuning methods: "deep" decodes the OOF maps, "classical" segments the raw images.
METHODS: tuple[str, ...] = ("deep", "classical")


def _train_hint(exp_dir: Path, fold: int | str = "K") -> str:
    """The command that writes an experiment's OOF predictions (for error messages)."""
    return f"python src/train.py --fold {fold} --config CONFIG --exp {Path(exp_dir).name}"



@dataclass
class EvalSet:
    """The images of one cell type, loaded once and scored for every trial.

    Attributes:
        method: "deep" (``inputs`` = uint8 H x W x C OOF maps, probability * 255) or
            "classical" (``inputs`` = uint8 H x W raw images).
        cell_type: the true cell type of every image here.
        ids: image ids, in the order of ``inputs`` and ``truths``.
        folds: the fold each image was validated in (its OOF fold).
        inputs: uint8 arrays; deep maps are dequantised per evaluation (uint8 keeps ~600 real
            images at ~450 MB instead of 1.8 GB of float32).
        truths: per image, the per-cell flat pixel indices (int32) of the annotations; the
            metric counts a pixel claimed by two true cells for both.
    """

    method: str
    cell_type: str
    ids: list[str]
    folds: list[int]
    inputs: list[np.ndarray]
    truths: list[list[np.ndarray]]
    costs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"EvalSet.method must be one of {METHODS}, got {self.method!r}")
        n = len(self.ids)
        if not (len(self.folds) == len(self.inputs) == len(self.truths) == n):
            raise ValueError(
                f"EvalSet({self.cell_type}): ids, folds, inputs and truths must have one entry "
                f"per image; got {n}, {len(self.folds)}, {len(self.inputs)}, {len(self.truths)}")
        if not self.costs:
            # Decode + match time grows with image size and cell count: used to balance the
            # per-trial work over processes.
            self.costs = [float(x.shape[0] * x.shape[1]) * (1.0 + 0.01 * len(t))
                          for x, t in zip(self.inputs, self.truths)]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached inputs and truth pixel indices."""
        return int(sum(x.nbytes for x in self.inputs)
                   + sum(p.nbytes for t in self.truths for p in t))

    def fingerprint(self) -> str:
        """Short hash of what every trial's score depends on: method, cell type, the images
        (ids) and their content (OOF maps or images, and the truth). Retrained fold models
        write other OOF maps, so their study is a new one (see
        :func:`cellseg.tune.storage.study_name`)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        h = hashlib.sha1(f"{self.method}|{self.cell_type}|".encode())
        for i in sorted(range(len(self.ids)), key=lambda k: self.ids[k]):
            h.update(self.ids[i].encode() + b"\n")
            x = np.ascontiguousarray(self.inputs[i])
            h.update(f"{x.dtype}{x.shape}".encode())
            h.update(x.data)
            for cell in self.truths[i]:
                h.update(np.ascontiguousarray(cell, np.int64).data)
                h.update(b"|")
        self.__dict__["_fingerprint"] = h.hexdigest()[:16]
        return self.__dict__["_fingerprint"]



def parse_folds(folds: Iterable[int] | None) -> list[int] | None:
    if folds is None:
        return None
    out = sorted({int(f) for f in folds})
    if any(f < 0 for f in out):
        raise TuningError(f"folds must be >= 0, got {out}")
    return out or None


def _check_cell_types(cell_types: Iterable[str] | None) -> list[str]:
    if cell_types is None:
        return list(CELL_TYPES)
    chosen = list(dict.fromkeys(cell_types))
    unknown = [t for t in chosen if t not in CELL_TYPES]
    if unknown or not chosen:
        raise TuningError(f"unknown cell type(s) {unknown or chosen}; valid: {list(CELL_TYPES)}")
    return [t for t in CELL_TYPES if t in chosen]


def collect_oof(exp_dir: str | os.PathLike, data: TrainData,
                folds: Iterable[int] | None = None) -> dict[str, list[tuple[int, str, Path]]]:
    """The OOF files of an experiment, grouped by each image's true cell type.

    Args:
        exp_dir: ``output/<exp>``, holding ``fold<K>/oof/<id>.npz``.
        data: the training data the experiment was trained on (truth and cell types).
        folds: only these folds; None = every fold found.

    Returns:
        cell type -> [(fold, image id, path)], types in ``CELL_TYPES`` order, only types with
        at least one image.

    Raises:
        TuningError: no OOF file at all (with how to make them), an OOF id that
            ``train.csv`` does not know, or one id in two folds.
    """
    exp_dir = Path(exp_dir)
    folds = parse_folds(folds)
    found = list(oof.iter_oof_files(exp_dir, folds))
    if not found:
        which = f"folds {folds}" if folds else "any fold"
        trained = [d.name for _, d in fold_dirs(exp_dir) if oof_dir(d).is_dir()]
        extra = f" (folds with OOF predictions: {trained})" if trained else ""
        raise TuningError(
            f"no out-of-fold predictions for {which} in {exp_dir}{extra}: expected "
            f"{exp_dir}/fold<K>/{oof.OOF_DIRNAME}/<image id>.npz; "
            f"`{_train_hint(exp_dir)}` writes them when it finishes a fold")
    grouped: dict[str, list[tuple[int, str, Path]]] = {}
    seen: dict[str, Path] = {}
    for fold, image_id, path in found:
        if image_id in seen:
            raise TuningError(f"image {image_id!r} has OOF predictions in two folds: "
                              f"{seen[image_id]} and {path}; an image is validated in one fold "
                              f"only (was folds.csv changed between trainings?)")
        seen[image_id] = path
        try:
            cell_type = data.cell_type(image_id)
        except DataError:
            raise TuningError(f"{path}: image id {image_id!r} is not in {data.csv_path}; were "
                              f"these OOF maps made from another data root?") from None
        grouped.setdefault(cell_type, []).append((fold, image_id, path))
    return {t: grouped[t] for t in CELL_TYPES if t in grouped}


def _collect_from_folds_csv(data: TrainData, folds: list[int] | None
                            ) -> dict[str, list[tuple[int, str, Path]]]:
    """Images of the chosen folds from ``<root>/folds.csv`` (classical tuning with no OOF)."""
    from cellseg.data.folds import load_folds

    table = load_folds(data.root / "folds.csv", data.ids)
    if folds is not None:
        table = table[table["fold"].isin(folds)]
    grouped: dict[str, list[tuple[int, str, Path]]] = {}
    for image_id, fold in zip(table["id"], table["fold"]):
        if image_id in data.ids:
            grouped.setdefault(data.cell_type(image_id), []).append(
                (int(fold), str(image_id), data.image_path(image_id)))
    return {t: sorted(grouped[t], key=lambda r: r[1]) for t in CELL_TYPES if t in grouped}


def open_train_data(cfg: Config) -> TrainData:
    """The experiment's training data root (the truth of the OOF images), or a TuningError
    saying why it cannot be read."""
    try:
        return TrainData(cfg.data.root)
    except DataError as exc:
        raise TuningError(f"cannot read the training data (truth for the OOF images): "
                          f"{exc}") from None


def load_eval_sets(
    cfg: Config,
    method: str = "deep",
    folds: Iterable[int] | None = None,
    cell_types: Iterable[str] | None = None,
    data: TrainData | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, EvalSet]:
    """Load the images to tune on, once: OOF maps (deep) or raw images (classical) + truth.

    Args:
        cfg: the experiment's config (``experiment_dir()`` and ``data.root``).
        method: "deep" or "classical". Classical tuning uses the OOF ids too, so both rows of
            the comparison are scored on the same images; with no OOF predictions at all it
            falls back to the images of the chosen folds in ``<data root>/folds.csv``.
        folds: folds whose OOF images to use; None = every fold with OOF files.
        cell_types: subset of ``CELL_TYPES``; None = all.
        data: an already-opened :class:`TrainData` (default: open ``cfg.data.root``).
        log: progress messages (None = quiet).

    Returns:
        cell type -> :class:`EvalSet`, only types with images. A requested type without OOF
        images is skipped with a warning.

    Raises:
        TuningError: no OOF predictions (says how to make them), no image of any requested
            type, or an OOF file that does not match its image (shape, id).
    """
    if method not in METHODS:
        raise TuningError(f"method must be one of {list(METHODS)}, got {method!r}")
    wanted = _check_cell_types(cell_types)
    folds = parse_folds(folds)
    if data is None:
        data = open_train_data(cfg)
    exp_dir = cfg.experiment_dir()
    has_oof = next(iter(oof.iter_oof_files(exp_dir, folds)), None) is not None
    if method == "classical" and not has_oof:
        try:
            grouped = _collect_from_folds_csv(data, folds)
        except DataError as exc:
            raise TuningError(f"no OOF predictions in {exp_dir} to take the image ids from, "
                              f"and no usable folds.csv: {exc}") from None
        if log:
            log(f"no OOF predictions in {exp_dir}: tuning the classical baseline on the images "
                f"of folds {folds or 'all'} from {data.root / 'folds.csv'}")
    else:
        grouped = collect_oof(exp_dir, data, folds)
    missing = [t for t in wanted if t not in grouped]
    present = [t for t in wanted if t in grouped]
    if not present:
        have = {t: len(v) for t, v in grouped.items()}
        raise TuningError(
            f"no OOF images of cell type(s) {wanted} in {exp_dir} (folds {folds or 'all'}); "
            f"OOF images per type there: {have}. Train the folds that hold them "
            f"(`{_train_hint(exp_dir)}`) or choose other --cell-types / --folds")
    for cell_type in missing:
        warnings.warn(f"no OOF images of cell type {cell_type!r} in {exp_dir} (folds "
                      f"{folds or 'all'}): skipping it; its parameters stay at the defaults",
                      stacklevel=2)
    sets: dict[str, EvalSet] = {}
    for cell_type in present:
        t0 = time.perf_counter()
        ids, fold_list, inputs, truths = [], [], [], []
        for fold, image_id, path in grouped[cell_type]:
            shape = data.shape(image_id)
            try:
                if method == "deep":
                    probs, _ = oof.load_oof(path)
                    if probs.ndim != 3 or probs.shape[:2] != shape:
                        raise TuningError(
                            f"{path}: OOF maps have shape {probs.shape}, expected {shape[0]} x "
                            f"{shape[1]} x C (height x width of image {image_id} in "
                            f"{data.csv_path.name})")
                    x = oof.quantize(probs)  # exact: the file holds uint8 / 255
                else:
                    x = data.load_image(image_id)
                inst = data.load_instances(image_id)
            except TuningError:
                raise
            except DataError as exc:
                raise TuningError(str(exc)) from None
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise TuningError(f"{path}: unreadable OOF file for image {image_id} ({exc}); "
                                  f"re-run `{_train_hint(exp_dir, fold)}`") from None
            ids.append(image_id)
            fold_list.append(int(fold))
            inputs.append(x)
            truths.append([p.astype(np.int32) for p in inst.pixels])
        sets[cell_type] = EvalSet(method, cell_type, ids, fold_list, inputs, truths)
        if log:
            used = sorted(set(fold_list))
            log(f"[{cell_type}] {len(ids)} images (folds {used}) loaded in "
                f"{time.perf_counter() - t0:.1f} s, {sets[cell_type].nbytes / 2**20:.0f} MB")
    return sets


__all__ = ["METHODS", "EvalSet", "collect_oof", "load_eval_sets", "open_train_data"]
