"""Test-set inference: fold ensemble x TTA -> cell type -> instances -> RLE -> submission.csv.

One library function, :func:`run_inference`, does the whole job so that ``src/infer.py`` and
the Kaggle kernel run the same code (the kernel only sets paths). Per test image:

1. read the PNG (size from its header, checked against the decoded pixels) and normalise it;
2. :func:`cellseg.model.predict.predict_images` averages every fold model over the TTA variants
   (the variants of an image go through a model in one batch);
3. the cell type is the argmax of the folds' whole-image cell-type classifiers
   (:mod:`cellseg.model.celltype`; the network's head for older experiments without one) or a user
   override, and selects that type's tuned post-processing parameters (``postprocess.yaml``);
   every image's type and probabilities go to ``<out stem>_cell_types.csv`` so users can
   check them;
4. :func:`cellseg.postprocess.decode.decode_with_params` gives a label image; every instance is
   RLE-encoded and streamed to the submission file.

Memory stays flat: an image's probability maps are dropped once its rows are written, and
rows go straight to a temporary file that is validated and renamed into place at the end
(:func:`cellseg.infer.submission.write_submission`), so a corrupt test image or Ctrl-C halfway never
leaves a partial ``submission.csv``.

TensorFlow is imported only once the cheap checks (arguments, test images, model files) have
passed: a wrong path fails in a second, not after a TF start-up.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


import numpy as np

from cellseg import fileio
from cellseg.config import Config
from cellseg.constants import CELL_TYPES
from cellseg.data import rle
from cellseg.data.data_root import DataError, read_image
from cellseg.exceptions import InferenceError
from cellseg.infer.submission import folder_image_shapes, image_rows, write_submission
from cellseg.train import oof

TEST_DIRNAME = "test"

# Stages reported in the timing summary, in pipeline order.
STAGES: tuple[tuple[str, str], ...] = (
    ("read", "read + normalise image"),
    ("model", "model ensemble + TTA"),
    ("postprocess", "post-processing"),
    ("encode", "RLE encoding"),
    ("save", "saving maps / overlays"),
    ("write", "validate + write csv"),
)


# ------------------------------------------------------------------------------ helpers
def _chunks(ids: Sequence[str], shapes: dict[str, tuple[int, int]], size: int
            ) -> Iterator[list[str]]:
    """Consecutive ids of equal image size, at most ``size`` at a time (one model batch)."""
    chunk: list[str] = []
    for image_id in ids:
        if chunk and (len(chunk) == size or shapes[image_id] != shapes[chunk[0]]):
            yield chunk
            chunk = []
        chunk.append(image_id)
    if chunk:
        yield chunk


def format_timing(summary: dict[str, Any]) -> str:
    """The per-stage timing table of a :func:`run_inference` summary, as text."""
    n = max(summary["n_images"], 1)
    lines = [f"{'stage':<26}{'total s':>10}{'s / image':>12}"]
    for key, label in STAGES:
        total = summary["timing_s"].get(key, 0.0)
        lines.append(f"{label:<26}{total:>10.2f}{total / n:>12.4f}")
    lines.append(f"{'total (excl. model load)':<26}{summary['seconds_total']:>10.2f}"
                 f"{summary['seconds_total'] / n:>12.4f}")
    lines.append(f"{'model loading (once)':<26}{summary['model_load_s']:>10.2f}")
    return "\n".join(lines)


def cell_types_path(out_path: str | os.PathLike) -> Path:
    """Where the per-image cell types go: ``submission.csv`` -> ``submission_cell_types.csv``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_cell_types.csv")


