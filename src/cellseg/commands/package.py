"""Package a trained experiment for the offline Kaggle kernel: ``python src/package.py --exp NAME``.

Builds an upload-ready dataset folder (default ``output/kaggle_dataset/<exp>``) holding the
``cellseg`` source, ``configs/``, ``models/<exp>/fold<K>/{best.keras,config.yaml,result.json}``,
the tuned ``postprocess.yaml`` and ``dataset-metadata.json``; optionally ``wheels/`` for an
offline pip install. Then::

    kaggle datasets create -p output/kaggle_dataset/<exp> --dir-mode zip
    kaggle kernels push -p kernels/infer

All the logic lives in ``cellseg.deploy.kaggle.build_package``; this script only parses options.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from cellseg.cli import (
    DEFAULT_CONFIG,
    REPO,
    USER_ERRORS,
    default_config_path,
    int_list,
    print_error,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", help="experiment to package, output/<exp> (default: the "
                        "config's name)")
    parser.add_argument("--config", default=None, help="YAML config that locates the "
                        f"experiment (output_dir, name); default: {DEFAULT_CONFIG} if it exists")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. "
                        "--set output_dir=/big/disk (repeatable)")
    parser.add_argument("--out", help="package folder to create (default: "
                        "<output_dir>/kaggle_dataset/<exp>)")
    parser.add_argument("--folds", type=int_list, help="folds to package, e.g. 0,1 "
                        "(default: every trained fold)")
    parser.add_argument("--dataset-id", help="Kaggle dataset id 'user/slug' (default: "
                        "$KAGGLE_USERNAME/cellseg-<exp>, or a placeholder user)")
    parser.add_argument("--title", help="dataset title, 6-50 characters (default: "
                        "'cellseg models <exp>')")
    parser.add_argument("--license", default="CC0-1.0", help="dataset license name Kaggle "
                        "accepts (default: %(default)s)")
    parser.add_argument("--wheels", action="store_true", help="also `pip download` the "
                        "kernel's requirements into wheels/ for an offline pip install in the "
                        "kernel (needs the internet now, not in the kernel)")
    parser.add_argument("--wheel-req", metavar="FILE", help="with --wheels: requirements file "
                        "to download, every line kept (default: requirements.txt without "
                        "tensorflow, optuna and test tools)")
    parser.add_argument("--wheel-python", metavar="X.Y", help="with --wheels: Python version "
                        "of the Kaggle image, e.g. 3.11 (default: this interpreter's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing package folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cellseg.config import load_config
    from cellseg.deploy.kaggle import PackagingError, build_package
    from cellseg.deploy.wheels import kernel_requirements

    caught: list[warnings.WarningMessage] = []
    try:
        config_path = default_config_path(args.config)
        overrides = list(args.overrides) + ([f"name={args.exp}"] if args.exp else [])
        cfg = load_config(config_path, overrides)
        exp_dir = cfg.experiment_dir()
        out = Path(args.out) if args.out else Path(cfg.output_dir) / "kaggle_dataset" / cfg.name
        configs = sorted((REPO / "configs").glob("*.yaml"))
        if config_path is not None:
            configs.append(Path(config_path))
        requirements: list[str] = []
        if args.wheels:
            requirements = (kernel_requirements(args.wheel_req, exclude=()) if args.wheel_req
                            else kernel_requirements(REPO / "requirements.txt"))
        elif args.wheel_req or args.wheel_python:
            raise PackagingError("--wheel-req and --wheel-python only apply with --wheels")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = build_package(
                exp_dir, out, folds=args.folds, configs=configs, dataset_id=args.dataset_id,
                title=args.title, license_name=args.license, wheels=args.wheels,
                requirements=requirements, wheel_python=args.wheel_python,
                overwrite=args.overwrite)
    except USER_ERRORS as exc:
        return print_error(exc)
    finally:
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    print(f"packaged experiment '{summary.exp}' folds {summary.folds} -> {summary.out_dir} "
          f"({summary.n_files} files, {summary.n_bytes / 2**20:.1f} MiB"
          f"{', tuned postprocess.yaml' if summary.has_postprocess else ''}"
          f"{f', {summary.n_wheels} wheels' if args.wheels else ''})")
    print(f"dataset id {summary.dataset_id}; upload with:\n"
          f"  kaggle datasets create -p {summary.out_dir} --dir-mode zip\n"
          f"  (new version: kaggle datasets version -p {summary.out_dir} --dir-mode zip "
          f"-m \"...\")\n"
          f"then set dataset_sources to [\"{summary.dataset_id}\"] in "
          f"kernels/infer/kernel-metadata.json and run: kaggle kernels push -p kernels/infer")
    return 0

