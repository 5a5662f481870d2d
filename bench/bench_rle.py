"""Benchmark: RLE decoding / encoding at the real train.csv's scale, against pycocotools.

Why: every training run decodes all of train.csv (606 images, ~73.5k rows) into instance
labels, and inference encodes every predicted cell; both must take seconds, not minutes, so
they never matter next to the network. pycocotools' C RLE code is the usual yardstick.

What it does:

1. writes a synthetic ``train.csv`` at the real scale into a temporary data root: 606 images
   of 704 x 520 (155 shsy5y, 131 astro, 320 cort), cells per image drawn from the real
   per-type statistics and rescaled to the real row counts (52,286 / 10,522 / 10,777; docs/design.md
   section 2), random non-overlapping ellipses (crowded types touch). The rows are made by
   ``rle.encode_labels`` and that call is timed (rows/s, all images);
2. times ``TrainData(root)`` (CSV read + validation) and ``load_instances(id)`` for every id
   (rows/s), and checks that every decoded label image re-encodes to exactly its CSV rows;
3. on a subset of images (``--compare-images``, all types), times per-mask ``rle.encode`` and
   ``rle.decode`` against ``pycocotools.mask.encode`` / ``decode`` on the same masks, and
   checks that all decoders give masks equal to the drawn ones.

pycocotools is optional (``pip install pycocotools``); without it step 3 runs our side only.
pycocotools numbers pixels column-major (COCO's convention) and stores its own compressed
counts string; the work is the same kind (runs of one mask), so rows/s compare directly.

Usage:
    python bench/bench_rle.py [--fraction 1.0] [--compare-images 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cellseg.constants import TRAIN_COLUMNS  # noqa: E402
from cellseg.data import rle  # noqa: E402
from cellseg.data.data_root import TrainData  # noqa: E402

NAME = "rle"


def _coco() -> Any | None:
    """``pycocotools.mask`` or None when it is not installed."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        return None
    return coco_mask