# ------------------------------------------------------------------------------ the run
def _check_outputs_and_test_images(out_path: Path, data_dir: str | os.PathLike,
                                   save_probs_dir: str | os.PathLike | None,
                                   save_overlays_dir: str | os.PathLike | None
                                   ) -> tuple[Path, dict[str, tuple[int, int]]]:
    """The cheap checks, before any model loads: the output paths can be written, and the
    test folder's images (headers only). Returns ``(test folder, id -> (height, width))``."""
    if out_path.is_dir():
        raise InferenceError(f"{out_path} is a folder; expected the submission file's path")
    test_dir = Path(data_dir) / TEST_DIRNAME
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: test image folder not found (expected <data root>/"
                        f"{TEST_DIRNAME}/*.png; set --data-dir)")
    shapes = folder_image_shapes(test_dir)
    for folder, what in ((save_probs_dir, "--save-probs"), (save_overlays_dir,
                                                            "--save-overlays")):
        if folder is not None:
            fileio.require_folder(folder, what)
    return test_dir, shapes


def _cell_type_row(image_id: str, kind: str, type_probs: np.ndarray,
                   has_probs: bool) -> dict[str, Any]:
    """One row of ``<submission>_cell_types.csv``: the type used and each type's
    probability (NaN when the ensemble gives none)."""
    return {"id": image_id, "cell_type": kind, **{
        f"prob_{t}": round(float(type_probs[j]), 4) if has_probs else float("nan")
        for j, t in enumerate(CELL_TYPES)}}


def _write_cell_types(out_path: Path, type_rows: list[dict[str, Any]]) -> Path:
    """Write the per-image cell types beside the submission (atomically); returns the path."""
    import pandas as pd

    types_path = cell_types_path(out_path)
    with fileio.atomic_path(types_path) as tmp:
        pd.DataFrame(type_rows, columns=["id", "cell_type",
                                         *(f"prob_{t}" for t in CELL_TYPES)]).to_csv(tmp,
                                                                                     index=False)
    return types_path


