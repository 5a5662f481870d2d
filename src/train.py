"""Train one fold of the Attention UNet++: ``python src/train.py --fold 0``.

Trains on every fold but K (from ``<data root>/folds.csv``), validates on fold K, and writes
``output/<exp>/fold<K>/``: best/last models, config, history, curves and out-of-fold maps.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
                        help="delete an existing run of this fold first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cellseg import training
    from cellseg.config import ConfigError, load_config
    from cellseg.data import DataError

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.exp:
        overrides.append(f"name={args.exp}")
    try:
        cfg = load_config(args.config, overrides)
        training.require_data(cfg)
        training.train_fold(cfg, args.fold, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, DataError, training.TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
