"""Write a synthetic data root in the Sartorius competition's layout.

    python src/make_synthetic.py --out DIR [--n-train N] [--n-test M] [--seed S]
                                 [--height H] [--width W] [--count-scale F] [--overwrite]

Writes train.csv, train/*.png, test/*.png, sample_submission.csv and test_truth.csv (see
``cellseg.data.synthetic``), then prints per-type counts and sizes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellseg.data.synthetic import make_dataset


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, if empty (children listed before parents)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or never made: leave it
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="data root to write")
    p.add_argument("--n-train", type=int, default=60, help="training images (default 60)")
    p.add_argument("--n-test", type=int, default=12, help="test images (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=520)
    p.add_argument("--width", type=int, default=704)
    p.add_argument("--scale", type=float, default=None,
                   help="cell size vs a 704x520 image (default: follows the image size)")
    p.add_argument("--count-scale", type=float, default=1.0,
                   help="multiply cells per image (e.g. 0.3 for fast sparse images)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the data root's files in a non-empty --out")
    args = p.parse_args(argv)

    for name, value in (("--scale", args.scale), ("--count-scale", args.count_scale)):
        if value is not None and not value > 0:  # also NaN
            print(f"error: {name} must be > 0, got {value}", file=sys.stderr)
            return 2

    from tqdm import tqdm

    bars: list[tqdm] = []
    # Folders this run creates; removed again if it fails while they are still empty.
    created = [d for d in (args.out / "train", args.out / "test", args.out, *args.out.parents)
               if not d.exists()]

    def progress(n: int) -> None:
        # Opened on the first image, so argument errors print without an empty bar.
        if not bars:
            bars.append(tqdm(total=args.n_train + args.n_test, unit="img", desc="synthetic"))
        bars[0].update(n)

    try:
        summary = make_dataset(args.out, n_train=args.n_train, n_test=args.n_test,
                               seed=args.seed, height=args.height, width=args.width,
                               scale=args.scale, count_scale=args.count_scale,
                               overwrite=args.overwrite, progress=progress)
    except (ValueError, OSError, MemoryError) as e:
        print(f"error: {e or type(e).__name__}", file=sys.stderr)
        _remove_empty(created)
        return 2
    finally:
        for bar in bars:
            bar.close()
    print(summary)
    return 0