def run_inference(
    cfg: Config,
    exp_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    folds: Sequence[int] | None = None,
    cell_type: str | None = None,
    save_probs_dir: str | os.PathLike | None = None,
    save_overlays_dir: str | os.PathLike | None = None,
    heads: str | None = None,
    tta: Sequence[str] | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Predict every ``<data_dir>/test/*.png`` and write a validated submission.

    Args:
        cfg: resolved config (see :func:`resolve_config`); supplies ``infer.*`` defaults and
            the default post-processing used when ``postprocess.yaml`` is missing.
        exp_dir: experiment folder with ``fold<K>/best.keras`` (and maybe
            ``postprocess.yaml``).
        data_dir: data root; test images are ``<data_dir>/test/*.png``.
        out_path: the submission CSV to write (atomically; never left half-written).
        folds: folds to ensemble; None = ``cfg.infer.folds``, and if that is empty every fold
            with a model.
        cell_type: force this cell type for every image (its post-processing parameters);
            required when the models have no cell-type head.
        save_probs_dir: if set, write ``<id>.npz`` per image (``probs`` uint8 H x W x C =
            probability * 255, ``cell_type_probs`` float32; the OOF format of
            :mod:`cellseg.train.oof`).
        save_overlays_dir: if set, write ``<id>.png`` overlays (image | outlines | instances).
        heads: ``"mean"``, ``"last"`` or ``"prune=L"``; None = ``cfg.infer.heads``.
        tta: TTA variants; None = ``cfg.infer.tta``.
        progress: show a tqdm progress bar.
        verbose: print the summary and timing table.

    Returns:
        Summary dict: ``out``, ``n_images``, ``n_masks``, ``n_empty_images``, ``folds``,
        ``heads``, ``tta``, ``cell_type_counts``, ``image_cell_types`` (id -> type),
        ``timing_s`` (stage -> total seconds), ``seconds_per_image`` (stage -> seconds),
        ``seconds_total``, ``model_load_s``, ``postprocess_params``.

    Raises:
        DataError: test folder missing or empty, or a test image missing/corrupt (named).
        InferenceError: no trained model, no cell-type head and no override, bad options.
        SubmissionError: the produced rows are not a valid submission (nothing written).
    """
    out_path = Path(out_path)
    test_dir, shapes = _check_outputs_and_test_images(out_path, data_dir, save_probs_dir,
                                                      save_overlays_dir)
    ids = list(shapes)
    from cellseg.infer.ensemble import FoldEnsemble

    ens = FoldEnsemble.load(cfg, exp_dir, folds=folds, heads=heads, tta=tta,
                            cell_type=cell_type)
    heads, tta, params = ens.heads, ens.tta, ens.params
    save_overlay = None
    if save_overlays_dir is not None:
        from cellseg.viz import save_overlay
    probs_dir = Path(save_probs_dir) if save_probs_dir is not None else None
    overlay_dir = Path(save_overlays_dir) if save_overlays_dir is not None else None

    timing = dict.fromkeys((k for k, _ in STAGES), 0.0)
    image_types: dict[str, str] = {}
    type_rows: list[dict[str, Any]] = []

    def rows() -> Iterator[tuple[str, str]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc="inference", unit="img", disable=not progress)
        try:
            for chunk in _chunks(ids, shapes, ens.batch_size):
                t = time.perf_counter()
                raw = [read_image(test_dir / f"{i}.png", shapes[i]) for i in chunk]
                timing["read"] += time.perf_counter() - t
                t = time.perf_counter()
                probs, type_probs = ens.predict(raw)
                timing["model"] += time.perf_counter() - t
                for k, image_id in enumerate(chunk):
                    has_probs = type_probs.shape[-1] == len(CELL_TYPES)
                    kind = ens.cell_type(type_probs[k])  # load() ensured one source
                    image_types[image_id] = kind
                    type_rows.append(_cell_type_row(image_id, kind, type_probs[k], has_probs))
                    t = time.perf_counter()
                    labels = ens.decode(probs[k], kind, raw[k])
                    timing["postprocess"] += time.perf_counter() - t
                    t = time.perf_counter()
                    masks = rle.encode_labels(labels)
                    timing["encode"] += time.perf_counter() - t
                    t = time.perf_counter()
                    if probs_dir is not None:
                        oof.save_maps(probs_dir / f"{image_id}.npz", probs[k], type_probs[k])
                    if save_overlay is not None:
                        save_overlay(overlay_dir / f"{image_id}.png", raw[k], None, labels)
                    timing["save"] += time.perf_counter() - t
                    yield from image_rows(image_id, masks)
                    bar.update(1)
        finally:
            bar.close()

    t_start = time.perf_counter()
    written = write_submission(rows(), out_path, ids, shapes)
    types_path = _write_cell_types(out_path, type_rows)
    total = time.perf_counter() - t_start
    timing["write"] = max(total - sum(v for k, v in timing.items() if k != "write"), 0.0)
    n = len(ids)
    summary: dict[str, Any] = {
        "out": str(out_path),
        "cell_types_csv": str(types_path),
        "cell_type_source": ens.cell_type_source,
        "n_images": n,
        "n_masks": written.n_masks,
        "n_empty_images": written.n_empty_images,
        "folds": ens.folds,
        "heads": heads,
        "tta": tta,
        "cell_type_override": cell_type,
        "cell_type_counts": dict(Counter(image_types.values())),
        "image_cell_types": image_types,
        "postprocess_params": params,
        "timing_s": {k: round(v, 4) for k, v in timing.items()},
        "seconds_per_image": {k: round(v / max(n, 1), 4) for k, v in timing.items()},
        "seconds_total": round(total, 3),
        "model_load_s": round(ens.model_load_s, 3),
    }
    if verbose:
        print(f"wrote {out_path}: {n} test images, {written.n_masks} masks, "
              f"{written.n_empty_images} image(s) without a cell; {len(ens.models)} fold model(s) "
              f"{summary['folds']} x TTA {tta}, heads={heads}; cell types "
              f"{summary['cell_type_counts']} ({summary['cell_type_source']}; per image in "
              f"{types_path})")
        print(format_timing(summary))
    return summary


__all__ = [
    "InferenceError",
    "cell_types_path",
    "format_timing",
    "run_inference",
]
