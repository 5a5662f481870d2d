"""The competition's ``submission.csv``: build, write atomically, validate.

Format (docs/design.md section 2): columns ``id,predicted``; one row per predicted cell, its mask as
RLE (1-indexed starts, row-major pixels, sorted non-overlapping runs inside the image); every
test id appears, with one empty ``predicted`` when the image has no cell. The competition's
checker also rejects two masks of one image that share a pixel.

Why validate locally: a malformed file costs a Kaggle submission (and ~an hour of GPU kernel
time) before the error shows. :func:`validate_submission` applies the checker's rules and
names the line, id and problem. :func:`write_submission` streams rows into a temporary file
beside the target,
validates it, and only then renames it into place, so an invalid or interrupted run never leaves
a half-written ``submission.csv`` or replaces a good one.

Nothing here imports TensorFlow: validating a file takes a second, not a TF start-up.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.constants import SUBMISSION_COLUMNS
from cellseg.data import rle
from cellseg.data.data_root import DataError, list_png_ids
from cellseg.data.images import image_size
from cellseg.exceptions import SubmissionError

# A limit for RLE parsing when the image size is unknown (ids given without shapes).
_UNBOUNDED = np.iinfo(np.int64).max // 4


@dataclass
class SubmissionSummary:
    """What a valid submission holds.

    Attributes:
        n_rows: data rows (header excluded).
        n_images: distinct image ids.
        n_masks: non-empty predictions.
        n_empty_images: images with only an empty prediction.
        n_pixels: pixels covered by all masks together.
    """

    n_rows: int
    n_images: int
    n_masks: int
    n_empty_images: int
    n_pixels: int


# ------------------------------------------------------------------------------ image sizes
def folder_image_shapes(test_dir: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``{image id: (height, width)}`` of every ``*.png`` in ``test_dir`` (sorted ids).

    Raises:
        DataError: the folder is missing, holds no PNG, or an image header is unreadable.
    """
    test_dir = Path(test_dir)
    ids = list_png_ids(test_dir)
    if not ids:
        raise DataError(f"{test_dir}: no *.png test images in this folder")
    return {i: image_size(test_dir / f"{i}.png") for i in ids}


# ------------------------------------------------------------------------------ reading
def _is_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission CSV as strings (empty predictions stay ``""``, never NaN).

    Raises:
        SubmissionError: missing or unparsable file.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: submission file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise SubmissionError(f"{path}: empty file; expected a header 'id,predicted'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path}: not a readable CSV ({exc})") from None


def _as_frame(df_or_path: pd.DataFrame | str | os.PathLike) -> tuple[pd.DataFrame, str, int]:
    """(table, name for messages, offset from 0-based row to the reported line number)."""
    if _is_path(df_or_path):
        # Line numbers as an editor shows them: header = line 1, first row = line 2.
        return read_submission(df_or_path), str(df_or_path), 2
    if isinstance(df_or_path, pd.DataFrame):
        return df_or_path, "submission", 0
    raise TypeError(f"validate: expected a DataFrame or a path, got {type(df_or_path).__name__}")


def _check_columns(df: pd.DataFrame, name: str) -> None:
    cols = [str(c) for c in df.columns]
    if cols != list(SUBMISSION_COLUMNS):
        raise SubmissionError(
            f"{name}: columns are {cols}; expected exactly {list(SUBMISSION_COLUMNS)} in that order"
        )


def _strings(series: pd.Series) -> np.ndarray:
    """Object array of str; NaN/None (a DataFrame built in memory) become ``""``."""
    return series.astype(object).where(series.notna(), "").astype(str).to_numpy()


