"""Benchmark: ``segment.py`` seconds per megapixel and peak memory for 1, 16 and 64 MP images.

Why: users of the kit segment microscope scans of 10-100 megapixels. The claim to check is
that tiling bounds memory by the tile, not the image: peak memory may grow with the image
only by the arrays that are the size of the image anyway (the 16-bit input, the int32 label
image, the uint16 label TIFF written from it), a few bytes per pixel, while a whole-image
pass (``--tile 0``) also holds every activation of the network at full size.

How: each size runs in its own subprocess (``--child``), because TensorFlow's allocations do
not show in ``tracemalloc``; the child reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after loading the models (the fixed cost) and after segmenting (the peak), and the wall time
of ``cellseg.infer.segment_images.run_segment`` (read, tiles, stitching, CSV, overlay, TIFF). The
test images are a 16-bit mosaic of one synthetic 1,024 x 1,024 image
(:mod:`cellseg.data.synthetic`), mirrored so no seam cuts cells.

Usage:
    python bench/bench_segment.py [--exp demo] [--sizes 1,16,64] [--whole 1,16] [--folds 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

NAME = "segment"


def make_image(path: Path, megapixels: float, seed: int = 0) -> tuple[int, int]:
    """A 16-bit TIFF of about ``megapixels`` (4:3), mirrored copies of one synthetic image."""
    import numpy as np
    import tifffile

    from cellseg.data.synthetic import make_image as synth

    base, _ = synth("cort", np.random.default_rng(seed), 1024, 1024, scale=1.0)
    base = base.astype(np.uint16) * 200 + 1000
    w = int(round(math.sqrt(megapixels * 1e6 * 4 / 3)))
    h = int(round(megapixels * 1e6 / w))
    tile = np.block([[base, base[:, ::-1]], [base[::-1], base[::-1, ::-1]]])
    reps = (math.ceil(h / tile.shape[0]), math.ceil(w / tile.shape[1]))
    img = np.tile(tile, reps)[:h, :w]
    tifffile.imwrite(path, img)
    return h, w


def child(args: argparse.Namespace) -> int:
    """Run one segmentation in this process and print a JSON line with time and memory."""
    from cellseg.experiment import resolve_config
    from cellseg.infer import segment_images as seg
    from cellseg.infer.ensemble import FoldEnsemble

    cfg, exp_dir, _ = resolve_config(None, [], exp=args.exp, folds=args.folds)
    ens = FoldEnsemble.load(cfg, exp_dir, folds=args.folds, tta=["identity"])
    # Warm-up: trace the graph once on a small image so the timing is steady state.
    import numpy as np

    seg.segment_array(ens, np.random.default_rng(0).integers(0, 255, (256, 256)).astype(
        np.uint8), tile=0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    files = [Path(args.child)]
    t = time.perf_counter()
    records = seg.run_segment(ens, files, args.out, channel=None, tile=args.tile,
                              overlap=seg.DEFAULT_OVERLAP, rois=False, overwrite=True,
                              progress=False)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = records[0]
    print(json.dumps({"status": r.status, "error": r.error, "height": r.height,
                      "width": r.width, "tiles": r.n_tiles, "cells": r.n_cells,
                      "seconds": wall, "base_rss_mib": base_rss, "peak_rss_mib": peak}))
    return 0 if r.status == "done" else 1


def run_one(exp: str, folds: str, image: Path, out: Path, tile: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--exp", exp, "--folds", folds,
           "--child", str(image), "--out", str(out), "--tile", str(tile)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "failed", "error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="demo", help="experiment (default: %(default)s)")
    p.add_argument("--folds", default="0", help="folds to ensemble (default: %(default)s)")
    p.add_argument("--sizes", default="1,16,64", help="megapixels, tiled (default: %(default)s)")
    p.add_argument("--whole", default="1,16",
                   help="megapixels also run with --tile 0 (default: %(default)s; '' = none)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.folds = [int(f) for f in args.folds.split(",")]
        return child(args)

    started = common.start_info()
    runs = [(float(s), args.tile) for s in args.sizes.split(",") if s]
    runs += [(float(s), 0) for s in args.whole.split(",") if s]
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
        tmp = Path(tmp)
        for mp, tile in runs:
            image = tmp / f"img_{mp:g}mp.tif"
            if not image.exists():
                make_image(image, mp)
            r = run_one(args.exp, args.folds, image, tmp / "out", tile)
            r.update(megapixels=mp, tile=tile)
            results.append(r)
            if r["status"] != "done":
                print(f"{mp:g} MP tile {tile}: failed: {r.get('error')}", file=sys.stderr)
                continue
            px = r["height"] * r["width"]
            grow = r["peak_rss_mib"] - r["base_rss_mib"]
            r["bytes_per_pixel_above_base"] = grow * 2**20 / px
            rows.append([f"{r['width']}x{r['height']}", round(px / 1e6, 1),
                         tile or "whole", r["tiles"], r["cells"], round(r["seconds"], 1),
                         round(r["seconds"] / (px / 1e6), 2), round(r["base_rss_mib"]),
                         round(r["peak_rss_mib"]), round(grow),
                         round(r["bytes_per_pixel_above_base"], 1)])
            print(common.text_table(HEADERS, rows[-1:]), flush=True)
    notes = [
        f"Model: experiment `{args.exp}`, fold(s) {args.folds}, heads from its config, no TTA; "
        "on this 2-core CPU machine a bigger model or more folds / flips multiply the seconds, "
        "not the memory above the base (one batch of tiles).",
        "base = peak RSS after loading TensorFlow + the models and one warm-up image; above "
        "base = what segmenting the image added at its peak. Tiled, that is the image-sized "
        "arrays (16-bit input 2 B/px, int32 labels 4 B/px, uint16 copy for the TIFF, "
        "regionprops) plus a constant for one batch of tiles; whole-image "
        "(--tile 0) adds the network's activations at full size.",
        "Seconds include reading the TIFF, the cell-type crop, tiles, stitching, the cells CSV "
        "(regionprops), the overlay and the zlib label TIFF.",
    ]
    report = common.make_report(NAME, {"exp": args.exp, "folds": args.folds,
                                       "tile": args.tile, "sizes_mp": args.sizes,
                                       "whole_mp": args.whole}, results, notes=notes,
                                extra_packages=("tifffile", "scikit-image"),
                                started=started)
    body = common.markdown_table(HEADERS, rows)
    tiled = sorted((r for r in results if r.get("status") == "done" and r["tile"]),
                   key=lambda r: r["megapixels"])
    if len(tiled) >= 2:
        a, b = tiled[-2], tiled[-1]
        px = b["height"] * b["width"] - a["height"] * a["width"]
        marginal = (b["peak_rss_mib"] - a["peak_rss_mib"]) * 2**20 / px
        report["results_marginal_bytes_per_pixel"] = marginal
        body += (f"\n\nTiled, from {a['megapixels']:g} to {b['megapixels']:g} MP the peak grows "
                 f"by {marginal:.1f} bytes per added pixel: the image-sized arrays only (16-bit "
                 f"input 2 B, int32 labels 4 B, the uint16 copy for the TIFF 2 B, and what "
                 f"regionprops / tifffile hold while writing); the rest of 'above base' is one "
                 f"batch of tiles, the same at every size once tiles are full (1,024 px).")
    whole = [r for r in results if r.get("status") == "done" and not r["tile"]]
    if whole:
        bpp = max(r["bytes_per_pixel_above_base"] for r in whole)
        body += (f" A whole-image pass (--tile 0) costs about {bpp:.0f} bytes per pixel "
                 f"(the network's activations at full size): "
                 f"{bpp * 64e6 / 2**30:.0f} GiB for 64 MP.")
    common.write_results(NAME, report, body, title="Benchmark: segment.py on large images")
    print(f"wrote {common.RESULTS_DIR / (NAME + '.md')}")
    return 0


HEADERS = ["image", "MP", "tile", "tiles", "cells", "seconds", "s / MP", "base MiB",
           "peak MiB", "above base MiB", "B / px above base"]

if __name__ == "__main__":
    sys.exit(main())
