"""Benchmark: speed (and sanity score) of instance decoding and the classical baseline.

Why: post-processing runs once per test image after the folds x TTA ensemble, and hundreds to
thousands of times per Optuna trial on out-of-fold maps, so it must stay far below the
network's own cost (~0.3 s per 520x704 image on one core is the budget).

Inputs are synthetic but shaped like the real data (docs/design.md section 2): per cell type, random
non-overlapping ellipses at the competition's size, from which we draw

* realistic probability maps: body and touching-border band, blurred and with noise, as a
  trained network's sigmoid outputs look (soft edges, speckle);
* a phase-contrast-like image: dark bodies, bright halos, uneven illumination, noise.

Prints a table of median ms/image per cell type (and the competition score against the drawn
truth, as a check that the timings are of a working decoder) and writes
``bench/results/postprocess.json`` atomically.

Usage:
    python bench/bench_postprocess.py [--repeats 7] [--images 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import skimage  # noqa: E402
from scipy import ndimage  # noqa: E402

from cellseg import fileio  # noqa: E402
from cellseg.metrics.score import image_score  # noqa: E402
from cellseg.postprocess.classical import classical_segment
from cellseg.postprocess.decode import decode_instances  # noqa: E402

HEIGHT, WIDTH = 520, 704

# Per cell type: number of cells, semi-axis ranges (px) of the long and short axes, allowed
# overlap of a new ellipse with earlier cells (crowded shsy5y cells touch), classical seed
# spacing. Areas roughly match the real medians (shsy5y ~250 px, cort ~200, astro ~560+).
CELL_TYPES = {
    "shsy5y": dict(n=300, long=(8, 16), short=(4, 7), overlap=0.25, min_distance=4),
    "cort": dict(n=30, long=(7, 10), short=(6, 9), overlap=0.0, min_distance=6),
    "astro": dict(n=80, long=(14, 32), short=(8, 16), overlap=0.15, min_distance=9),
}


def draw_cells(rng: np.random.Generator, n: int, long: tuple[float, float],
               short: tuple[float, float], overlap: float) -> np.ndarray:
    """Label image of up to ``n`` random ellipses; later cells never take earlier pixels."""
    labels = np.zeros((HEIGHT, WIDTH), np.int32)
    k = 0
    for _ in range(50 * n):
        if k == n:
            break
        cell = np.zeros((HEIGHT, WIDTH), np.uint8)
        center = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        axes = (int(rng.uniform(*long)), int(rng.uniform(*short)))
        cv2.ellipse(cell, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        cell = cell.astype(bool)
        if cell.sum() < 20:
            continue
        taken = labels[cell] > 0
        if taken.mean() > overlap:
            continue
        k += 1
        labels[cell & (labels == 0)] = k
    # Ellipses cut by later ones may fall apart or shrink: keep the main piece only.
    return _largest_pieces(labels)


def _largest_pieces(labels: np.ndarray) -> np.ndarray:
    out = np.zeros_like(labels)
    k = 0
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        pieces, n = ndimage.label(labels[sl] == i)
        if n == 0:
            continue
        main = pieces == (np.argmax(np.bincount(pieces.ravel())[1:]) + 1)
        if main.sum() >= 20:
            k += 1
            out[sl][main] = k
    return out


def touching_border(labels: np.ndarray, size: int = 5) -> np.ndarray:
    """Pixels with two different cells within a ``size`` window (the network's 2nd target)."""
    big = np.iinfo(np.int32).max
    hi = ndimage.grey_dilation(labels, size=size)
    lo = ndimage.grey_erosion(np.where(labels == 0, big, labels), size=size)
    return (lo != big) & (hi != lo)


def probability_maps(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft, noisy body / border maps as a trained network might output them."""
    target = np.stack([labels > 0, touching_border(labels)], -1).astype(np.float32)
    probs = cv2.GaussianBlur(target, (0, 0), 1.5)
    noise = cv2.GaussianBlur(rng.normal(0, 0.15, target.shape).astype(np.float32), (0, 0), 1.0)
    return np.clip(probs + noise, 0.0, 1.0).astype(np.float32)


def phase_contrast_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark bodies with bright halos on a gray background with a gradient and noise."""
    fg = labels > 0
    halo = ndimage.binary_dilation(fg, iterations=3) & ~fg
    img = np.full(labels.shape, 128.0, np.float32)
    img[halo] = 170.0
    img[fg] = 100.0 + rng.normal(0, 8, int(fg.sum()))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    img += 12.0 * np.sin(xx / WIDTH * np.pi) - 6.0 * (yy / HEIGHT)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 7, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def time_call(fn, repeats: int) -> tuple[float, np.ndarray]:
    """Median wall time (ms) over ``repeats`` calls, after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per image")
    parser.add_argument("--images", type=int, default=2, help="synthetic images per cell type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                              / "postprocess.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.images < 1:
        parser.error("--repeats and --images must be >= 1")

    # One core, as the budget is stated (and as each Optuna worker process runs).
    cv2.setNumThreads(1)
    rng = np.random.default_rng(args.seed)
    rows = []
    for cell_type, spec in CELL_TYPES.items():
        deep_ms, classical_ms, deep_score, classical_score, n_true, n_deep, n_cls = (
            [], [], [], [], [], [], [])
        for _ in range(args.images):
            truth = draw_cells(rng, spec["n"], spec["long"], spec["short"], spec["overlap"])
            probs = probability_maps(truth, rng)
            image = phase_contrast_image(truth, rng)
            ms, pred = time_call(lambda: decode_instances(probs), args.repeats)
            deep_ms.append(ms)
            deep_score.append(image_score(truth, pred))
            n_deep.append(int(pred.max()))
            ms, pred = time_call(
                lambda: classical_segment(image, min_distance=spec["min_distance"]),
                args.repeats)
            classical_ms.append(ms)
            classical_score.append(image_score(truth, pred))
            n_cls.append(int(pred.max()))
            n_true.append(int(truth.max()))
        rows.append({
            "cell_type": cell_type,
            "images": args.images,
            "cells_per_image": float(np.mean(n_true)),
            "decode_ms_per_image": float(np.median(deep_ms)),
            "decode_instances_found": float(np.mean(n_deep)),
            "decode_score": float(np.mean(deep_score)),
            "classical_ms_per_image": float(np.median(classical_ms)),
            "classical_instances_found": float(np.mean(n_cls)),
            "classical_score": float(np.mean(classical_score)),
            "classical_min_distance": spec["min_distance"],
        })

    header = (f"{'cell type':<9} {'cells':>6} | {'decode ms':>9} {'found':>6} {'score':>6} | "
              f"{'classical ms':>12} {'found':>6} {'score':>6}")
    print(f"Post-processing on {HEIGHT}x{WIDTH} synthetic images "
          f"(median of {args.repeats} calls, {args.images} images per type, one process)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['cell_type']:<9} {r['cells_per_image']:>6.0f} | "
              f"{r['decode_ms_per_image']:>9.1f} {r['decode_instances_found']:>6.0f} "
              f"{r['decode_score']:>6.3f} | {r['classical_ms_per_image']:>12.1f} "
              f"{r['classical_instances_found']:>6.0f} {r['classical_score']:>6.3f}")

    report = {
        "benchmark": "postprocess",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "image_size": [HEIGHT, WIDTH],
        "repeats": args.repeats,
        "threads": "one (cv2.setNumThreads(1); scipy/skimage calls here are single-threaded)",
        "seed": args.seed,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-image": skimage.__version__,
            "opencv": cv2.__version__,
        },
        "notes": "score = competition metric against the drawn truth (synthetic; a sanity "
                 "check of the decoders, not a model result). Default decode knobs.",
        "results": rows,
    }
    fileio.write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