# ------------------------------------------------------------------------------ validation
def _check_image(
    image_id: str,
    rows: np.ndarray,
    preds: np.ndarray,
    empty: np.ndarray,
    shape: tuple[int, int] | None,
    where_row,
    line_of,
) -> tuple[int, int]:
    """Check the rows of one image; returns (number of masks, pixels covered)."""
    n_empty = int(empty[rows].sum())
    n_masks = rows.size - n_empty
    if n_empty > 1:
        dup = rows[empty[rows]]
        raise SubmissionError(
            f"{where_row(dup[1])}: duplicate empty prediction for image {image_id!r} "
            f"(also {line_of(dup[0])}); expected at most one empty row per image"
        )
    if n_empty and n_masks:
        e = rows[empty[rows]][0]
        raise SubmissionError(
            f"{where_row(e)}: empty prediction for image {image_id!r}, which also has "
            f"{n_masks} mask(s); an empty row is only for an image with no cell"
        )
    if n_masks == 0:
        return 0, 0
    mask_rows = rows[~empty[rows]]
    n_pixels = shape[0] * shape[1] if shape is not None else _UNBOUNDED
    pieces = []
    for r in mask_rows:
        try:
            starts, lengths = rle.parse(preds[r], n_pixels, where_row(r))
        except rle.RLEError as exc:
            raise SubmissionError(str(exc)) from None
        pieces.append(rle.pixel_indices(starts, lengths))
    sizes = np.array([p.size for p in pieces], np.int64)
    idx = np.concatenate(pieces)
    # One pass over the image's pixels finds every pixel claimed twice.
    if shape is not None:
        counts = np.bincount(idx, minlength=n_pixels)
        shared = np.flatnonzero(counts > 1)
    else:
        uniq, counts = np.unique(idx, return_counts=True)
        shared = uniq[counts > 1]
    if shared.size:
        pixel = int(shared[0])
        owner = np.repeat(mask_rows, sizes)
        a, b = owner[idx == pixel][:2]
        where_px = f"pixel {pixel + 1}"
        if shape is not None:
            where_px += f" (row {pixel // shape[1]}, column {pixel % shape[1]})"
        raise SubmissionError(
            f"{where_row(b)}: mask overlaps the mask on {line_of(a)} of image {image_id!r} "
            f"at {where_px}; {shared.size} pixel(s) of this image are in more than one mask. "
            f"Masks of one image must not overlap"
        )
    return n_masks, int(idx.size)


def check_table(
    df: pd.DataFrame,
    ids: Iterable[str] | None,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    name: str = "submission",
    line_offset: int = 0,
    require_all: bool = True,
    ids_name: str = "test images",
) -> SubmissionSummary:
    """The checks of :func:`validate_submission` on a table in memory (also used by the evaluator).

    Args:
        df: the submission table.
        ids: the image ids allowed (and, with ``require_all``, required); None = any id.
        shapes: ``{id: (height, width)}``; masks are checked to lie inside their image when
            the id is here.
        name: file name for messages.
        line_offset: added to a 0-based row to give the line number reported.
        require_all: every id of ``ids`` must have at least one row.
        ids_name: what ``ids`` are, for messages (e.g. ``"images of truth.csv"``).

    Returns:
        A :class:`SubmissionSummary`.

    Raises:
        SubmissionError: the first problem found, naming its line and image id.
    """
    _check_columns(df, name)
    sub_ids = _strings(df["id"])
    preds = _strings(df["predicted"])
    label = "line" if line_offset else "row"

    def line_of(r: int) -> str:
        return f"{label} {int(r) + line_offset}"

    def where_row(r: int) -> str:
        return f"{name} {line_of(r)} (id {sub_ids[r]!r})"

    blank = np.char.strip(sub_ids.astype(str)) == "" if sub_ids.size else np.zeros(0, bool)
    if blank.any():
        raise SubmissionError(f"{where_row(int(np.flatnonzero(blank)[0]))}: empty image id")
    allowed = None if ids is None else set(ids)
    groups = pd.Series(np.arange(len(sub_ids))).groupby(sub_ids, sort=False).indices
    if allowed is not None:
        unknown = [i for i in groups if i not in allowed]
        if unknown:
            first = int(groups[unknown[0]][0])
            raise SubmissionError(
                f"{where_row(first)}: image id not among the {len(allowed)} {ids_name} "
                f"({len(unknown)} unknown id(s): {sorted(unknown)[:5]})"
            )
        if require_all:
            missing = sorted(allowed - set(groups))
            if missing:
                raise SubmissionError(
                    f"{name}: {len(missing)} id(s) of the {ids_name} have no row, e.g. "
                    f"{missing[:5]}; every test id needs a row (an empty prediction if no "
                    f"cell was found)"
                )
    empty = np.char.strip(preds.astype(str)) == "" if preds.size else np.zeros(0, bool)
    n_masks = n_px = n_empty_images = 0
    for image_id, rows in groups.items():
        shape = shapes.get(image_id) if shapes is not None else None
        m, p = _check_image(image_id, np.asarray(rows), preds, empty, shape, where_row,
                            line_of)
        n_masks += m
        n_px += p
        n_empty_images += int(m == 0)
    return SubmissionSummary(n_rows=len(sub_ids), n_images=len(groups), n_masks=n_masks,
                             n_empty_images=n_empty_images, n_pixels=n_px)


