"""Convert a COCO instance dataset (e.g. LIVECell) into a data root in the competition layout.

    python src/convert_coco.py --images DIR --annotations FILE.json --out ROOT
        (--cell-type T | --cell-type-from-filename | --cell-type-from-category)
        [--map LINE=TYPE ...] [--skip-unmapped] [--keep-crowd] [--overwrite] [--no-progress]
    python src/convert_coco.py --to-coco ROOT --annotations FILE.json [--uncompressed]
        [--overwrite]

Writes ROOT/train.csv (one row-major RLE per cell), ROOT/train/<id>.png (8-bit grayscale; 16-bit
or float images are scaled between their 0.5 and 99.5 percentiles) and ROOT/source.json (command,
inputs, counts, date). Polygons, uncompressed and compressed RLE are read; overlapping cells keep
their own masks. ``--cell-type-from-filename`` reads LIVECell's cell line from the file name
(``SHSY5Y_Phase_...`` -> shsy5y); the kit knows only shsy5y, astro and cort, so other lines need
``--map A172=astro`` or ``--skip-unmapped``. ``--to-coco`` writes the reverse (a data root as
COCO json with compressed RLE, images ``<id>.png`` relative to ROOT/train), so a root survives
the round trip exactly (convert back with ``--cell-type-from-category``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="folder of the images (searched recursively)")
    p.add_argument("--annotations", type=Path, required=True,
                   help="COCO json to read (or, with --to-coco, to write)")
    p.add_argument("--out", type=Path, help="data root to write")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--cell-type", help="one cell type for every image (shsy5y, astro, cort)")
    kind.add_argument("--cell-type-from-filename", action="store_true",
                      help="cell line = file name up to the first '_' (LIVECell)")
    kind.add_argument("--cell-type-from-category", action="store_true",
                      help="cell type = the annotations' category name (one per image)")
    p.add_argument("--map", dest="type_map", action="append", default=[], metavar="NAME=TYPE",
                   help="map a cell line or category to a cell type, e.g. A172=astro "
                   "(repeatable; SHSY5Y=shsy5y is built in)")
    p.add_argument("--skip-unmapped", action="store_true",
                   help="drop images whose cell line / category has no cell type")
    p.add_argument("--keep-crowd", action="store_true",
                   help="keep iscrowd=1 annotations (dropped by default: not single cells)")
    p.add_argument("--to-coco", type=Path, metavar="ROOT",
                   help="reverse direction: write data root ROOT as COCO json to --annotations")
    p.add_argument("--uncompressed", action="store_true",
                   help="with --to-coco: RLE counts as integer lists instead of strings")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (only the data root's files)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cellseg.data.coco import CocoError, convert_coco, parse_type_map, root_to_coco, write_coco
    from cellseg.data.data_root import DataError
    from cellseg.data.rle import RLEError

    raw_argv = list(sys.argv if argv is None else ["src/convert_coco.py", *argv])
    bars: list = []
    try:
        if args.to_coco is not None:
            if args.images or args.out or args.cell_type or args.cell_type_from_filename \
                    or args.cell_type_from_category:
                raise CocoError("--to-coco ROOT takes only --annotations, --uncompressed and "
                                "--overwrite")
            if args.annotations.is_dir():
                raise CocoError(f"--annotations {args.annotations}: is a folder; expected the "
                                f"path of the COCO json file to write")
            if args.annotations.exists() and not args.overwrite:
                raise CocoError(f"{args.annotations} exists; pass --overwrite to replace it")
            doc = root_to_coco(args.to_coco, compressed=not args.uncompressed)
            write_coco(doc, args.annotations, overwrite=args.overwrite)
            print(f"wrote {args.annotations} ({len(doc['images'])} images, "
                  f"{len(doc['annotations'])} annotations)")
            return 0
        if args.images is None or args.out is None:
            raise CocoError("--images DIR and --out ROOT are required (or --to-coco ROOT)")
        if not (args.cell_type or args.cell_type_from_filename or args.cell_type_from_category):
            raise CocoError("say how images get their cell type: --cell-type T, "
                            "--cell-type-from-filename or --cell-type-from-category")

        def progress(stage: str, total: int) -> None:
            if args.no_progress:
                return
            if not bars or bars[-1].desc != stage:
                from tqdm import tqdm
                for bar in bars:
                    bar.close()
                bars.append(tqdm(total=total, unit="img", desc=stage))
            bars[-1].update(1)

        summary = convert_coco(
            args.images, args.annotations, args.out, cell_type=args.cell_type,
            from_filename=args.cell_type_from_filename,
            from_category=args.cell_type_from_category,
            type_map=parse_type_map(args.type_map), skip_unmapped=args.skip_unmapped,
            keep_crowd=args.keep_crowd, overwrite=args.overwrite, progress=progress,
            command=raw_argv)
    except (CocoError, DataError, RLEError, ValueError, OSError) as exc:
        for bar in bars:
            bar.close()
        bars.clear()
        message = " ".join(str(exc).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the output is unchanged (a data root is written only when "
              "complete); run the same command again", file=sys.stderr)
        return 130
    finally:
        for bar in bars:
            bar.close()
    print(summary)
    return 0

