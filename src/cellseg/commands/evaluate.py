"""Score a submission against annotations: ``python src/evaluate.py --submission FILE --truth CSV``.

Prints the competition metric overall, per cell type and per IoU threshold, and the error
analysis (misses, false positives, merges, splits, by cell size, matched IoU), and writes
``scores.csv`` (per image), ``summary.csv``, ``summary.md``, ``errors.csv`` (per image),
``errors_summary.csv``, ``errors_summary.md``, ``iou_hist.png`` and overlays of the worst and
best images coloured by error kind to ``--out`` (default: ``<submission folder>/<submission
name>_eval``). The logic lives in ``cellseg.evaluate.submission_score.evaluate_submission``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cellseg.cli import USER_ERRORS, print_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submission", required=True, help="submission CSV (id,predicted)")
    parser.add_argument("--truth", required=True,
                        help="annotations in train.csv format (e.g. a held-out train.csv)")
    parser.add_argument("--out", help="output folder (default: <submission folder>/"
                        "<submission name>_eval)")
    parser.add_argument("--images", help="image folder for the overlays (default: "
                        "<truth folder>/test, then <truth folder>/train)")
    parser.add_argument("--n-overlays", type=int, default=3,
                        help="worst and best images to draw (default: %(default)s; 0 = none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n_overlays < 0:
        print(f"error: --n-overlays must be >= 0, got {args.n_overlays}", file=sys.stderr)
        return 2
    from cellseg import fileio
    from cellseg.evaluate.submission_score import evaluate_submission

    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    submission = Path(args.submission)
    out = Path(args.out) if args.out else submission.parent / f"{submission.stem}_eval"
    try:
        fileio.require_folder(out, "--out")
        result = evaluate_submission(submission, args.truth, out_dir=out,
                                     images_dir=args.images, n_overlays=args.n_overlays)
    except USER_ERRORS as exc:
        return print_error(exc)
    print(result.markdown)
    print()
    print(result.error_markdown)
    print(f"\nscore {result.score:.4f} over {len(result.table)} images; "
          f"{len(result.files)} files written to {out}")
    return 0

