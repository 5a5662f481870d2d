"""Cross-validation folds: stratified by cell type, grouped by sample (no leakage).

Images of one ``sample_id`` (one well/plate series) look alike; if they sat on both sides of a
split the validation score would be optimistic. ``StratifiedGroupKFold`` keeps each sample in
one fold while balancing cell types across folds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from . import fileio
from .data import DataError

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
    for col in ("id", "cell_type", "sample_id"):
        if col not in images.columns:
            raise DataError(f"make_folds: column {col!r} missing (have {list(images.columns)})")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
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
        missing = folds.loc[folds["fold"] < 0, "id"].tolist()
        raise DataError(f"folds: {len(missing)} image(s) without a fold, e.g. {missing[:3]}")
    spans = folds.groupby("sample_id")["fold"].nunique()
    leaking = spans[spans > 1]
    if len(leaking):
        raise DataError(
            f"folds: sample_id {leaking.index[0]!r} appears in {leaking.iloc[0]} folds "
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
    folds = pd.read_csv(path, dtype={"id": str, "sample_id": str})
    for col in ("id", "fold"):
        if col not in folds.columns:
            raise DataError(f"{path}: column {col!r} missing (have {list(folds.columns)})")
    if ids is not None:
        missing = sorted(set(ids) - set(folds["id"]))
        if missing:
            raise DataError(
                f"{path}: {len(missing)} training image(s) have no fold, e.g. {missing[:3]}; "
                f"re-run make_folds.py after changing train.csv"
            )
    if "sample_id" in folds.columns:
        check_no_leakage(folds)
    return folds
