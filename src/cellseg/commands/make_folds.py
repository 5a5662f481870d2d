"""Write ``<data-dir>/folds.csv``: folds stratified by cell type, grouped by sample_id."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from cellseg.cli import USER_ERRORS, print_error
from cellseg.constants import DEFAULT_DATA_DIR
from cellseg.data.data_root import DataError, TrainData
from cellseg.data.folds import FOLDS_FILENAME, make_folds, save_folds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="data root holding train.csv (default: %(default)s)")
    parser.add_argument("--n-folds", type=int, default=5, help="number of folds (default: 5)")
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (default: 42)")
    parser.add_argument("--out", default=None, help="output path (default: DATA_DIR/folds.csv)")
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    out = Path(args.out) if args.out else Path(args.data_dir) / FOLDS_FILENAME
    try:
        if out.is_dir():
            raise DataError(f"--out {out}: is a folder; expected the path of the folds CSV "
                            f"to write, e.g. {out / FOLDS_FILENAME}")
        if args.n_folds < 2:
            raise DataError(f"--n-folds must be >= 2, got {args.n_folds}")
        data = TrainData(args.data_dir)
        images = data.images
        if "sample_id" not in images.columns:
            raise DataError(f"{data.csv_path}: column 'sample_id' is needed to group folds")
        folds = make_folds(images, n_folds=args.n_folds, seed=args.seed)
        save_folds(folds, out)
    except USER_ERRORS as exc:
        return print_error(exc)
    table = folds.pivot_table(index="fold", columns="cell_type", values="id", aggfunc="count",
                              fill_value=0)
    table["samples"] = folds.groupby("fold")["sample_id"].nunique()
    print(f"wrote {out} ({len(folds)} images, {args.n_folds} folds, no sample in two folds)")
    print(table.to_string())
    return 0

