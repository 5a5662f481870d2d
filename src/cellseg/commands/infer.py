"""Predict the test images and write ``submission.csv``: ``python src/infer.py``.

Ensembles every trained fold of the experiment (``output/<exp>/fold<K>/best.keras``) with
test-time augmentation, picks each image's cell type with the whole-image classifiers saved
beside the fold models (the network's head only for experiments without them), decodes
instances with that type's tuned parameters (``output/<exp>/postprocess.yaml``) and writes a
validated submission atomically. All the logic lives in ``cellseg.infer.inference.run_inference``
(the Kaggle kernel calls it too); this script only parses options.

Config: when the experiment has a saved training config (``fold0/config.yaml``) it is the base
(model, default post-processing, data root, infer settings); an explicit ``--config`` replaces
its ``infer`` and ``tune`` sections, never its ``data`` (use ``--set data.root=...``);
``--set`` and the options below override last (cellseg.experiment.resolve_config).
"""

from __future__ import annotations

import argparse
import os

from cellseg.cli import (
    DEFAULT_CONFIG,
    USER_ERRORS,
    int_list,
    name_list,
    plain_warnings,
    print_error,
    resolve_experiment,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help=f"YAML config (default: {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--exp", help="experiment name (default: the config's name)")
    parser.add_argument("--data-dir", help="data root holding test/*.png "
                        "(default: the config's data.root)")
    parser.add_argument("--out", default="submission.csv",
                        help="submission file to write (default: %(default)s)")
    parser.add_argument("--folds", type=int_list, help="folds to ensemble, e.g. 0,1 "
                        "(default: infer.folds, or every trained fold)")
    parser.add_argument("--cell-type", help="force one cell type (shsy5y, astro, cort) for "
                        "every image; needed for models without a cell-type head")
    parser.add_argument("--heads", help="mean | last | prune=L (default: infer.heads)")
    parser.add_argument("--tta", type=name_list, help="comma-separated TTA variants from "
                        "identity,hflip,vflip,hvflip (default: infer.tta)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. "
                        "--set infer.batch_size=1 (repeatable)")
    parser.add_argument("--save-probs", metavar="DIR",
                        help="also write probability maps, DIR/<id>.npz (uint8)")
    parser.add_argument("--save-overlays", metavar="DIR",
                        help="also write overlay pictures, DIR/<id>.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plain_warnings()
    from cellseg.infer.inference import run_inference

    try:
        cfg, exp_dir, _ = resolve_experiment(args, folds=args.folds)
        run_inference(
            cfg, exp_dir,
            data_dir=args.data_dir or cfg.data.root,
            out_path=args.out,
            folds=args.folds,
            cell_type=args.cell_type,
            save_probs_dir=args.save_probs,
            save_overlays_dir=args.save_overlays,
            heads=args.heads,
            tta=args.tta,
            progress=not args.no_progress,
        )
    except USER_ERRORS as exc:
        return print_error(exc)
    return 0

