"""Out-of-fold (OOF) predictions: the hand-off from training to tuning.

One compressed file per validation image, ``<fold dir>/oof/<image id>.npz`` (and per test
image for ``infer.py --save-probs``, same format, same writer and reader), holding ``probs``
(uint8 H x W x C, probability * 255, channel 0 = cell body, 1 = touching border, 2 = centre
when ``model.n_targets`` is 3) and ``cell_type_probs`` (float32, one per CELL_TYPES entry).
uint8 keeps a fold of the real data (~120 images x 520 x 704 x 2) near 10 MB compressed
instead of 350 MB of float32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellseg import fileio
from cellseg.experiment import OOF_DIRNAME, fold_dirs


def quantize(probs: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] -> uint8 (round to nearest)."""
    return np.clip(np.rint(np.asarray(probs, np.float32) * 255.0), 0, 255).astype(np.uint8)


def dequantize(probs: np.ndarray) -> np.ndarray:
    """uint8 -> float32 probabilities in [0, 1]."""
    return np.asarray(probs, np.float32) / 255.0


def save_maps(path: str | os.PathLike, probs: np.ndarray, cell_type_probs: np.ndarray) -> Path:
    """Write one image's maps in this format (atomically): the one writer, used for the OOF
    files and for ``infer.py --save-probs``."""
    path = Path(path)
    fileio.save_npz(path, probs=quantize(probs),
                    cell_type_probs=np.asarray(cell_type_probs, np.float32))
    return path


def save_oof(fold_dir: str | os.PathLike, image_id: str, probs: np.ndarray,
             cell_type_probs: np.ndarray) -> Path:
    """Write one validation image's maps to ``<fold dir>/oof/<image id>.npz``."""
    return save_maps(Path(fold_dir) / OOF_DIRNAME / f"{image_id}.npz", probs, cell_type_probs)


def load_oof(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of this format (OOF or ``--save-probs``) -> (float32 probs H x W x C,
    float32 cell-type probs): the one reader."""
    data = fileio.load_npz(path)
    for key in ("probs", "cell_type_probs"):
        if key not in data:
            raise ValueError(f"OOF file {path}: missing array {key!r} (found {sorted(data)})")
    return dequantize(data["probs"]), data["cell_type_probs"].astype(np.float32)


def iter_oof_files(exp_dir: str | os.PathLike, folds: list[int] | None = None
                   ) -> Iterator[tuple[int, str, Path]]:
    """Yield (fold, image id, path) of every OOF file of an experiment."""
    for fold, fold_dir in fold_dirs(exp_dir, folds):
        for path in sorted((fold_dir / OOF_DIRNAME).glob("*.npz")):
            yield fold, path.stem, path
