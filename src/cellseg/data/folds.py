"""Cross-validation folds: stratified by cell type, grouped by sample (no leakage).

Images of one ``sample_id`` (one well/plate series) look alike; if they sat on both sides of a
split the validation score would be optimistic. ``StratifiedGroupKFold`` keeps each sample in
one fold while balancing cell types across folds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.data.data_root import DataError, check_ids

FOLDS_FILENAME = "folds.csv"


def make_folds(images: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign a fold to every image.

    Args:
        images: one row per image with columns ``id``, ``cell_type``, ``sample_id``.
        n_folds: number of folds (>= 2).
        seed: shuffling seed.

    Returns:
        ``id, fold, cell_type, sample_id`` sorted by id.
    """
    # Imported here: sklearn costs seconds, and every reader of folds.csv imports this module.
    from sklearn.model_selection import StratifiedGroupKFold

    for col in ("id", "cell_type", "sample_id"):
        if col not in images.columns:
            raise DataError(f"make_folds: column {col!r} missing (have {list(images.columns)})")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(images) == 0:
        raise DataError("make_folds: no images; expected a train.csv with at least one row "
                        "per image")
    n_groups = images["sample_id"].nunique()
    if n_groups < n_folds:
        raise DataError(
            f"make_folds: {n_groups} distinct sample_id value(s) cannot fill {n_folds} folds "
            f"without splitting a sample; use --n-folds <= {n_groups}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    out = images[["id", "cell_type", "sample_id"]].copy().reset_index(drop=True)
    out["fold"] = -1
    for fold, (_, val_idx) in enumerate(
            splitter.split(out, out["cell_type"], groups=out["sample_id"])):
        out.loc[val_idx, "fold"] = fold
    check_no_leakage(out)
    return out[["id", "fold", "cell_type", "sample_id"]].sort_values("id").reset_index(drop=True)


def check_no_leakage(folds: pd.DataFrame) -> None:
    """Raise if any image lacks a fold or any sample_id spans two folds."""
    if (folds["fold"] < 0).any():
        missing = [str(i) for i in folds.loc[folds["fold"] < 0, "id"]]
        raise DataError(f"folds: {len(missing)} image(s) without a fold, e.g. {missing[:3]}")
    spans = folds.groupby("sample_id")["fold"].nunique()
    leaking = spans[spans > 1]
    if len(leaking):
        raise DataError(
            f"folds: sample_id {str(leaking.index[0])!r} appears in {int(leaking.iloc[0])} folds "
            f"({len(leaking)} leaking sample(s)); a sample must stay in one fold"
        )


def save_folds(folds: pd.DataFrame, path: str | os.PathLike) -> None:
    with fileio.atomic_path(path) as tmp:
        folds.to_csv(tmp, index=False)


def load_folds(path: str | os.PathLike, ids: list[str] | None = None) -> pd.DataFrame:
    """Read ``folds.csv``; with ``ids``, check it covers exactly those images."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: folds file not found; make it with "
            f"`python src/make_folds.py --data-dir {path.parent}`"
        )
    remake = f"`python src/make_folds.py --data-dir {path.parent}`"
    try:
        folds = pd.read_csv(path, dtype={"id": str, "sample_id": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; expected a header id,fold,... and one row per "
                        f"image; make it with {remake}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    for col in ("id", "fold"):
        if col not in folds.columns:
            raise DataError(f"{path}: column {col!r} missing (have {list(folds.columns)})")
    if len(folds) == 0:
        raise DataError(f"{path}: no data rows (header only); expected one row per image; "
                        f"make it with {remake}")
    folds = folds.reset_index(drop=True)
    check_ids(folds["id"], path)
    fold = pd.to_numeric(folds["fold"], errors="coerce")
    bad = fold.isna() | (fold < 0) | (fold != fold.round())
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {i + 2} (id {folds['id'].iloc[i]!r}): fold must be an "
                        f"integer >= 0, got {str(folds['fold'].iloc[i])!r} ({int(bad.sum())} "
                        f"row(s) affected)")
    folds["fold"] = fold.astype(np.int64)
    per_id = folds.groupby("id")["fold"].transform("nunique")
    if (per_id > 1).any():
        i = int(np.flatnonzero((per_id > 1).to_numpy())[0])
        raise DataError(f"{path}: row {i + 2}: image id {folds['id'].iloc[i]!r} is in "
                        f"{int(per_id.iloc[i])} folds; an image belongs to one fold")
    if ids is not None:
        missing = sorted(set(ids) - set(folds["id"]))
        if missing:
            raise DataError(
                f"{path}: {len(missing)} training image(s) have no fold, e.g. {missing[:3]}; "
                f"re-run make_folds.py after changing train.csv"
            )
        extra = sorted(set(folds["id"]) - set(ids))
        if extra:
            warnings.warn(f"{path}: {len(extra)} id(s) not in train.csv (ignored), e.g. "
                          f"{extra[:3]}; re-run {remake} after changing train.csv",
                          stacklevel=2)
    if "sample_id" in folds.columns:
        check_no_leakage(folds)
    return folds
