"""Benchmark: the competition metric per image, against StarDist's ``matching``.

Why: tuning scores every OOF image in every Optuna trial (hundreds of trials x hundreds of
images), and validation scores images every few epochs; the scorer must take milliseconds.
StarDist's ``stardist.matching.matching`` is the reference implementation in our field
(docs/design.md section 7) and computes the same TP / FP / FN, so it is both the speed yardstick
and an independent check of our numbers.

Data: per image, a "truth" label image of ~300 touching random ellipses at 520 x 704 (shsy5y
sizes) and a "prediction" made from it the way a real model errs: cells shifted by a few
pixels, grown or shrunk, some dropped, some pairs merged, some false cells added, so IoUs
spread over the whole 0..1 range.

Equality check: for every image and threshold t in 0.50..0.95, our TP must equal StarDist's,
and our score (mean over t of TP / (TP + FP + FN)) must equal the one built from StarDist's
counts (its ``accuracy`` field is that same ratio). StarDist matches on IoU >= t, the
competition (and we) on IoU > t: the two agree unless an IoU is exactly a threshold, so a
predicted cell with such an IoU loses one pixel (the count is reported) and the comparison
is on data where no IoU lands exactly on a threshold.

StarDist is optional (``pip install --no-deps stardist csbdeep`` plus ``numba``, so that it
does not touch tensorflow-cpu / keras); without it only our timings are reported.

Usage:
    python bench/bench_metric.py [--images 10] [--cells 300] [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from cellseg.constants import IOU_THRESHOLDS  # noqa: E402
from cellseg.metrics.score import image_score, iou_matrix, match  # noqa: E402

NAME = "metric"


def _stardist_matching() -> Any | None:
    """``stardist.matching.matching`` or None if StarDist cannot be imported."""
    try:
        from stardist.matching import matching
    except Exception:  # ImportError, or a broken optional dependency (numba, csbdeep)
        return None
    return matching


def make_prediction(truth: np.ndarray, rng: np.random.Generator, drop: float = 0.08,
                    merge: float = 0.05, false_cells: int = 15) -> np.ndarray:
    """A plausible prediction of ``truth``: shifted / grown / shrunk cells, misses, merges,
    false positives."""
    h, w = truth.shape
    pred = np.zeros_like(truth)
    n = int(truth.max())
    label_of = np.arange(n + 1)
    # Merge some cells with a touching neighbour (under-segmentation of crowded cells).
    grown = ndimage.grey_dilation(truth, size=3)
    for k in rng.choice(np.arange(1, n + 1), size=int(merge * n), replace=False):
        nb = np.unique(grown[truth == k])
        nb = nb[(nb != k) & (nb != 0)]
        if nb.size:
            label_of[nb[0]] = label_of[k]
    kernel = np.ones((3, 3), np.uint8)
    for k, sl in enumerate(ndimage.find_objects(truth), start=1):
        if sl is None or rng.random() < drop:
            continue
        pad = 4
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, h)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, w)
        cell = (truth[y0:y1, x0:x1] == k).astype(np.uint8)
        change = rng.random()
        if change < 0.25:
            cell = cv2.dilate(cell, kernel)
        elif change < 0.45:
            eroded = cv2.erode(cell, kernel)
            cell = eroded if eroded.sum() >= 5 else cell
        dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
        cell = np.roll(cell, (dy, dx), axis=(0, 1)).astype(bool)
        view = pred[y0:y1, x0:x1]
        view[cell & (view == 0)] = label_of[k]
    # False positives in free space.
    extra = common.draw_labels(rng, truth.shape, false_cells, 150, (1.0, 2.0), max_overlap=0.0)
    free = (extra > 0) & (pred == 0) & (truth == 0)
    pred[free] = extra[free] + n
    # Consecutive ids (merged cells share one).
    _, inv = np.unique(pred, return_inverse=True)
    return inv.reshape(pred.shape).astype(np.int32)


def touches_threshold(truth: np.ndarray, pred: np.ndarray, tol: float = 1e-9) -> int:
    """Number of (truth, pred) pairs whose IoU equals a threshold (within ``tol``)."""
    iou = iou_matrix(truth, pred)
    return int(sum(np.isclose(iou, t, rtol=0.0, atol=tol).sum() for t in IOU_THRESHOLDS))


def untie(truth: np.ndarray, pred: np.ndarray, tol: float = 1e-9, rounds: int = 20) -> int:
    """Remove one pixel from every predicted cell whose IoU with a true cell is exactly a
    threshold (in place), until none is; returns how many pixels were removed.

    Why: small cells make IoUs like 11/20 = 0.55 common (a third of drawn images have one),
    and there ``IoU > t`` and ``IoU >= t`` disagree by definition; one pixel moves the IoU
    off the threshold and leaves the cell otherwise as drawn.
    """
    removed = 0
    flat = pred.ravel()
    for _ in range(rounds):
        iou = iou_matrix(truth, pred)
        hit = np.zeros(iou.shape[1], bool)
        for t in IOU_THRESHOLDS:
            hit |= np.isclose(iou, t, rtol=0.0, atol=tol).any(axis=0)
        if not hit.any():
            return removed
        for j in np.flatnonzero(hit):
            pixels = np.flatnonzero(flat == j + 1)  # pred ids are consecutive 1..n
            if pixels.size > 1:
                flat[pixels[-1]] = 0
                removed += 1
    raise RuntimeError("untie: IoUs still on a threshold after 20 rounds")


def make_images(n_images: int, n_cells: int, seed: int, shape: tuple[int, int] = (520, 704)
                ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """``n_images`` (truth, pred) pairs with no IoU exactly on a threshold; also returns how
    many predicted pixels were removed to get there (see :func:`untie`)."""
    rng = np.random.default_rng(seed)
    pairs, removed = [], 0
    for _ in range(n_images):
        truth = common.draw_labels(rng, shape, n_cells, 230, (2.0, 4.0), max_overlap=0.3)
        pred = make_prediction(truth, rng)
        removed += untie(truth, pred)
        assert touches_threshold(truth, pred) == 0
        pairs.append((truth, pred))
    return pairs, removed


def stardist_score(matching: Any, truth: np.ndarray, pred: np.ndarray
                   ) -> tuple[float, np.ndarray]:
    """Competition score and TP per threshold from StarDist's matching (IoU >= t)."""
    stats = matching(truth, pred, thresh=list(IOU_THRESHOLDS), criterion="iou")
    tp = np.array([s.tp for s in stats])
    prec = [s.tp / (s.tp + s.fp + s.fn) if (s.tp + s.fp + s.fn) else 1.0 for s in stats]
    return float(np.mean(prec)), tp


