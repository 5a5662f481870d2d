"""Scoring a submission against a truth CSV (``train.csv`` format): the local leaderboard.

Why a separate step: the competition's hidden test set gives one number per day; scoring
our own submission files on held-out annotated images (or the synthetic test set) gives the
same metric per image, per cell type and per IoU threshold, with pictures of the worst and
best images to see *why* a score is what it is. The error analysis
(:mod:`cellseg.metrics.error_analysis`: misses, false positives, merges, splits, by cell size,
matched IoU) says which kind of mistake
costs the score, per cell type; the overlays colour cells by that kind.

Truth annotations overlap in the real data, so truth is kept as per-cell pixel-index lists
(:attr:`cellseg.data.data_root.Instances.pixels`) and a pixel owned by two true cells counts for
both (docs/design.md section 3). Predictions are checked with the submission rules (valid RLE
inside the image, no overlapping masks) and turned into label images. A truth image with no
prediction row scores as an empty prediction (0 when it has cells); a prediction for an id that
is not in the truth is an error, since it would mean scoring against the wrong file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.data import rle
from cellseg.data.data_root import DataError, decode_annotations, read_image, read_train_csv
from cellseg.metrics.error_analysis import (
    ErrorRecord,
    error_analysis,
    error_summary,
    error_summary_markdown,
    error_table,
)
from cellseg.metrics.score import Truth, score_table, summarize
from cellseg.infer.submission import SubmissionError, check_table, read_submission

SCORES_FILE = "scores.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
ERRORS_FILE = "errors.csv"
ERRORS_SUMMARY_CSV = "errors_summary.csv"
ERRORS_SUMMARY_MD = "errors_summary.md"
IOU_HIST = "iou_hist.png"
OVERLAY_DIRNAME = "overlays"


@dataclass
class Evaluation:
    """The result of :func:`evaluate_submission`.

    Attributes:
        table: one row per truth image: id, cell_type, score, n_true, n_pred, p@t, tp@t.
        summary: per cell type and ``overall``: images, score, p@0.50 ... p@0.95.
        markdown: ``summary`` as a markdown table.
        files: the files written (empty without ``out_dir``).
        errors: one row per truth image: id, cell_type and the error counts
            (:data:`cellseg.metrics.error_analysis.TABLE_COLUMNS`).
        error_summary: :func:`cellseg.metrics.error_analysis.error_summary` of ``errors``.
        error_markdown: ``error_summary`` as markdown tables.
        records: the :class:`cellseg.metrics.error_analysis.ErrorRecord` of every image, by id.
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    files: list[Path] = field(default_factory=list)
    errors: pd.DataFrame = field(default_factory=pd.DataFrame)
    error_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    error_markdown: str = ""
    records: dict[str, ErrorRecord] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The dataset score: mean of the image scores."""
        return float(self.summary.loc["overall", "score"])


def labels_from_rles(rles: list[str], shape: tuple[int, int], where: str = "") -> np.ndarray:
    """Label image (int32, mask k -> k + 1) from non-overlapping RLE masks.

    Raises:
        rle.RLEError: a malformed mask (named with ``where``).
    """
    height, width = shape
    labels = np.zeros(height * width, np.int32)
    for k, text in enumerate(rles):
        labels[rle.decode_indices(text, shape, f"{where}, mask {k}" if where else "")] = k + 1
    return labels.reshape(shape)


def summary_markdown(summary: pd.DataFrame) -> str:
    """A :func:`cellseg.metrics.score.summarize` table as markdown (``to_markdown``)."""
    cols = list(summary.columns)
    rows = [[str(name), *(f"{int(row[c])}" if c == "images" else f"{row[c]:.4f}"
                          for c in cols)] for name, row in summary.iterrows()]
    return pd.DataFrame(rows, columns=["cell type", *cols]).to_markdown(
        index=False, disable_numparse=True, colalign=["left"] + ["right"] * len(cols))


def _find_image(image_id: str, dirs: list[Path]) -> Path | None:
    return next((d / f"{image_id}.png" for d in dirs if (d / f"{image_id}.png").is_file()), None)


def _write_scores(result: Evaluation, out_dir: Path, sub_name: str, truth_csv: Path,
                  n_images: int, n_missing: int) -> list[Path]:
    """The per-image scores, the per-type summary (CSV) and the summary page (markdown),
    each written atomically; returns their paths."""
    with fileio.atomic_path(out_dir / SCORES_FILE) as tmp:
        result.table.to_csv(tmp, index=False, float_format="%.6f")
    with fileio.atomic_path(out_dir / SUMMARY_CSV) as tmp:
        result.summary.rename_axis("cell_type").to_csv(tmp, float_format="%.6f")
    header = (f"# Evaluation of {sub_name}\n\nTruth: {truth_csv} ({n_images} images"
              + (f"; {n_missing} without any prediction row, scored 0" if n_missing else "")
              + ").\n\nScore = mean over images of the mean precision over IoU thresholds "
              "0.50-0.95.\n\n")
    fileio.write_text(out_dir / SUMMARY_MD, header + result.markdown
                      + f"\n\nError analysis (misses, merges, splits, by size): "
                      f"{ERRORS_SUMMARY_MD}, per image {ERRORS_FILE}, IoU histogram "
                      f"{IOU_HIST}.\n")
    return [out_dir / SCORES_FILE, out_dir / SUMMARY_CSV, out_dir / SUMMARY_MD]


def evaluate_submission(
    submission: pd.DataFrame | str | os.PathLike,
    truth_csv: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    n_overlays: int = 3,
) -> Evaluation:
    """Score a submission with the competition metric against annotated images.

    Args:
        submission: the submission table or CSV path (``id,predicted``).
        truth_csv: annotations in ``train.csv`` format (id, annotation, width, height,
            cell_type, ...); image sizes and cell types come from it.
        out_dir: if set, write ``scores.csv`` (per image), ``summary.csv``, ``summary.md``,
            the error analysis ``errors.csv`` (per image), ``errors_summary.csv``,
            ``errors_summary.md``, ``iou_hist.png`` (IoU of every true cell per cell type) and
            ``overlays/{worst,best}_NN_<id>.png`` coloured by error kind (every file
            atomically).
        images_dir: folder of the images for the overlays; default: ``<truth_csv
            folder>/test``, then ``/train`` (whichever holds the image). Images not found are
            skipped with a warning.
        n_overlays: how many worst and how many best images to draw (0 = none).

    Returns:
        An :class:`Evaluation` (per-image table, summary, markdown, files written).

    Raises:
        DataError: unreadable truth CSV or annotation.
        SubmissionError: bad submission columns or RLE, overlapping masks, duplicate empty
            rows, or an id that is not in the truth CSV (all named by line and id).
    """
    truth_csv = Path(truth_csv)
    if out_dir is not None:
        fileio.require_folder(out_dir, "out_dir")  # before the work, not at the first write
    truth = read_train_csv(truth_csv)
    if isinstance(submission, pd.DataFrame):
        sub, sub_name, offset = submission, "submission", 0
    else:
        sub, sub_name, offset = read_submission(submission), str(submission), 2
    rows_of = truth.groupby("id", sort=False).indices
    first = truth.groupby("id", sort=False).first()
    shapes = {i: (int(first.at[i, "height"]), int(first.at[i, "width"])) for i in first.index}
    cell_types = first["cell_type"].astype(str).to_dict()
    check_table(sub, list(rows_of), shapes, name=sub_name, line_offset=offset,
                require_all=False, ids_name=f"images of {truth_csv.name}")
    sub_ids = sub["id"].astype(str).to_numpy()
    sub_pred = sub["predicted"].astype(object).where(sub["predicted"].notna(), "").astype(str)
    sub_pred = sub_pred.to_numpy()
    pred_rows = pd.Series(np.arange(len(sub_ids))).groupby(sub_ids, sort=False).indices
    annotations = truth["annotation"].to_numpy()

    def truth_of(image_id: str):
        return decode_annotations(annotations[rows_of[image_id]], shapes[image_id],
                                where=f"{truth_csv.name}, id {image_id}")

    def pred_of(image_id: str) -> np.ndarray:
        rows = pred_rows.get(image_id, np.zeros(0, np.int64))
        texts = [t for t in sub_pred[rows] if t.strip()]
        return labels_from_rles(texts, shapes[image_id], f"{sub_name}, id {image_id}")

    error_records: dict[str, ErrorRecord] = {}

    def records() -> Iterator[tuple[str, str, Truth, np.ndarray]]:
        for image_id in rows_of:
            pixels, pred = truth_of(image_id).pixels, pred_of(image_id)
            error_records[image_id] = error_analysis(pixels, pred)
            yield image_id, cell_types[image_id], pixels, pred

    try:
        table = score_table(records())
    except rle.RLEError as exc:  # checked above; kept so a message never loses its source
        raise SubmissionError(str(exc)) from None
    summary = summarize(table)
    markdown = summary_markdown(summary)
    errors = error_table((i, cell_types[i], error_records[i]) for i in rows_of)
    err_summary = error_summary(errors)
    result = Evaluation(table=table, summary=summary, markdown=markdown, errors=errors,
                        error_summary=err_summary,
                        error_markdown=error_summary_markdown(err_summary),
                        records=error_records)
    if out_dir is None:
        return result

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_missing = len(set(rows_of) - set(pred_rows))
    result.files += _write_scores(result, out_dir, sub_name, truth_csv, len(rows_of), n_missing)
    result.files += _write_errors(result, out_dir, sub_name, truth_csv, cell_types)
    if n_overlays > 0:
        result.files += _write_overlays(table, out_dir / OVERLAY_DIRNAME, n_overlays,
                                        images_dir, truth_csv, truth_of, pred_of,
                                        error_records)
    return result


def _write_errors(result: Evaluation, out_dir: Path, sub_name: str, truth_csv: Path,
                  cell_types: dict[str, str]) -> list[Path]:
    """The error-analysis tables and the IoU histogram per cell type."""
    from cellseg.metrics.error_analysis import MERGE_COVER, SIZE_LABELS, SPLIT_COVER
    from cellseg.viz import plot_iou_hist

    with fileio.atomic_path(out_dir / ERRORS_FILE) as tmp:
        result.errors.to_csv(tmp, index=False, float_format="%.6f")
    with fileio.atomic_path(out_dir / ERRORS_SUMMARY_CSV) as tmp:
        result.error_summary.to_csv(tmp, float_format="%.6f")
    header = (f"# Error analysis of {sub_name}\n\nTruth: {truth_csv}. A true cell is matched "
              f"when its IoU with one predicted cell is > 0.5 (one-to-one); FN = missed true "
              f"cells, FP = unmatched predicted cells. Merge: a predicted cell holding >= "
              f"{MERGE_COVER:.0%} of each of two or more true cells. Split: a true cell of "
              f"which two or more predicted cells each cover >= {SPLIT_COVER:.0%}. Counts are "
              f"summed over images; precision@0.5 = TP / (TP + FP), recall@0.5 = TP / "
              f"(TP + FN); size bins {', '.join(SIZE_LABELS)} pixels. Per image: "
              f"{ERRORS_FILE}.\n\n")
    fileio.write_text(out_dir / ERRORS_SUMMARY_MD, header + result.error_markdown + "\n")
    by_type: dict[str, list[ErrorRecord]] = {}
    for image_id, rec in result.records.items():
        by_type.setdefault(cell_types[image_id], []).append(rec)
    by_type = dict(sorted(by_type.items()))
    if len(by_type) > 1:
        by_type["overall"] = list(result.records.values())
    plot_iou_hist(by_type, out_dir / IOU_HIST)
    return [out_dir / ERRORS_FILE, out_dir / ERRORS_SUMMARY_CSV, out_dir / ERRORS_SUMMARY_MD,
            out_dir / IOU_HIST]


def _write_overlays(table: pd.DataFrame, folder: Path, n: int,
                    images_dir: str | os.PathLike | None, truth_csv: Path,
                    truth_of, pred_of, records: dict[str, ErrorRecord]) -> list[Path]:
    """Overlays coloured by error kind of the ``n`` worst images, then the ``n`` best of the
    rest."""
    from cellseg.viz import save_error_overlay

    dirs = ([Path(images_dir)] if images_dir is not None
            else [truth_csv.parent / "test", truth_csv.parent / "train"])
    order = table.sort_values(["score", "id"], kind="stable")["id"].tolist()
    worst = order[:n]
    best = [i for i in reversed(order) if i not in worst][:n]
    written, missing = [], []
    for tag, ids in (("worst", worst), ("best", best)):
        for rank, image_id in enumerate(ids, start=1):
            path = _find_image(image_id, dirs)
            if path is None:
                missing.append(image_id)
                continue
            image = read_image(path)
            inst = truth_of(image_id)
            if image.shape != inst.shape:
                raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]} (width x "
                                f"height), but {truth_csv.name} says "
                                f"{inst.shape[1]}x{inst.shape[0]}")
            out = folder / f"{tag}_{rank:02d}_{image_id}.png"
            save_error_overlay(out, image, inst.labels, pred_of(image_id), records[image_id])
            written.append(out)
    if missing:
        warnings.warn(f"no image file for {len(missing)} id(s) {missing[:3]} in "
                      f"{[str(d) for d in dirs]}: their overlays were skipped (pass --images)",
                      stacklevel=3)
    return written


__all__ = [
    "Evaluation",
    "evaluate_submission",
    "labels_from_rles",
    "summary_markdown",
]
