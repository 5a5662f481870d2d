"""Reading and validating a Sartorius-format data root.

Layout (docs/design.md section 2): ``train.csv`` (one row per cell), ``train/{id}.png``,
``test/{id}.png``, ``sample_submission.csv``. Nothing hard-codes 704 x 520: each image's size
comes from the CSV's
``width``/``height`` and is checked against the PNG.

Overlap rule: real annotations of one image overlap (the real sample has 3,354 pixels in 2-3
cells). A label image can hold one owner per pixel, so a contested pixel goes to the **smallest**
cell that claims it: small cells stay whole and a big neighbour loses a thin rim, which is how
the eye would split it. The contested pixels are kept as a boolean ``overlap`` map (training can
treat them as border), and the exact per-cell pixel sets are kept for the metric, which counts
a contested pixel for every true cell (docs/design.md section 3).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg.constants import CELL_TYPES, TRAIN_COLUMNS
from cellseg.data import rle
from cellseg.data.images import decode_file
from cellseg.exceptions import DataError
from cellseg.ids import SAFE_ID, check_image_id

#: What a derived data root was made from (``convert_coco.py``, ``pseudo_label.py``).
SOURCE_FILE = "source.json"


def check_ids(ids: pd.Series, path: str | os.PathLike, line_offset: int = 2) -> None:
    """Check every id of a CSV column once (:func:`check_image_id`), naming the first bad line.

    Args:
        ids: the id column, in file order.
        path: the CSV, for the message.
        line_offset: added to a 0-based row to give the editor's line (header = line 1).
    """
    values = ids.astype(str)
    ok = values.str.fullmatch(SAFE_ID.pattern).fillna(False).to_numpy(bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        check_image_id(values.iloc[i], f"{path}: row {i + line_offset}")


def _py(value: object) -> object:
    """A NumPy scalar as the Python value, so messages read ``192.5``, not ``np.float64(192.5)``."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class Instances:
    """The annotated cells of one image.

    Attributes:
        labels: int32 H x W, 0 = background, cell k (the k-th CSV row of the image) = k + 1;
            contested pixels belong to the smallest claiming cell.
        overlap: bool H x W, pixels claimed by two or more cells.
        pixels: per cell, the sorted flat (row-major) pixel indices of its full mask.
    """

    labels: np.ndarray
    overlap: np.ndarray
    pixels: list[np.ndarray]

    @property
    def n_cells(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]


def decode_annotations(annotations: list[str] | pd.Series, shape: tuple[int, int],
                     where: str = "", lines: list[int] | np.ndarray | None = None
                     ) -> Instances:
    """Decode the RLE rows of one image into an :class:`Instances` (vectorised).

    Args:
        annotations: RLE strings, one per cell, in CSV order.
        shape: (height, width).
        where: prefix for error messages, e.g. ``"train.csv, id 0030fd0e6378"``.
        lines: the CSV line of each annotation, so an error names the line to fix.
    """
    height, width = shape
    n_pixels = height * width
    pixels: list[np.ndarray] = []
    for k, text in enumerate(list(annotations)):
        cell = f"row {int(lines[k])}" if lines is not None else f"cell {k}"
        label = f"{where}, {cell}" if where else cell
        idx = rle.decode_indices(text, shape, label)
        if idx.size == 0:
            raise DataError(f"{label}: empty annotation (a training cell needs pixels)")
        pixels.append(idx)
    labels = np.zeros(n_pixels, np.int32)
    overlap = np.zeros(n_pixels, bool)
    if pixels:
        sizes = np.array([p.size for p in pixels], np.int64)
        all_idx = np.concatenate(pixels)
        owner = np.repeat(np.arange(len(pixels), dtype=np.int32), sizes)
        # Sort by pixel, then by cell size, so the first entry per pixel is the smallest cell.
        order = np.lexsort((sizes[owner], all_idx))
        all_idx, owner = all_idx[order], owner[order]
        first = np.ones(all_idx.size, bool)
        first[1:] = all_idx[1:] != all_idx[:-1]
        labels[all_idx[first]] = owner[first] + 1
        overlap[all_idx[~first]] = True
    return Instances(labels.reshape(shape), overlap.reshape(shape), pixels)