def run(n_images: int = 10, n_cells: int = 300, repeats: int = 5, seed: int = 0,
        shape: tuple[int, int] = (520, 704)) -> dict[str, Any]:
    """Time our scorer (label-image and pixel-list truth) and StarDist's; check equality."""
    matching = _stardist_matching()
    pairs, untied = make_images(n_images, n_cells, seed, shape)
    ours_ms, pixels_ms, sd_ms, sd_first_ms = [], [], [], None
    scores, max_diff, tp_equal, n_true, n_pred = [], 0.0, True, [], []
    for truth, pred in pairs:
        t, score = common.time_call(lambda: image_score(truth, pred), repeats)
        ours_ms.append(t.median_ms)
        scores.append(score)
        n_true.append(int(truth.max()))
        n_pred.append(int(pred.max()))
        # The pixel-list path (overlapping truth): per-cell flat indices, as evaluation uses.
        flat = truth.ravel()
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat)
        pixels = np.split(order[counts[0]:], np.cumsum(counts[1:])[:-1])
        t, res = common.time_call(lambda: match(pixels, pred), repeats)
        pixels_ms.append(t.median_ms)
        max_diff = max(max_diff, abs(res.score - score))
        if matching is not None:
            if sd_first_ms is None:  # includes numba's JIT compilation
                t1, _ = common.time_call(lambda: stardist_score(matching, truth, pred), 1, 0)
                sd_first_ms = t1.median_ms
            t, (sd, sd_tp) = common.time_call(lambda: stardist_score(matching, truth, pred),
                                              repeats)
            sd_ms.append(t.median_ms)
            ours_tp = match(truth, pred).tp
            tp_equal &= bool(np.array_equal(ours_tp, sd_tp))
            max_diff = max(max_diff, abs(sd - score))
    out: dict[str, Any] = {
        "images": n_images,
        "image_size": list(shape),
        "cells_per_image_truth": float(np.mean(n_true)),
        "cells_per_image_pred": float(np.mean(n_pred)),
        "mean_score": float(np.mean(scores)),
        "pixels_removed_to_untie_thresholds": untied,
        "ours_label_image_ms": float(np.median(ours_ms)),
        "ours_pixel_lists_ms": float(np.median(pixels_ms)),
        "stardist": matching is not None,
    }
    if matching is not None:
        out.update({
            "stardist_ms": float(np.median(sd_ms)),
            "stardist_first_call_ms": sd_first_ms,
            "speedup_ours_vs_stardist": float(np.median(sd_ms) / np.median(ours_ms)),
            "speedup_pixel_lists_vs_stardist": float(np.median(sd_ms) / np.median(pixels_ms)),
            "tp_equal_all_thresholds": tp_equal,
        })
    out["max_abs_score_difference"] = max_diff
    out["equal"] = bool(tp_equal and max_diff < 1e-12)
    return out