def validate_submission(
    df_or_path: pd.DataFrame | str | os.PathLike,
    test_dir_or_ids: str | os.PathLike | Iterable[str],
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> SubmissionSummary:
    """Check a submission the way the competition's checker does.

    Rules: columns exactly ``id,predicted``; every test id present and no other id;
    each prediction empty or a valid RLE (integer start/length pairs, starts >= 1, lengths >= 1,
    sorted, no run overlapping another, inside the image); no two masks of one image sharing a
    pixel; at most one empty row per image, and only for an image with no mask.

    Per image, all masks are decoded to flat pixel indices, concatenated, and shared pixels
    found with one ``bincount`` (no pairwise mask comparison).

    Args:
        df_or_path: the submission table or its CSV path.
        test_dir_or_ids: the test image folder (ids = PNG stems, sizes from PNG headers) or
            the test ids.
        shapes: ``{id: (height, width)}``; overrides sizes read from the folder. With ids and
            no shapes, masks are not checked against an image size.

    Returns:
        A :class:`SubmissionSummary` of the valid file.

    Raises:
        SubmissionError: the first problem, naming the line, image id and what was expected.
        DataError: the test folder is missing or an image header is unreadable.
    """
    df, name, offset = _as_frame(df_or_path)
    if _is_path(test_dir_or_ids):
        folder_shapes = folder_image_shapes(test_dir_or_ids)
        ids: list[str] = list(folder_shapes)
        merged = {**folder_shapes, **(dict(shapes) if shapes else {})}
    else:
        ids = [str(i) for i in test_dir_or_ids]
        if not ids:
            raise SubmissionError("validate: no test ids given")
        merged = dict(shapes) if shapes else {}
    return check_table(df, ids, merged, name=name, line_offset=offset, require_all=True)


# ------------------------------------------------------------------------------ writing
def image_rows(image_id: str, rles: Iterable[str]) -> Iterator[tuple[str, str]]:
    """The submission rows of one image: one per mask, or one empty row when it has none."""
    n = 0
    for text in rles:
        n += 1
        yield image_id, text
    if n == 0:
        yield image_id, ""


def write_submission(
    rows: Iterable[tuple[str, str]],
    path: str | os.PathLike,
    test_dir: str | os.PathLike | Iterable[str],
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> SubmissionSummary:
    """Stream ``(id, predicted)`` rows to ``path``, validate, then rename into place.

    Rows go to a temporary file in the destination folder as they come (memory stays flat for
    any number of cells); the finished temporary file is validated with
    :func:`validate_submission` and only then renamed onto ``path``. If the rows' producer
    raises (a corrupt test image, Ctrl-C) or validation fails, the temporary file is deleted
    and an existing ``path`` is untouched.

    Args:
        rows: ``(image id, RLE or "")`` pairs, e.g. from :func:`image_rows`.
        path: the submission to write (usually ``submission.csv``).
        test_dir: the test image folder, or the test ids (see :func:`validate_submission`).
        shapes: ``{id: (height, width)}`` when already known (saves reading PNG headers).

    Returns:
        The :class:`SubmissionSummary` of the written file.

    Raises:
        SubmissionError: the streamed rows do not form a valid submission.
    """
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(SUBMISSION_COLUMNS)
            for image_id, predicted in rows:
                writer.writerow((image_id, predicted))
        try:
            summary = validate_submission(tmp, test_dir, shapes)
        except SubmissionError as exc:
            raise SubmissionError(
                f"not writing {path}: the generated submission is invalid: "
                f"{str(exc).replace(str(tmp), path.name)}"
            ) from None
    return summary


__all__ = [
    "SubmissionError",
    "SubmissionSummary",
    "check_table",
    "image_rows",
    "read_submission",
    "folder_image_shapes",
    "validate_submission",
    "write_submission",
]
