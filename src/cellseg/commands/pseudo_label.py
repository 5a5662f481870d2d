"""Pseudo-label unlabelled images with a trained experiment: ``python src/pseudo_label.py``.

    python src/pseudo_label.py --exp EXP --images DIR --out ROOT [--folds 0,1] [--config C]
        [--min-confidence X] [--min-type-prob P] [--min-kept-fraction F] [--cell-type T]
        [--heads H] [--tta identity,hflip] [--set k=v ...] [--overwrite] [--no-progress]

The fold ensemble with TTA predicts every image of DIR, each image gets its predicted cell
type and that type's tuned post-processing (``output/<exp>/postprocess.yaml``), and the cells
the ensemble is confident of are written as a data root usable as extra training data:
ROOT/train.csv (competition columns + ``confidence``), ROOT/train/<id>.png, ROOT/pseudo_images.csv
(every input image: type, probabilities, cells predicted / kept, written or why skipped) and
ROOT/source.json (experiment, folds, heads, TTA, post-processing, thresholds). A cell is kept
when its mean body probability is at least max(its type's tuned seed_threshold,
(1 + mask_threshold) / 2, --min-confidence) and it grew from a seed of its own (see
``cellseg.infer.pseudo_labels``).

The root is built in a temporary sibling of ROOT and swapped in when complete, so an
--overwrite that fails or is killed keeps the old root. An unreadable image is skipped and
listed in pseudo_images.csv with an ``error:`` line; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cellseg import fileio
from cellseg.cli import (
    DEFAULT_CONFIG,
    USER_ERRORS,
    int_list,
    name_list,
    print_error,
    resolve_experiment,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", help="experiment name (default: the config's name)")
    p.add_argument("--images", type=Path, required=True, help="folder of unlabelled images")
    p.add_argument("--out", type=Path, required=True, help="data root to write")
    p.add_argument("--folds", type=int_list, help="folds to ensemble, e.g. 0,1 "
                   "(default: infer.folds, or every trained fold)")
    p.add_argument("--config", default=None,
                   help=f"YAML config (default: {DEFAULT_CONFIG} if it exists); as for infer.py, "
                   "the experiment's saved config is the base")
    p.add_argument("--min-confidence", type=float, default=0.5,
                   help="lowest confidence kept, on top of each type's threshold from its tuned "
                   "post-processing (default: %(default)s)")
    p.add_argument("--min-type-prob", type=float, default=0.6,
                   help="skip images whose top cell-type probability is lower "
                   "(default: %(default)s)")
    p.add_argument("--min-kept-fraction", type=float, default=0.5,
                   help="skip images keeping fewer of their predicted cells "
                   "(default: %(default)s)")
    p.add_argument("--cell-type", help="force one cell type for every image")
    p.add_argument("--heads", help="mean | last | prune=L (default: infer.heads)")
    p.add_argument("--tta", type=name_list, help="TTA variants from identity,hflip,vflip,hvflip "
                   "(default: infer.tta)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the data root's files in a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cellseg.data.coco import check_root_out
    from cellseg.infer.pseudo_labels import PseudoLabelError, images_with_ids, pseudo_label

    raw_argv = list(sys.argv if argv is None else ["src/pseudo_label.py", *argv])
    bars: list = []
    try:
        for name in ("min_confidence", "min_type_prob", "min_kept_fraction"):
            value = getattr(args, name)
            if not 0.0 <= value <= 1.0:
                raise PseudoLabelError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        # cheap: fail on a bad folder or --out before TensorFlow starts
        images_with_ids(args.images)
        check_root_out(args.out, args.overwrite, protect=(args.images,),
                       error=PseudoLabelError)
        cfg, exp_dir, saved = resolve_experiment(args, folds=args.folds, announce=False)
        from cellseg.infer.ensemble import FoldEnsemble

        ens = FoldEnsemble.load(cfg, exp_dir, folds=args.folds, heads=args.heads, tta=args.tta,
                                cell_type=args.cell_type)
        print(f"experiment {exp_dir}: folds {ens.folds}, heads {ens.heads}, TTA {ens.tta}, "
              f"cell type from {ens.cell_type_source}", flush=True)

        def progress(n: int, total: int) -> None:
            if args.no_progress:
                return
            if not bars:
                from tqdm import tqdm
                bars.append(tqdm(total=total, unit="img", desc="pseudo-label"))
            bars[0].update(n)

        summary = pseudo_label(
            ens, args.images, args.out, exp_dir, min_confidence=args.min_confidence,
            min_type_prob=args.min_type_prob, min_kept_fraction=args.min_kept_fraction,
            overwrite=args.overwrite, progress=progress,
            provenance={"command": raw_argv, "exp": exp_dir.name,
                        "config": str(saved) if saved is not None else args.config})
    except USER_ERRORS as exc:
        for bar in bars:
            bar.close()
        bars.clear()
        return print_error(exc)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.out} is unchanged (the new root is written only when "
              f"complete); run the same command again", file=sys.stderr)
        return 130
    finally:
        for bar in bars:
            bar.close()
    print(fileio.printable(str(summary)))
    for msg in summary.errors:
        print(f"error: {msg} (skipped; listed in {args.out / 'pseudo_images.csv'})",
              file=sys.stderr)
    if summary.counts.get("images_written", 0) == 0:
        print("warning: no image was kept; lower --min-confidence / --min-type-prob / "
              "--min-kept-fraction or train longer", file=sys.stderr)
    return 2 if summary.errors else 0

