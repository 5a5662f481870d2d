"""Benchmark: Optuna tuning throughput (trials per minute) per cell type, 1 vs 2 processes.

Why: ``tune.py`` runs ~150 trials per cell type, each scoring every OOF image of that type
(155 shsy5y, 320 cort, 131 astro images in the real data); trials/minute says how long a
tuning run takes and whether ``tune.n_jobs`` (processes scoring one trial's images) pays off
on this machine.

Inputs are synthetic but shaped like the real data: 520 x 704 images from ``cellseg.data.synthetic``
(per-type cell counts and shapes drawn from the real statistics: shsy5y ~320 touching cells,
cort ~30, astro ~70 per image, with overlapping annotations), turned into soft, noisy OOF body /
border probability maps (``bench_postprocess.probability_maps``); ``--method classical`` tunes
on the synthetic phase-contrast images themselves.
Each setting runs a fresh study (TPE, seeded; the defaults as trial 0) in a temporary SQLite
storage, as ``tune.py`` does by default; the same seed gives the same trials for n_jobs=1 and
2, so the best scores must agree (printed as a check).

Prints a table and writes ``bench/results/tuning.json`` atomically (date, machine, versions).

Usage:
    python bench/bench_tuning.py [--images 20] [--trials 12] [--types shsy5y,cort,astro]
                                 [--method deep|classical] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import scipy  # noqa: E402
import skimage  # noqa: E402
import sqlalchemy  # noqa: E402
from bench_postprocess import (  # noqa: E402
    CELL_TYPES as SPECS,
)
from bench_postprocess import (
    draw_cells,
    phase_contrast_image,
    probability_maps,
)

from cellseg import fileio
from cellseg.train import oof  # noqa: E402

try:
    from cellseg.data import synthetic  # noqa: E402
except ImportError:  # an older checkout: fall back to bench_postprocess's ellipses
    synthetic = None
from cellseg.config import Config  # noqa: E402
from cellseg.tune.eval_sets import EvalSet  # noqa: E402
from cellseg.tune.scoring import Evaluator  # noqa: E402
from cellseg.tune.storage import make_storage  # noqa: E402
from cellseg.tune.study import SEARCH_SPACES, method_defaults, tune_cell_type  # noqa: E402


def _truth_pixels(labels: np.ndarray, extra_label: np.ndarray | None = None,
                  extra_index: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-cell sorted flat pixel indices (int32) of a label image plus doubly-owned pixels."""
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    owner = flat[idx]
    if extra_label is not None and extra_index is not None and extra_label.size:
        idx = np.concatenate([idx, extra_index])
        owner = np.concatenate([owner, extra_label])
    order = np.lexsort((idx, owner))
    idx, owner = idx[order].astype(np.int32), owner[order]
    counts = np.bincount(owner, minlength=int(labels.max()) + 1)[1:]
    return [p for p in np.split(idx, np.cumsum(counts)[:-1]) if p.size]


