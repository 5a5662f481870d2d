"""Train one fold of the Attention UNet++: ``python src/train.py --fold 0``.

Trains on every fold but K (from ``<data root>/folds.csv``), validates on fold K, and writes
``output/<exp>/fold<K>/``: best/last models, config, history, curves and out-of-fold maps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cellseg.cli import USER_ERRORS, plain_warnings, print_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold", type=int, required=True, help="validation fold K")
    parser.add_argument("--config", default="configs/default.yaml",
                        help="YAML config (default: %(default)s)")
    parser.add_argument("--data-dir", help="data root (overrides data.root)")
    parser.add_argument("--exp", help="experiment name (default: the config's name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. "
                        "--set train.epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run of this fold (the old one is kept as "
                        "fold<K>.replaced until the new one finishes)")
    parser.add_argument("--init-from", metavar="MODEL.keras",
                        help="initialise from another experiment's model: layers of equal name "
                        "and shape are loaded, the rest re-initialised (sets train.init_from)")
    parser.add_argument("--extra-data", metavar="ROOT[:WEIGHT]", action="append", default=[],
                        help="another data root (competition layout) whose every image joins "
                        "training, drawn WEIGHT times as often as a main image (default 1); "
                        "folds stay on the main root (adds to data.extra; repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plain_warnings()
    from cellseg.config import check_config, load_config
    from cellseg.experiment import LAST_MODEL
    from cellseg.train import trainer

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.exp:
        overrides.append(f"name={args.exp}")
    if args.init_from:
        overrides.append(f"train.init_from={json.dumps(args.init_from)}")
    cfg = None
    try:
        cfg = load_config(args.config, overrides)
        if args.extra_data:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(
                cfg.data, extra=[*cfg.data.extra, *args.extra_data]))
            check_config(cfg)
        trainer.require_data(cfg)
        trainer.train_fold(cfg, args.fold, resume=args.resume, overwrite=args.overwrite)
    except USER_ERRORS as exc:
        return print_error(exc, end_stdout_line=True)
    except KeyboardInterrupt:
        if cfg is None:
            print("\ninterrupted", file=sys.stderr)
            return 130
        fold_dir = trainer.fold_dir_for(cfg, args.fold)
        again = " ".join(a for a in (sys.argv[1:] if argv is None else argv)
                         if a not in ("--overwrite", "--resume"))
        if (fold_dir / LAST_MODEL).is_file():
            print(f"\ninterrupted: the last finished epoch is saved in "
                  f"{fold_dir / LAST_MODEL}; continue with\n"
                  f"  python src/train.py {again} --resume", file=sys.stderr)
        else:
            print(f"\ninterrupted before the first epoch finished; nothing to resume in "
                  f"{fold_dir}", file=sys.stderr)
        return 130
    return 0

