"""Visual report of an experiment: ``python src/report.py --exp demo``.

Writes ``output/<exp>/report/report.md`` with PNGs: data statistics (cell types, cells per
image), sample images with their true masks, training curves and fold results, tuned
post-processing, the evaluation's best / worst overlays and the ablation table. It only reads
files the pipeline already wrote (no model is run); missing parts are skipped with a note.
The logic lives in ``cellseg.evaluate.report.build_report``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from cellseg.cli import USER_ERRORS, print_error

os.environ.setdefault("MPLBACKEND", "Agg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", required=True, help="experiment name (output/<exp>)")
    parser.add_argument("--data-dir", help="data root with train.csv and train/ (default: the "
                        "experiment's saved data.root)")
    parser.add_argument("--out", help="report folder (default: <output-dir>/<exp>/report)")
    parser.add_argument("--output-dir", default="output",
                        help="where experiments live (default: %(default)s)")
    parser.add_argument("--eval-dir", help="evaluation folder with summary.md and overlays/ "
                        "(default: <output-dir>/<exp>/eval)")
    parser.add_argument("--ablation", default="bench/results/ablation.md",
                        help="ablation table to include (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1,
                        help="sample images per cell type (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="which sample images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cellseg import fileio
    from cellseg.ids import is_safe_id
    from cellseg.evaluate.report import build_report

    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    if args.samples < 0:
        print(f"error: --samples must be >= 0, got {args.samples}", file=sys.stderr)
        return 2
    if not is_safe_id(args.exp):
        # It becomes a folder name: output/<exp>/report is written and its PNGs replaced.
        print(f"error: --exp {args.exp!r}: expected an experiment name (letters, digits, "
              f"'_', '.', '-'; no path separators)", file=sys.stderr)
        return 2
    try:
        fileio.require_folder(args.output_dir, "--output-dir")
        out = Path(args.out) if args.out else Path(args.output_dir) / args.exp / "report"
        fileio.require_folder(out, "--out")
        report = build_report(args.exp, data_dir=args.data_dir, out_dir=args.out,
                              output_dir=args.output_dir, ablation=args.ablation,
                              eval_dir=args.eval_dir, n_samples=args.samples, seed=args.seed)
    except USER_ERRORS as exc:
        return print_error(exc)
    print(f"wrote {report.path} ({len(report.files) - 1} images; sections: "
          f"{', '.join(report.sections)})")
    for note in report.skipped:
        print(f"  skipped: {note}")
    return 0