def make_root(root: Path, fraction: float = 1.0, shape: tuple[int, int] = (520, 704),
              seed: int = 0, keep: int = 0) -> dict[str, Any]:
    """Write a synthetic ``train.csv`` at ``fraction`` of the real scale and time encoding.

    Args:
        root: data root to write ``train.csv`` into (no PNGs: decoding needs none).
        fraction: share of the real image count per type (1.0 = 606 images).
        shape: (height, width).
        seed: random seed.
        keep: keep the label images of this many images (spread over the types) for the
            comparison step.

    Returns:
        ``rows``, ``images``, ``encode_labels_s`` (time inside ``rle.encode_labels``),
        ``generate_s``, ``per_type`` (images, rows), ``kept`` ({id: label image}).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    scale = h * w / (520 * 704)  # cells per image follow the field of view
    rows: list[tuple] = []
    per_type: dict[str, dict[str, int]] = {}
    kept: dict[str, np.ndarray] = {}
    encode_s, t_start, k = 0.0, time.perf_counter(), 0
    plan = []
    for cell_type, spec in common.REAL_TYPES.items():
        n_img = max(1, int(round(spec.images * fraction)))
        counts = np.maximum(1, np.rint(common.real_counts(rng, spec, n_img) * scale)).astype(int)
        plan += [(cell_type, int(c)) for c in counts]
    keep_every = max(1, len(plan) // keep) if keep else 0
    for cell_type, n_cells in plan:
        spec = common.REAL_TYPES[cell_type]
        labels = common.draw_labels(rng, shape, n_cells, spec.area_median * scale,
                                    spec.aspect)
        t0 = time.perf_counter()
        codes = rle.encode_labels(labels)
        encode_s += time.perf_counter() - t0
        image_id = f"{k:012x}"
        meta = (w, h, cell_type, "11h30m00s", "2020-09-14", f"{cell_type}_s{k // 4}",
                "0 days 11:30:00")
        rows.extend((image_id, code, *meta) for code in codes)
        st = per_type.setdefault(cell_type, {"images": 0, "rows": 0})
        st["images"] += 1
        st["rows"] += len(codes)
        if keep_every and k % keep_every == 0 and len(kept) < keep:
            kept[image_id] = labels.astype(np.uint16)
        k += 1
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(TRAIN_COLUMNS)).to_csv(root / "train.csv", index=False)
    return {"rows": len(rows), "images": k, "encode_labels_s": encode_s,
            "generate_s": time.perf_counter() - t_start, "per_type": per_type, "kept": kept}


def time_decode(root: Path) -> dict[str, Any]:
    """``TrainData(root)`` and ``load_instances`` of every id; round-trip check per image."""
    t0 = time.perf_counter()
    data = TrainData(root)
    read_s = time.perf_counter() - t0
    watch = common.Stopwatch()
    annotations = data.table["annotation"].to_numpy()
    mismatched = []
    for image_id in data.ids:
        with watch:
            inst = data.load_instances(image_id)
        # Check (untimed): no overlaps here, so re-encoding gives exactly the CSV rows.
        expected = list(annotations[data._rows[image_id]])  # noqa: SLF001 (bench check)
        if rle.encode_labels(inst.labels) != expected:
            mismatched.append(image_id)
    return {"read_csv_s": read_s, "load_instances_s": watch.seconds, "rows": len(data.table),
            "images": len(data.ids), "roundtrip_mismatched_images": mismatched}


def compare(kept: dict[str, np.ndarray], coco: Any | None) -> dict[str, Any]:
    """Per-mask encode / decode: ours vs pycocotools on the same masks, with equality checks.

    Mask building (``labels == k``) and layout conversion for pycocotools (an H x W x N
    Fortran-ordered uint8 stack, the layout its C code reads) are not timed.
    """
    t = {"encode": common.Stopwatch(), "decode": common.Stopwatch(),
         "decode_indices": common.Stopwatch(), "coco_encode": common.Stopwatch(),
         "coco_decode": common.Stopwatch()}
    n_rows, equal_ours, equal_coco = 0, True, True
    chunk = 64  # pycocotools decodes to an H x W x N stack: bound its memory
    for labels in kept.values():
        lab = labels.astype(np.int32)
        shape = lab.shape
        for start in range(1, int(lab.max()) + 1, chunk):
            ks = range(start, min(start + chunk, int(lab.max()) + 1))
            masks = [lab == k for k in ks]
            with t["encode"]:
                codes = [rle.encode(m) for m in masks]
            with t["decode"]:
                decoded = [rle.decode(c, shape) for c in codes]
            with t["decode_indices"]:
                indices = [rle.decode_indices(c, shape) for c in codes]
            equal_ours &= all(np.array_equal(a, b) for a, b in zip(masks, decoded))
            equal_ours &= all(np.array_equal(np.flatnonzero(m), i)
                              for m, i in zip(masks, indices))
            n_rows += len(masks)
            if coco is not None:
                stack = np.asfortranarray(np.stack(masks, axis=-1).astype(np.uint8))
                with t["coco_encode"]:
                    objs = coco.encode(stack)
                with t["coco_decode"], warnings.catch_warnings():
                    # pycocotools 2.0.x vs NumPy 2: a DeprecationWarning per call, harmless.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    back = coco.decode(objs)
                equal_coco &= bool(np.array_equal(back.astype(bool), stack.astype(bool)))
    out: dict[str, Any] = {"images": len(kept), "rows": n_rows,
                           "ours_equal_drawn_masks": bool(equal_ours)}
    for key, watch in t.items():
        if key.startswith("coco") and coco is None:
            continue
        out[f"{key}_s"] = watch.seconds
        out[f"{key}_rows_per_s"] = n_rows / watch.seconds if watch.seconds else None
    if coco is not None:
        out["coco_equal_drawn_masks"] = bool(equal_coco)
        out["ratio_encode_ours_over_coco"] = out["encode_rows_per_s"] / out[
            "coco_encode_rows_per_s"]
        out["ratio_decode_ours_over_coco"] = out["decode_rows_per_s"] / out[
            "coco_decode_rows_per_s"]
        out["ratio_decode_indices_ours_over_coco"] = out["decode_indices_rows_per_s"] / out[
            "coco_decode_rows_per_s"]
    return out


def run(fraction: float = 1.0, compare_images: int = 60, seed: int = 0,
        shape: tuple[int, int] = (520, 704)) -> dict[str, Any]:
    """The whole benchmark in a temporary data root; returns the results dict."""
    coco = _coco()
    with tempfile.TemporaryDirectory(prefix="bench_rle_") as tmp:
        root = Path(tmp)
        made = make_root(root, fraction, shape, seed, keep=compare_images)
        csv_mb = (root / "train.csv").stat().st_size / 2**20
        decoded = time_decode(root)
    kept = made.pop("kept")
    cmp = compare(kept, coco)
    rows = made["rows"]
    results: dict[str, Any] = {
        "images": made["images"],
        "rows": rows,
        "per_type": made["per_type"],
        "csv_mb": csv_mb,
        "generate_s": made["generate_s"],
        "encode_labels_s": made["encode_labels_s"],
        "encode_labels_rows_per_s": rows / made["encode_labels_s"],
        "read_csv_s": decoded["read_csv_s"],
        "load_instances_s": decoded["load_instances_s"],
        "load_instances_rows_per_s": rows / decoded["load_instances_s"],
        "decode_all_incl_csv_rows_per_s": rows / (decoded["load_instances_s"]
                                                  + decoded["read_csv_s"]),
        "roundtrip_equal": not decoded["roundtrip_mismatched_images"],
        "roundtrip_mismatched_images": decoded["roundtrip_mismatched_images"][:5],
        "compare": cmp,
        "pycocotools": coco is not None,
    }
    if coco is not None:
        results["ratio_encode_labels_over_coco_encode"] = (
            results["encode_labels_rows_per_s"] / cmp["coco_encode_rows_per_s"])
        results["ratio_load_instances_over_coco_decode"] = (
            results["load_instances_rows_per_s"] / cmp["coco_decode_rows_per_s"])
    return results


def tables(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows) of the results table."""
    c = r["compare"]
    coco = r["pycocotools"]

    def ratio(key: str) -> float | None:
        return r.get(key) if coco else None

    rows = [
        ["encode: rle.encode_labels (per image, all rows)", r["rows"],
         r["encode_labels_rows_per_s"], ratio("ratio_encode_labels_over_coco_encode")],
        ["decode: TrainData.load_instances (per image, all rows)", r["rows"],
         r["load_instances_rows_per_s"], ratio("ratio_load_instances_over_coco_decode")],
        ["decode incl. read_train_csv", r["rows"], r["decode_all_incl_csv_rows_per_s"], None],
        ["encode: rle.encode (per mask)", c["rows"], c["encode_rows_per_s"],
         c.get("ratio_encode_ours_over_coco")],
        ["decode: rle.decode (per mask -> bool H x W)", c["rows"], c["decode_rows_per_s"],
         c.get("ratio_decode_ours_over_coco")],
        ["decode: rle.decode_indices (per mask -> indices)", c["rows"],
         c["decode_indices_rows_per_s"], c.get("ratio_decode_indices_ours_over_coco")],
    ]
    if coco:
        rows += [["pycocotools.mask.encode (H x W x N stack)", c["rows"],
                  c["coco_encode_rows_per_s"], 1.0],
                 ["pycocotools.mask.decode (-> H x W x N stack)", c["rows"],
                  c["coco_decode_rows_per_s"], 1.0]]
    return ["operation", "rows", "rows/s", "x pycocotools"], rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of the real 606 images (default 1.0 = real scale)")
    parser.add_argument("--compare-images", type=int, default=60,
                        help="images (spread over types) for the per-mask comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 10 or args.compare_images < 1:
        parser.error("--fraction must be in (0, 10] and --compare-images >= 1")
    start = common.start_info()
    r = run(args.fraction, args.compare_images, args.seed)
    headers, rows = tables(r)
    c = r["compare"]
    checks = (f"round trip decode -> encode equals every CSV row: {r['roundtrip_equal']}; "
              f"our per-mask decoders equal the drawn masks: {c['ours_equal_drawn_masks']}"
              + (f"; pycocotools decode equals the drawn masks: {c['coco_equal_drawn_masks']}"
                 if r["pycocotools"] else "; pycocotools not installed: comparison skipped"))
    print(f"RLE at real scale: {r['images']} images, {r['rows']:,} rows "
          f"({r['csv_mb']:.1f} MB train.csv); per-mask comparison on {c['images']} images, "
          f"{c['rows']:,} rows")
    print(common.text_table(headers, rows, digits=2))
    print(checks)
    notes = [
        "Synthetic train.csv at the real scale: 155 shsy5y / 131 astro / 320 cort images of "
        "704 x 520, cells per image from the real per-type statistics, rows rescaled to the "
        "real totals; random non-overlapping ellipses (no PNGs needed).",
        "rows/s = rows / seconds inside the named call (mask building and pycocotools' "
        "Fortran-order uint8 stacking are not timed). 'x pycocotools' = our rows/s / "
        "pycocotools' rows/s, same masks, same run. Whole-file rows include "
        "load_instances' label image and overlap map; pycocotools only decodes masks.",
        "pycocotools numbers pixels column-major and uses its own compressed counts "
        "string; the competition format is row-major 'start length' text.",
        checks,
    ]
    if not r["pycocotools"]:
        notes.append("pycocotools is not installed (pip install pycocotools): ratios skipped.")
    report = common.make_report(
        NAME, {"fraction": args.fraction, "compare_images": args.compare_images,
               "seed": args.seed, "image_size": [520, 704]}, r, notes,
        extra_packages=("pycocotools", "pandas"), started=start)
    body = (f"{r['images']} images, {r['rows']:,} rows, train.csv {r['csv_mb']:.1f} MB; "
            f"per-mask comparison on {c['images']} images ({c['rows']:,} rows).\n\n"
            + common.markdown_table(headers, rows, digits=2))
    jpath, _ = common.write_results(NAME, report, body, args.out_dir,
                                    title="Benchmark: RLE encode / decode")
    print(f"wrote {jpath} (+ .md)")
    ok = r["roundtrip_equal"] and c["ours_equal_drawn_masks"] and c.get(
        "coco_equal_drawn_masks", True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
