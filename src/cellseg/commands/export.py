"""Export a trained experiment: ``python src/export.py --exp EXP --out DIR``.

Writes DIR/saved_model/ (TensorFlow SavedModel: TF Serving, DeepImageJ), DIR/model.onnx
(tf2onnx), DIR/postprocess.yaml (the per-cell-type post-processing parameters),
DIR/export.json and DIR/README.md (input normalisation, output channels, checks). Each
exported file is run on a synthetic test image and compared with Keras; the largest
absolute difference is printed and must be <= 1e-4. --bioimageio adds a bioimage.io model
package (format 0.5: DIR/bioimageio/ and DIR/bioimageio.zip, cellseg.deploy.bioimageio),
checked with `bioimageio test` when bioimageio.core is installed. The logic lives in
``cellseg.deploy.export``.

Exit status: 0 when every export reproduces Keras, 2 on bad options or a failed check.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cellseg.cli import (
    DEFAULT_CONFIG,
    USER_ERRORS,
    OneLineErrorParser,
    int_list,
    print_error,
    resolve_experiment,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", help="experiment name (output/<exp>; default: the config's name)")
    p.add_argument("--out", required=True, help="output folder (empty or new)")
    p.add_argument("--config", default=None,
                   help=f"YAML config (default: {DEFAULT_CONFIG} if it exists)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--folds", type=int_list, help="folds to ensemble (default: infer.folds)")
    p.add_argument("--heads", help="mean | last | prune=L (default: infer.heads)")
    p.add_argument("--no-onnx", action="store_true", help="SavedModel only")
    p.add_argument("--bioimageio", action="store_true",
                   help="also write a bioimage.io model package (DIR/bioimageio/ and "
                        "DIR/bioimageio.zip) and run `bioimageio test` on it if installed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = Path(args.out)
        if args.bioimageio and args.no_onnx:
            raise ValueError("--bioimageio needs the ONNX weights; drop --no-onnx")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: exists and is not a folder")
        from cellseg import fileio

        fileio.recover_folder(out)  # a swap that a killed run left half-way
        fileio.require_writable_folder(out, "--out")
        fileio.require_writable_folder(out.absolute().parent, "--out's parent")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise ValueError(f"--out {out} is not empty; pass --overwrite to replace it")
        cfg, exp_dir, _ = resolve_experiment(args, folds=args.folds, announce=False)
        from cellseg.deploy.export import export_experiment
        from cellseg.infer.ensemble import FoldEnsemble  # TensorFlow from here on

        ens = FoldEnsemble.load(cfg, exp_dir, folds=args.folds, heads=args.heads,
                                warn_untuned=False)
        print(f"experiment {exp_dir}: folds {ens.folds}, heads {ens.heads} -> {out}",
              flush=True)
        export_experiment(ens, cfg, exp_dir, out, onnx=not args.no_onnx,
                          overwrite=args.overwrite, bioimageio=args.bioimageio)
    except USER_ERRORS as exc:
        return print_error(exc)
    print(f"wrote {out} (README.md there says how to use it)")
    return 0