def synthetic_image(cell_type: str, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(label image, phase-contrast image, per-cell truth pixels) of one 520 x 704 image.

    ``cellseg.data.synthetic`` (real per-type cell counts and shapes, touching shsy5y clusters,
    overlapping annotations) when the package has it; else ``bench_postprocess``'s ellipses.
    """
    if synthetic is not None:
        image, inst = synthetic.make_image(cell_type, rng)
        return inst.labels, image, _truth_pixels(inst.labels, inst.extra_label,
                                                 inst.extra_index)
    spec = SPECS[cell_type]
    labels = draw_cells(rng, spec["n"], spec["long"], spec["short"], spec["overlap"])
    return labels, phase_contrast_image(labels, rng), _truth_pixels(labels)


def make_eval_set(cell_type: str, method: str, n_images: int, rng: np.random.Generator
                  ) -> EvalSet:
    """``n_images`` synthetic images of one type, cached as tune.py caches OOF images.

    Deep inputs are soft, noisy body / touching-border maps drawn from the truth (as a trained
    network's sigmoid outputs look), quantised to uint8 like the OOF files.
    """
    ids, inputs, truths = [], [], []
    for k in range(n_images):
        labels, image, pixels = synthetic_image(cell_type, rng)
        if method == "deep":
            inputs.append(oof.quantize(probability_maps(labels, rng)))
        else:
            inputs.append(image)
        truths.append(pixels)
        ids.append(f"{cell_type}{k:03d}")
    return EvalSet(method, cell_type, ids, [0] * n_images, inputs, truths)


def run_study(evaluator: Evaluator, cell_type: str, method: str, trials: int, seed: int,
              workdir: Path, tag: str) -> dict:
    """One fresh study of ``trials`` trials; wall time and scores."""
    storage = make_storage(f"sqlite:///{workdir / f'{tag}.db'}", workdir)
    t0 = time.perf_counter()
    result = tune_cell_type(
        evaluator, cell_type, storage, f"bench-{method}-{cell_type}-{tag}",
        method_defaults(Config(), method), SEARCH_SPACES[method], n_trials=trials, seed=seed,
        log=None)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "trials_per_minute": 60.0 * trials / seconds,
            "default_score": result.default_score, "best_score": result.oof_score}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers).

    Why: on a shared machine other jobs steal cores, so the wall-clock speed-up of n_jobs=2
    can hide whether the pool itself works; equal CPU seconds per trial for 1 and 2 jobs say
    that, given free cores, the work does split without overhead.
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20, help="synthetic images per type")
    parser.add_argument("--trials", type=int, default=12, help="trials per study")
    parser.add_argument("--types", default="shsy5y,cort,astro")
    parser.add_argument("--method", choices=("deep", "classical"), default="deep")
    parser.add_argument("--jobs", default="1,2", help="n_jobs settings to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                              / "tuning.json"))
    args = parser.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    jobs = [int(j) for j in args.jobs.split(",") if j]
    if args.images < 1 or args.trials < 1 or not jobs or min(jobs) < 1:
        parser.error("--images, --trials and every --jobs value must be >= 1")
    unknown = [t for t in types if t not in SPECS]
    if unknown:
        parser.error(f"unknown cell type(s) {unknown}; known: {list(SPECS)}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    rows = []
    print(f"Optuna tuning throughput, {args.method} method, {args.images} synthetic "
          f"520x704 images per type, {args.trials} trials per study, SQLite storage, "
          f"{os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory(prefix="bench_tuning_") as tmp:
        for cell_type in types:
            t0 = time.perf_counter()
            eval_set = make_eval_set(cell_type, args.method, args.images, rng)
            gen_s = time.perf_counter() - t0
            row = {"cell_type": cell_type, "images": len(eval_set),
                   "cells_per_image": float(np.mean([len(t) for t in eval_set.truths])),
                   "cache_mb": eval_set.nbytes / 2**20, "trials": args.trials,
                   "generate_seconds": gen_s, "by_n_jobs": {}}
            for n_jobs in jobs:
                cpu0 = _cpu_seconds()
                with Evaluator({cell_type: eval_set}, n_jobs=n_jobs) as evaluator:
                    run = run_study(evaluator, cell_type, args.method, args.trials, args.seed,
                                    Path(tmp), f"{cell_type}-j{n_jobs}")
                # After close(): the pool's workers have exited, so their CPU time is counted.
                run["cpu_seconds_per_trial"] = (_cpu_seconds() - cpu0) / args.trials
                row["by_n_jobs"][str(n_jobs)] = run
            runs = row["by_n_jobs"]
            base = runs[str(jobs[0])]["trials_per_minute"]
            row["speedup_vs_first"] = {j: r["trials_per_minute"] / base for j, r in runs.items()}
            row["same_best_score"] = len({round(r["best_score"], 9) for r in runs.values()}) == 1
            rows.append(row)
            cols = "  ".join(f"n_jobs={j}: {runs[str(j)]['trials_per_minute']:5.1f}/min "
                             f"({runs[str(j)]['cpu_seconds_per_trial']:.2f} cpu-s/trial)"
                             for j in jobs)
            ratio = "  ".join(f"x{row['speedup_vs_first'][str(j)]:.2f}" for j in jobs[1:])
            print(f"{cell_type:<7} {row['cells_per_image']:5.0f} cells/img  {cols}  {ratio}  "
                  f"default {runs[str(jobs[0])]['default_score']:.3f} -> best "
                  f"{runs[str(jobs[0])]['best_score']:.3f}"
                  + ("" if row["same_best_score"] else "  (best scores differ!)"), flush=True)

    report = {
        "benchmark": "tuning",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "method": args.method,
        "image_size": [520, 704],
        "images_per_type": args.images,
        "trials_per_study": args.trials,
        "n_jobs": jobs,
        "storage": "SQLite file (WAL), as tune.py's default",
        "generator": "cellseg.data.synthetic.make_image" if synthetic is not None
                     else "bench_postprocess.draw_cells (ellipses)",
        "seed": args.seed,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            # Other jobs on a shared machine take cores from the n_jobs=2 run: record them.
            "load_average_1min_before": round(load_before[0], 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2),
        },
        "versions": {
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-image": skimage.__version__,
            "opencv": cv2.__version__,
            "optuna": optuna.__version__,
            "sqlalchemy": sqlalchemy.__version__,
        },
        "notes": "trials/minute of a whole study (sampling, storage, scoring every image); "
                 "scores are against the drawn truth of synthetic maps, a sanity check only. "
                 "Real data has 155 shsy5y / 320 cort / 131 astro OOF images: divide the "
                 "rate by (real images / images_per_type). On a shared 2-core machine other "
                 "jobs lower the n_jobs=2 speed-up (see the load averages); "
                 "cpu_seconds_per_trial (this process + pool workers) shows the pool's own "
                 "overhead independently of that.",
        "results": rows,
    }
    fileio.write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
