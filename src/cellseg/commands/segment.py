"""Segment your own images: ``python src/segment.py INPUTS... --exp EXP --out DIR``.

INPUTS are image files, folders or glob patterns (PNG, JPEG, TIFF; 8- or 16-bit; one or more
channels; any size). Per image NAME it writes DIR/NAME_labels.tif (0 = background, one id per
cell), DIR/NAME_cells.csv (one row per cell), DIR/NAME_overlay.png and, with --roi,
DIR/NAME_rois.zip (ImageJ ROIs for Fiji's ROI Manager and QuPath). Large images are
predicted in overlapping tiles and stitched without cutting cells. A re-run skips images
whose outputs all exist; --shard K/N runs one of N disjoint parts of the sorted list (e.g.
``--shard $SLURM_ARRAY_TASK_ID/10`` with ``--array=0-9``). The logic lives in
``cellseg.infer.segment_images``.

Each image's outputs are recorded in DIR/NAME_segment.json (input and model hashes, folds,
heads, TTA, scale, tiles, channel, tuned parameters, cell type); a re-run skips an image
only when that record matches the run and the files, and redoes it otherwise.

Exit status: 0 when every image was segmented or skipped, 2 on bad options or when any image
failed (each failure is an ``error:`` line naming the file; the others are still done), 130
after Ctrl-C (the summary of the finished images is written; re-run to finish).
"""

from __future__ import annotations

import argparse
import os
import sys

from cellseg import fileio
from cellseg.cli import (
    DEFAULT_CONFIG,
    USER_ERRORS,
    OneLineErrorParser,
    int_list,
    name_list,
    print_error,
    resolve_experiment,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from cellseg.infer.segment_images import DEFAULT_OVERLAP, DEFAULT_TILE

    p = OneLineErrorParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--exp", help="experiment name (output/<exp>; default: the config's name)")
    p.add_argument("--config", default=None,
                   help=f"YAML config (default: {DEFAULT_CONFIG} if it exists)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set infer.batch_size=1 (repeatable)")
    p.add_argument("--folds", type=int_list, help="folds to ensemble (default: infer.folds)")
    p.add_argument("--heads", help="mean | last | prune=L (default: infer.heads)")
    p.add_argument("--tta", type=name_list, help="TTA variants, e.g. identity,hflip")
    p.add_argument("--cell-type", help="force one cell type (shsy5y, astro, cort)")
    p.add_argument("--channel", type=int, help="channel to use of a multi-channel image "
                   "(0-based; default: luminance of RGB)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="resize factor to the training scale "
                      "(e.g. 0.5 for images at twice the training magnification)")
    size.add_argument("--cell-diameter", type=float, metavar="PX",
                      help="typical cell diameter in your images (px); the scale is the "
                      "training data's median diameter / PX")
    p.add_argument("--reference-diameter", type=float, metavar="PX",
                   help="median cell diameter of the training data, for --cell-diameter when "
                   "the data root is not at hand (default: computed from train.csv)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, metavar="PX",
                   help="tile side at model scale; 0 = whole image at once "
                   "(default: %(default)s)")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_OVERLAP, metavar="PX",
                   help="px shared by neighbouring tiles; cells up to about half of it from "
                   "centroid to edge are never cut (default: %(default)s)")
    p.add_argument("--roi", action="store_true", help="also write NAME_rois.zip (ImageJ ROIs)")
    p.add_argument("--recursive", action="store_true", help="look in sub-folders too")
    p.add_argument("--shard", metavar="K/N", help="segment only the K-th (0-based) of N "
                   "disjoint parts of the sorted input list")
    p.add_argument("--overwrite", action="store_true", help="redo images already done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _check_options(args: argparse.Namespace) -> None:
    """Every option a number can make absurd, before any file or model is read."""
    from cellseg.exceptions import SegmentError
    from cellseg.infer import segment_images as seg

    if args.scale is not None:
        seg.check_scale(args.scale)
    seg.check_positive(args.cell_diameter, "--cell-diameter")
    seg.check_positive(args.reference_diameter, "--reference-diameter")
    if args.tile < 0 or args.tile_overlap < 0:
        raise SegmentError("--tile and --tile-overlap must be >= 0")
    if args.tile and args.tile_overlap >= args.tile - 32:
        raise SegmentError(f"--tile-overlap {args.tile_overlap} must be smaller than "
                           f"--tile {args.tile} minus 32")
    if args.channel is not None and args.channel < 0:
        raise SegmentError(f"--channel must be >= 0, got {args.channel}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # before or after the image loop (the loop handles its own)
        print("\ninterrupted; the outputs already written are kept; run the same command "
              "again to finish", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from cellseg.infer import segment_images as seg

    try:
        _check_options(args)
        files = seg.collect_inputs(args.inputs, recursive=args.recursive)
        out = seg.check_out_dir(args.out, args.inputs, files, recursive=args.recursive)
        names = seg.unique_output_stems(files)
        summary_name = "segment_summary.csv"
        if args.shard:
            k, n = seg.parse_shard(args.shard)
            files = seg.shard(files, k, n)
            summary_name = f"segment_summary_shard{k}of{n}.csv"
        cfg, exp_dir, _ = resolve_experiment(args, folds=args.folds, announce=False)
        scale = args.scale if args.scale is not None else 1.0
        if args.cell_diameter is not None:
            ref = args.reference_diameter or seg.reference_diameter(cfg.data.root)
            scale = seg.check_scale(ref / args.cell_diameter,
                                    f"--cell-diameter {args.cell_diameter:g} (scale = "
                                    f"reference diameter {ref:.4g} / it)")
            print(f"scale {scale:.4g} = training median cell diameter {ref:.1f} px / "
                  f"{args.cell_diameter:g} px", flush=True)
        if not files:
            print(f"shard {args.shard}: no image in this part; nothing to do")
            return 0
        from cellseg.infer.ensemble import FoldEnsemble  # TensorFlow from here on

        ens = FoldEnsemble.load(cfg, exp_dir, folds=args.folds, heads=args.heads,
                                tta=args.tta, cell_type=args.cell_type)
        print(f"{len(files)} image(s) -> {out}; experiment {exp_dir}: folds {ens.folds}, "
              f"heads {ens.heads}, TTA {ens.tta}, cell type: {ens.cell_type_source}; scale "
              f"{scale:g}, tile {args.tile or 'whole image'}", flush=True)
        records = seg.run_segment(ens, files, out, names=names, channel=args.channel,
                                  scale=scale, tile=args.tile, overlap=args.tile_overlap,
                                  rois=args.roi, overwrite=args.overwrite,
                                  progress=not args.no_progress, summary_name=summary_name)
    except USER_ERRORS as exc:
        return print_error(exc)
    print(seg.format_summary(records), flush=True)
    big = [r for r in records if r.label_dtype == "uint32"]
    if big:
        print(f"note: {len(big)} label image(s) hold more than 65,535 cells and are uint32 "
              f"TIFFs (napari, QuPath and Fiji's Bio-Formats importer open them)")
    undone = [fileio.printable(r.name) for r in records if r.status == seg.NOT_DONE]
    if undone:
        print(f"interrupted: {len(undone)} image(s) not done ("
              + ", ".join(undone[:10]) + (", ..." if len(undone) > 10 else "")
              + f"); the summary of the finished ones is in {out / summary_name}; run the "
              f"same command again to finish", file=sys.stderr)
        return 130
    return 2 if any(r.status == "failed" for r in records) else 0