def read_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate ``train.csv`` (or a truth CSV in the same format).

    Checks: required columns, non-empty ids and annotations, positive integer width/height,
    one width/height and one cell type per image, known cell types.

    Returns:
        The table with ``width``/``height`` as int64 and a ``row`` column (0-based CSV row).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the competition's train.csv)")
    try:
        df = pd.read_csv(path, dtype={"id": str, "annotation": str, "cell_type": str},
                         keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; expected a header {','.join(TRAIN_COLUMNS)} "
                        f"and one row per annotated cell") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    required = ["id", "annotation", "width", "height", "cell_type"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}, "
            f"expected {list(TRAIN_COLUMNS)}"
        )
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (header only); expected one row per annotated "
                        f"cell: {','.join(TRAIN_COLUMNS)}")
    df = df.reset_index(drop=True)
    df["row"] = np.arange(len(df))

    def _bad(mask: pd.Series, what: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask.to_numpy())[0])
            raise DataError(
                f"{path}: row {i + 2} (id {df['id'].iloc[i]!r}): {what} "
                f"({int(mask.sum())} row(s) affected)"
            )

    _bad(df["id"].str.strip() == "", "empty id")
    check_ids(df["id"], path)
    _bad(df["annotation"].str.strip() == "", "empty annotation")
    for col in ("width", "height"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values < 1) | (values != values.round()) | (values > 2**31 - 1)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            _bad(bad, f"{col} must be a positive integer, got {_py(df[col].iloc[i])!r}")
        df[col] = values.astype(np.int64)
    _bad(~df["cell_type"].isin(CELL_TYPES), f"cell_type must be one of {list(CELL_TYPES)}")
    per_id = df.groupby("id", sort=False).agg(
        n_w=("width", "nunique"), n_h=("height", "nunique"), n_t=("cell_type", "nunique"))
    for col, what in (("n_w", "width"), ("n_h", "height"), ("n_t", "cell_type")):
        bad_ids = per_id.index[per_id[col] > 1]
        if len(bad_ids):
            raise DataError(
                f"{path}: image {bad_ids[0]!r} has {_py(per_id.loc[bad_ids[0], col])} "
                f"different {what} values; expected one per image ({len(bad_ids)} image(s) "
                f"affected)"
            )
    # Every annotation is checked here, once (~1 s for the real 73k rows), so a malformed RLE
    # stops any command before it trains, tunes or writes, naming the line to fix.
    ids = df["id"].to_numpy()
    rle.check_all(df["annotation"].to_numpy(),
                  (df["height"] * df["width"]).to_numpy(),
                  lambda i: f"{path}: row {i + 2} (id {ids[i]!r})")
    dup = df.duplicated(["id", "annotation"], keep="first")
    if dup.any():
        first = int(np.flatnonzero(dup.to_numpy())[0])
        warnings.warn(f"{path}: {int(dup.sum())} duplicated row(s) (same id and annotation), "
                      f"first at row {first + 2} (id {ids[first]!r}); a cell listed twice counts "
                      f"as two cells", stacklevel=2)
    return df


def read_image(path: str | os.PathLike, expected_shape: tuple[int, int] | None = None
               ) -> np.ndarray:
    """Read an 8-bit grayscale PNG as uint8 H x W, checking its size.

    A 3-channel file whose channels are equal (a gray image saved as RGB) is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    image = decode_file(path)
    if image is None:
        raise DataError(f"{path}: not a readable image (corrupt or not a PNG/TIFF/JPEG)")
    if image.dtype != np.uint8:
        raise DataError(f"{path}: expected 8-bit pixels, got {image.dtype}")
    if image.ndim == 3:
        if image.shape[2] in (3, 4) and np.array_equal(image[..., 0], image[..., 1]) \
                and np.array_equal(image[..., 1], image[..., 2]):
            image = np.ascontiguousarray(image[..., 0])
        else:
            raise DataError(
                f"{path}: expected a grayscale image, got {image.shape[2]} channels that differ"
            )
    if expected_shape is not None and image.shape != tuple(expected_shape):
        h, w = expected_shape
        raise DataError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} (width x height), "
            f"but the CSV says {w}x{h}"
        )
    return image


def list_png_ids(folder: str | os.PathLike) -> list[str]:
    """Sorted image ids (file stems) of the PNGs in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    return sorted(p.stem for p in folder.glob("*.png"))


class TrainData:
    """A validated training data root: image ids, cell types, images and instances."""

    def __init__(self, root: str | os.PathLike, csv_name: str = "train.csv",
                 image_dir: str = "train") -> None:
        self.root = Path(root)
        self.csv_path = self.root / csv_name
        self.image_dir = self.root / image_dir
        self.table = read_train_csv(self.csv_path)
        groups = self.table.groupby("id", sort=False).indices
        self._rows: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in groups.items()}
        self.ids: list[str] = list(self._rows)

    @cached_property
    def images(self) -> pd.DataFrame:
        """One row per image: id, cell_type, width, height, sample_id (if present), n_cells."""
        first = self.table.groupby("id", sort=False).first()
        out = pd.DataFrame({
            "id": first.index.astype(str),
            "cell_type": first["cell_type"].to_numpy(),
            "width": first["width"].to_numpy(),
            "height": first["height"].to_numpy(),
            "n_cells": [len(self._rows[i]) for i in first.index],
        })
        if "sample_id" in first.columns:
            out["sample_id"] = first["sample_id"].astype(str).to_numpy()
        return out.reset_index(drop=True)

    def rows(self, image_id: str) -> np.ndarray:
        """The table rows (cells) of ``image_id``; DataError naming the CSV when it has none."""
        try:
            return self._rows[image_id]
        except KeyError:
            raise DataError(f"{self.csv_path}: no rows for image id {image_id!r}") from None

    def shape(self, image_id: str) -> tuple[int, int]:
        row = self.table.iloc[self.rows(image_id)[0]]
        return int(row["height"]), int(row["width"])

    def cell_type(self, image_id: str) -> str:
        return str(self.table["cell_type"].iloc[self.rows(image_id)[0]])

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.png"

    def load_image(self, image_id: str) -> np.ndarray:
        return read_image(self.image_path(image_id), self.shape(image_id))

    def load_instances(self, image_id: str) -> Instances:
        rows = self.rows(image_id)
        return decode_annotations(self.table["annotation"].to_numpy()[rows], self.shape(image_id),
                                where=f"{self.csv_path}, id {image_id}",
                                lines=self.table["row"].to_numpy()[rows] + 2)

    def check_images(self) -> None:
        """Fail early, naming the file, if any image is missing or has the wrong size."""
        for image_id in self.ids:
            path = self.image_path(image_id)
            if not path.is_file():
                raise DataError(f"{path}: image file not found (id listed in {self.csv_path})")
            header = decode_file(path)
            if header is None:
                raise DataError(f"{path}: not a readable image")
            if header.shape[:2] != self.shape(image_id):
                h, w = self.shape(image_id)
                raise DataError(
                    f"{path}: image is {header.shape[1]}x{header.shape[0]} (width x height), "
                    f"but {self.csv_path.name} says {w}x{h}"
                )