def table(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [["cellseg.metrics.score.image_score (label images)", r["ours_label_image_ms"],
             r.get("speedup_ours_vs_stardist")],
            ["cellseg.metrics.score.match (truth as per-cell pixel lists)",
             r["ours_pixel_lists_ms"],
             r.get("speedup_pixel_lists_vs_stardist")]]
    if r["stardist"]:
        rows.append(["stardist.matching.matching (10 thresholds)", r["stardist_ms"], 1.0])
    return ["scorer", "ms / image (median)", "speed vs StarDist (its ms / ours)"], rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--cells", type=int, default=300, help="true cells per image")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    if min(args.images, args.cells, args.repeats) < 1:
        parser.error("--images, --cells and --repeats must be >= 1")
    start = common.start_info()
    r = run(args.images, args.cells, args.repeats, args.seed)
    headers, rows = table(r)
    if r["stardist"]:
        check = (f"equal to StarDist: TP at every threshold {r['tp_equal_all_thresholds']}, "
                 f"max |score difference| {r['max_abs_score_difference']:.1e} over "
                 f"{r['images']} images ({r['pixels_removed_to_untie_thresholds']} predicted "
                 f"pixel(s) removed so that no IoU is exactly a threshold)")
    else:
        check = "stardist not importable: comparison skipped"
    print(f"Competition metric on {r['images']} images of 520x704, "
          f"{r['cells_per_image_truth']:.0f} true / {r['cells_per_image_pred']:.0f} predicted "
          f"cells per image (mean score {r['mean_score']:.3f})")
    print(common.text_table(headers, rows, digits=2))
    print(check)
    notes = [
        "Synthetic label images: ~300 touching random ellipses (shsy5y sizes) as truth; the "
        "prediction shifts / grows / shrinks cells, drops 8%, merges 5% with a neighbour and "
        "adds 15 false cells.",
        f"ms / image = median over images of the median of {args.repeats} calls after one "
        "warm-up (StarDist's first call, with numba's JIT compile, is reported separately).",
        "StarDist matches on IoU >= t, the competition on IoU > t: where a drawn IoU is "
        "exactly a threshold (e.g. 11/20), one pixel of that predicted cell is removed, so "
        "the comparison is on data where no IoU lands exactly on a threshold (there the two "
        "definitions differ by design).",
        check,
    ]
    report = common.make_report(NAME, {"images": args.images, "cells": args.cells,
                                       "repeats": args.repeats, "seed": args.seed}, r, notes,
                                extra_packages=("stardist", "numba", "scipy"), started=start)
    body = (f"{r['images']} images of 520 x 704, {r['cells_per_image_truth']:.0f} true / "
            f"{r['cells_per_image_pred']:.0f} predicted cells per image, mean score "
            f"{r['mean_score']:.3f}.\n\n" + common.markdown_table(headers, rows, digits=2))
    jpath, _ = common.write_results(NAME, report, body, args.out_dir,
                                    title="Benchmark: competition metric")
    print(f"wrote {jpath} (+ .md)")
    return 0 if r["equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
