"""Benchmark: how close is the synthetic generator to real Sartorius images?

Why: the demo, the tests and every CPU experiment run on ``cellseg.data.synthetic`` images, so a
method that helps there only helps on real cells if the synthetic cells are counted, sized,
shaped and rendered like real ones. This script measures both sides with the same code and
puts them side by side, per cell type.

Real side: the labelled real subset (``../shared/real_subset``: 40 images, astro 9, cort 21,
shsy5y 10), read with ``cellseg.data.data_root.TrainData``. If it is absent (a user's clone has no
``shared/``), the script prints a note and exits 0. Synthetic side: the project's generator
(``cellseg.data.synthetic.make_dataset``) writes, into a temporary directory, the same number of
704 x 520 images per type, read back with the same loader (so both go through the same RLE
rows and overlap handling).

Statistics (per image, then the median over the images of a type; per cell ones pooled over
all cells of a type):

* cells per image; coverage (fraction of pixels in a cell); touching cells (fraction of cells
  that share a border with, or overlap, another cell); overlap pixels per image (pixels in two
  or more annotations);
* cell area in px: median, p10, p90; shape (``skimage.measure.regionprops`` on each whole
  annotation): solidity, eccentricity, elongation (major / minor axis), broken annotations
  (more than one 8-connected piece) and hollow ones (with a hole);
* look: image std (gray levels) and std / mean; contrast = (background mean - cell interior
  mean) / background std; halo = (mean of the 1-3 px ring outside cells - background mean) /
  background std; edge sharpness = mean gradient on cell edges / mean gradient on background;
  texture = mean local std (5 x 5 window) inside cells, on background, and their ratio;
  high-frequency energy = std of (image - Gaussian blur, sigma 2) inside cells / background;
  quiet-background noise (std of the 20% calmest background, as ``image_stats``).

Background = pixels >= 4 px from every annotated cell; cell interior = cells eroded by 2 px.

Outputs: a printed table (real | synthetic | ratio synthetic / real), and
``bench/results/synthetic_vs_real.{md,json,csv,png}`` (the figure: histograms of cell area and
elongation per type, real vs synthetic, and one synthetic crop per type). One real and one
synthetic crop per type side by side, at the same gray scale, go to
``output/bench/synthetic_vs_real_crops.png`` (``--crops-out``): ``output/`` is git-ignored,
because the real images must not be copied into the repository.
``--as-before`` writes ``synthetic_vs_real_before.json`` instead (a snapshot of the generator
before a change); later runs put it next to the current figures (real | before | after).

Usage:
    python bench/synthetic_vs_real.py [--real-dir ../shared/real_subset] [--seed 0]
                                      [--time-demo N] [--as-before] [--note TEXT]
                                      [--crops-out PNG]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage.measure import regionprops  # noqa: E402

from cellseg import fileio
from cellseg.constants import CELL_TYPES  # noqa: E402
from cellseg.data import synthetic  # noqa: E402
from cellseg.data.data_root import Instances, TrainData  # noqa: E402

NAME = "synthetic_vs_real"
DEFAULT_REAL = common.REPO.parent / "shared" / "real_subset"
# Real pixels stay out of the repository (the competition's data): output/ is git-ignored.
DEFAULT_CROPS = common.REPO / "output" / "bench" / f"{NAME}_crops.png"

# (key, label, digits) in table order.
METRICS: list[tuple[str, str]] = [
    ("cells", "cells per image (median)"),
    ("cells_p10", "cells per image, p10"),
    ("cells_p90", "cells per image, p90"),
    ("coverage", "coverage (cell pixel fraction)"),
    ("touching", "touching / overlapping cells (fraction)"),
    ("overlap_px", "overlap px per image (median)"),
    ("area_median", "cell area px, median"),
    ("area_p10", "cell area px, p10"),
    ("area_p90", "cell area px, p90"),
    ("solidity", "solidity, median"),
    ("solidity_p10", "solidity, p10"),
    ("eccentricity", "eccentricity, median"),
    ("elongation", "elongation (major/minor), median"),
    ("elongation_p90", "elongation, p90"),
    ("broken", "broken annotations (fraction)"),
    ("hollow", "hollow annotations (fraction)"),
    ("std", "image std (gray levels)"),
    ("cv", "image std / mean"),
    ("bg_std", "background std"),
    ("quiet_std", "quiet background std (noise)"),
    ("contrast", "contrast (bg - cell) / bg std"),
    ("halo", "halo (ring - bg) / bg std"),
    ("edge", "edge / background gradient"),
    ("tex_cell", "texture in cells (local std)"),
    ("tex_bg", "texture on background (local std)"),
    ("tex_ratio", "texture cells / background"),
    ("hf_ratio", "high-freq energy cells / background"),
]
# Key figures for the short before/after table.
KEY = ["cells", "area_median", "area_p10", "area_p90", "solidity", "elongation",
       "overlap_px", "touching", "std", "contrast", "halo", "edge", "tex_ratio", "quiet_std"]


# ------------------------------------------------------------------------------ statistics
def cell_shapes(inst: Instances, width: int) -> dict[str, np.ndarray]:
    """Per-cell area and shape of each whole annotation (overlap pixels included)."""
    out: dict[str, list[float]] = {k: [] for k in
                                   ("area", "solidity", "eccentricity", "elongation",
                                    "broken", "hollow")}
    for idx in inst.pixels:
        ys, xs = np.divmod(idx, width)
        y0, x0 = ys.min(), xs.min()
        crop = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), np.uint8)
        crop[ys - y0, xs - x0] = 1
        n_cc = cv2.connectedComponents(crop, connectivity=8)[0] - 1
        p = regionprops(crop)[0]
        minor = max(p.axis_minor_length, 1.0)
        out["area"].append(idx.size)
        out["solidity"].append(p.solidity)
        out["eccentricity"].append(p.eccentricity)
        out["elongation"].append(p.axis_major_length / minor)
        out["broken"].append(n_cc > 1)
        out["hollow"].append(p.euler_number < n_cc)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def touching_fraction(inst: Instances) -> float:
    """Fraction of cells that share a 4-neighbour border with, or overlap, another cell."""
    lab = inst.labels
    n = inst.n_cells
    if n == 0:
        return float("nan")
    hit = np.zeros(n + 1, bool)
    for a, b in ((lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])):
        m = (a != b) & (a > 0) & (b > 0)
        hit[a[m]] = True
        hit[b[m]] = True
    for k, idx in enumerate(inst.pixels, start=1):
        if not hit[k] and inst.overlap.ravel()[idx].any():
            hit[k] = True
    # A cell whose pixels all went to a smaller overlapping cell has no label pixel: it
    # overlaps by definition.
    present = np.zeros(n + 1, bool)
    present[np.unique(lab)] = True
    hit[1:][~present[1:]] = True
    return float(hit[1:].mean())


def look_stats(image: np.ndarray, cell: np.ndarray) -> dict[str, float]:
    """Contrast, halo, edge, texture and noise of one image given its cell-pixel mask."""
    im = image.astype(np.float64)
    c8 = cell.astype(np.uint8)
    near = cv2.dilate(c8, np.ones((9, 9), np.uint8)) > 0  # within 4 px of a cell
    bg = ~near
    inner = cv2.erode(c8, np.ones((5, 5), np.uint8)) > 0
    ring = (cv2.dilate(c8, np.ones((7, 7), np.uint8)) > 0) & ~cell  # 1-3 px outside
    base = synthetic.image_stats(image, c8)
    nan = float("nan")
    if not bg.any():
        bg_mean = bg_std = nan
    else:
        bg_mean, bg_std = float(im[bg].mean()), float(im[bg].std())
    cell_mean = float(im[inner].mean()) if inner.any() else nan
    ring_mean = float(im[ring].mean()) if ring.any() else nan
    mu = cv2.blur(im, (5, 5))
    local = np.sqrt(np.maximum(cv2.blur(im * im, (5, 5)) - mu * mu, 0.0))
    hf = im - cv2.GaussianBlur(im, (0, 0), 2.0)
    tex_cell = float(local[inner].mean()) if inner.any() else nan
    tex_bg = float(local[bg].mean()) if bg.any() else nan
    hf_cell = float(hf[inner].std()) if inner.any() else nan
    hf_bg = float(hf[bg].std()) if bg.any() else nan
    return {
        "std": float(im.std()), "cv": float(im.std() / im.mean()),
        "bg_std": bg_std, "quiet_std": base["quiet_std"],
        "contrast": (bg_mean - cell_mean) / bg_std,
        "halo": (ring_mean - bg_mean) / bg_std,
        "edge": base["edge_gradient_ratio"],
        "tex_cell": tex_cell, "tex_bg": tex_bg, "tex_ratio": tex_cell / tex_bg,
        "hf_ratio": hf_cell / hf_bg,
        "coverage": float(cell.mean()),
    }


def dataset_stats(root: Path) -> tuple[dict[str, dict[str, float]],
                                       dict[str, dict[str, np.ndarray]],
                                       dict[str, tuple[str, Path]]]:
    """Per type: the statistics, the pooled per-cell values (area, shape), and one example
    image id / path."""
    data = TrainData(root)
    per_image: dict[str, list[dict[str, float]]] = {t: [] for t in CELL_TYPES}
    per_cell: dict[str, list[dict[str, np.ndarray]]] = {t: [] for t in CELL_TYPES}
    example: dict[str, tuple[str, Path]] = {}
    for image_id in sorted(data.ids):
        t = data.cell_type(image_id)
        image = data.load_image(image_id)
        inst = data.load_instances(image_id)
        width = image.shape[1]
        shapes = cell_shapes(inst, width)
        row = look_stats(image, inst.labels > 0)
        row["cells"] = float(inst.n_cells)
        row["overlap_px"] = float(inst.overlap.sum())
        row["touching"] = touching_fraction(inst)
        per_image[t].append(row)
        per_cell[t].append(shapes)
        example.setdefault(t, (image_id, data.image_path(image_id)))
    stats: dict[str, dict[str, float]] = {}
    cells: dict[str, dict[str, np.ndarray]] = {}
    for t in CELL_TYPES:
        if not per_image[t]:
            continue
        rows = per_image[t]
        s = {k: float(np.nanmedian([r[k] for r in rows])) for k in rows[0]}
        counts = np.array([r["cells"] for r in rows])
        s["cells_p10"], s["cells_p90"] = (float(v) for v in np.percentile(counts, [10, 90]))
        s["images"] = float(len(rows))
        pooled = {k: np.concatenate([c[k] for c in per_cell[t]]) for k in per_cell[t][0]}
        a = pooled["area"]
        s["n_cells_total"] = float(a.size)
        s["area_median"], s["area_p10"], s["area_p90"] = (float(v) for v in
                                                           np.percentile(a, [50, 10, 90]))
        s["solidity"] = float(np.median(pooled["solidity"]))
        s["solidity_p10"] = float(np.percentile(pooled["solidity"], 10))
        s["eccentricity"] = float(np.median(pooled["eccentricity"]))
        s["elongation"] = float(np.median(pooled["elongation"]))
        s["elongation_p90"] = float(np.percentile(pooled["elongation"], 90))
        s["broken"] = float(pooled["broken"].mean())
        s["hollow"] = float(pooled["hollow"].mean())
        stats[t] = s
        cells[t] = pooled
    return stats, cells, example


# ------------------------------------------------------------------------------ output
def ratio(a: float, b: float) -> float:
    return float(a / b) if b not in (0.0,) and np.isfinite(a) and np.isfinite(b) else \
        float("nan")


def comparison_rows(real: Mapping[str, Mapping[str, float]],
                    syn: Mapping[str, Mapping[str, float]],
                    before: Mapping[str, Mapping[str, float]] | None, t: str,
                    keys: list[str] | None = None) -> list[list[Any]]:
    labels = dict(METRICS)
    rows = []
    for k in keys or [m[0] for m in METRICS]:
        r, s = real[t][k], syn[t][k]
        row: list[Any] = [labels[k], r]
        if before is not None and t in before and k in before[t]:
            row += [before[t][k], ratio(before[t][k], r)]
        row += [s, ratio(s, r)]
        rows.append(row)
    return rows


def headers(with_before: bool) -> list[str]:
    if with_before:
        return ["statistic", "real", "before", "before / real", "after", "after / real"]
    return ["statistic", "real", "synthetic", "synthetic / real"]


def write_csv(path: Path, real: Mapping, syn: Mapping, before: Mapping | None) -> None:
    lines = ["cell_type,statistic,real,synthetic,ratio"
             + (",synthetic_before,ratio_before" if before else "")]
    for t in syn:
        for k, _ in METRICS:
            vals = [real[t][k], syn[t][k], ratio(syn[t][k], real[t][k])]
            if before:
                b = before.get(t, {}).get(k, float("nan"))
                vals += [b, ratio(b, real[t][k])]
            lines.append(f"{t},{k}," + ",".join(f"{v:.6g}" for v in vals))
    fileio.write_text(path, "\n".join(lines) + "\n")


def _crop(path: Path, crop_h: int = 260, crop_w: int = 352) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    y0, x0 = max(0, (h - crop_h) // 2), max(0, (w - crop_w) // 2)
    return img[y0:y0 + crop_h, x0:x0 + crop_w]


def write_figure(path: Path, real_cells: Mapping[str, Mapping[str, np.ndarray]],
                 syn_cells: Mapping[str, Mapping[str, np.ndarray]],
                 syn_ex: Mapping[str, tuple[str, Path]]) -> None:
    """Per type: histograms of cell area and elongation (real vs synthetic), a synthetic crop.

    No real pixels: this figure is committed, and the real images must not be copied into the
    repository (see :func:`write_crops` for the side-by-side look).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    types = [t for t in CELL_TYPES if t in real_cells and t in syn_cells]
    fig, axes = plt.subplots(len(types), 3, figsize=(14, 3.8 * len(types)),
                             gridspec_kw={"width_ratios": [1.1, 1.1, 1]})
    axes = np.atleast_2d(axes)
    for row, t in zip(axes, types):
        for ax, key, label, log in ((row[0], "area", "cell area (px)", True),
                                    (row[1], "elongation", "elongation (major / minor axis)",
                                     True)):
            r, s = real_cells[t][key], syn_cells[t][key]
            lo = max(1.0, float(min(r.min(), s.min())))
            hi = float(min(max(r.max(), s.max()), 30.0 if key == "elongation" else np.inf))
            bins = np.geomspace(lo, hi, 40) if log else np.linspace(lo, hi, 40)
            ax.hist(np.clip(r, lo, hi), bins=bins, alpha=0.55, density=True,
                    label=f"real (n={r.size}, median {np.median(r):.3g})")
            ax.hist(np.clip(s, lo, hi), bins=bins, alpha=0.55, density=True,
                    label=f"synthetic (n={s.size}, median {np.median(s):.3g})")
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(label)
            ax.set_title(f"{t}: {key}")
            ax.legend(fontsize=8)
        ax = row[2]
        ax.imshow(_crop(syn_ex[t][1]), cmap="gray", vmin=78, vmax=178)
        ax.set_title(f"{t}, synthetic ({syn_ex[t][0]}, centre crop, gray 78-178)", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fileio.save_figure(fig, path, dpi=72)
    plt.close(fig)


def write_crops(path: Path, real_ex: Mapping[str, tuple[str, Path]],
                syn_ex: Mapping[str, tuple[str, Path]]) -> None:
    """One real and one synthetic centre crop per type, side by side, same gray range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = [t for t in CELL_TYPES if t in real_ex and t in syn_ex]
    fig, axes = plt.subplots(len(types), 2, figsize=(10, 3.8 * len(types)))
    axes = np.atleast_2d(axes)
    for row, t in zip(axes, types):
        for ax, (kind, ex) in zip(row, (("real", real_ex[t]), ("synthetic", syn_ex[t]))):
            ax.imshow(_crop(ex[1]), cmap="gray", vmin=78, vmax=178)
            ax.set_title(f"{t}, {kind} ({ex[0]}, centre crop, gray 78-178)", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.save_figure(fig, path, dpi=80)
    plt.close(fig)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(common.REPO))
    except ValueError:
        return str(path)


def time_demo_generation(repeats: int) -> dict[str, Any]:
    """Seconds to write the demo's data root (60 + 12 images, 704 x 520, seed 0), in-process."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            synthetic.make_dataset(Path(tmp) / "data", n_train=60, n_test=12, seed=0)
            times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": float(min(times)),
            "repeats": repeats, "images": 72}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--real-dir", type=Path, default=DEFAULT_REAL,
                   help="labelled real data root (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="synthetic seed (default 0)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--time-demo", type=int, default=0, metavar="N",
                   help="also time the demo's 72-image generation N times (median)")
    p.add_argument("--as-before", action="store_true",
                   help="write <out-dir>/synthetic_vs_real_before.json only (a snapshot of "
                        "the generator before a change)")
    p.add_argument("--crops-out", type=Path, default=DEFAULT_CROPS,
                   help="side-by-side real / synthetic crops (real pixels: keep it out of git; "
                        "default %(default)s)")
    p.add_argument("--note", action="append", default=[],
                   help="a sentence to add to the notes of the results page (repeatable)")
    args = p.parse_args(argv)

    if not (args.real_dir / "train.csv").is_file():
        print(f"note: real data not found at {args.real_dir} (train.csv missing); the "
              f"comparison needs the labelled real subset, skipped.")
        return 0
    start = common.start_info()
    t0 = time.perf_counter()
    real, real_cells, real_ex = dataset_stats(args.real_dir)
    t_real = time.perf_counter() - t0
    n_per_type = {t: int(s["images"]) for t, s in real.items()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        t1 = time.perf_counter()
        synthetic.make_dataset(root, n_train=sum(n_per_type.values()), n_test=0,
                               seed=args.seed, type_fractions=n_per_type)
        t_gen = time.perf_counter() - t1
        syn, syn_cells, syn_ex = dataset_stats(root)
        if not args.as_before:
            write_figure(args.out_dir / f"{NAME}.png", real_cells, syn_cells, syn_ex)
            write_crops(args.crops_out, real_ex, syn_ex)
    timing = {"real_stats_s": t_real, "synthetic_generation_s": t_gen,
              "synthetic_generation_s_per_image": t_gen / sum(n_per_type.values()),
              "total_s": time.perf_counter() - t0}
    if args.time_demo:
        timing["demo_generation"] = time_demo_generation(args.time_demo)

    before_path = args.out_dir / f"{NAME}_before.json"
    before_doc = None
    if args.as_before:
        doc = {"date": common.now_iso(), "command": common.command_line(),
               "machine": common.machine_info(), "synthetic": syn, "real": real,
               "timing": timing}
        fileio.write_text(before_path, json.dumps(doc, indent=2) + "\n")
    elif before_path.is_file():
        before_doc = json.loads(before_path.read_text())
    before = before_doc["synthetic"] if before_doc else None

    sections = []
    for t in syn:
        rows = comparison_rows(real, syn, before, t)
        print(f"\n{t} ({n_per_type[t]} images each; real {int(real[t]['n_cells_total'])} "
              f"cells, synthetic {int(syn[t]['n_cells_total'])})")
        print(common.text_table(headers(before is not None), rows, digits=2))
        sections.append((t, rows))
    print(f"\ntimes: {', '.join(f'{k} {v:.1f}' for k, v in timing.items() if isinstance(v, float))}"
          + (f", demo generation (72 images) median {timing['demo_generation']['median_s']:.1f} s"
             if "demo_generation" in timing else ""))
    if args.as_before:
        print(f"wrote {before_path}")
        return 0

    body = [f"Real: `{args.real_dir.name}` ({', '.join(f'{t} {n}' for t, n in n_per_type.items())}"
            f" images). Synthetic: `cellseg.data.synthetic.make_dataset`, 704 x 520, seed "
            f"{args.seed}, the same number of images per type. Ratio = synthetic / real."]
    if before_doc:
        body.append(f"\"before\" = the generator before its parameters were tuned toward these "
                    f"figures (snapshot of {before_doc['date']}, `{before_doc['command']}`); "
                    f"\"after\" = the current generator.")
        key_rows = []
        for t in syn:
            for k in KEY:
                key_rows.append([t, dict(METRICS)[k], real[t][k], before[t][k],
                                 syn[t][k], ratio(before[t][k], real[t][k]),
                                 ratio(syn[t][k], real[t][k])])
        body.append("## Key figures, before / after\n\n" + common.markdown_table(
            ["type", "statistic", "real", "before", "after", "before / real", "after / real"],
            key_rows, digits=2))
        bt = before_doc.get("timing", {}).get("demo_generation")
        at = timing.get("demo_generation")
        if bt and at:
            body.append(f"Demo data generation (72 images, 704 x 520, in-process, median of "
                        f"{at['repeats']}): before {bt['median_s']:.1f} s (1-min load average "
                        f"{before_doc['machine'].get('load_average_1min')} at the start), after "
                        f"{at['median_s']:.1f} s (load {start['machine'].get('load_average_1min')})"
                        f". Runs at different loads on a shared machine: see the notes for an "
                        f"interleaved comparison when there is one.")
    for t, rows in sections:
        body.append(f"## {t} ({n_per_type[t]} images each; real "
                    f"{int(real[t]['n_cells_total'])} cells, synthetic "
                    f"{int(syn[t]['n_cells_total'])})\n\n"
                    + common.markdown_table(headers(before is not None), rows, digits=2))
    body.append(f"![area and elongation histograms]({NAME}.png)\n\nThe figure: per type, "
                f"histograms of cell area and elongation (log scales), real vs synthetic, and "
                f"a centre crop of the first synthetic image. Real and synthetic crops side by "
                f"side are written to `{_rel(args.crops_out)}` (kept out of git: real images "
                f"must not be copied into the repository).")
    notes = [
        "Per-image statistics are medians over the images of a type; per-cell ones (area, "
        "shape) are pooled over all its cells. Background = pixels >= 4 px from every "
        "annotated cell, cell interior = cells eroded by 2 px, halo ring = 1-3 px outside.",
        "Real background includes unannotated cells, membranes and neurites: its std (the "
        "unit of contrast and halo) is larger than a clean background's.",
        "40 real images is a small sample (the competition has 606); the per-type counts in "
        "docs/design.md section 2 (cells per image, areas) come from all 606 and were the "
        "generator's first targets.",
        *args.note,
    ]
    report = common.make_report(NAME, {"real_dir": str(args.real_dir), "seed": args.seed,
                                       "images_per_type": n_per_type},
                                {"real": real, "synthetic": syn, "before": before,
                                 "timing": timing,
                                 "before_timing": before_doc.get("timing") if before_doc
                                 else None},
                                notes, extra_packages=("scikit-image", "opencv-python-headless"),
                                started=start)
    jpath, mpath = common.write_results(NAME, report, "\n\n".join(body), args.out_dir,
                                        title="Synthetic vs real images")
    write_csv(args.out_dir / f"{NAME}.csv", real, syn, before)
    print(f"wrote {mpath}, {jpath}, {NAME}.csv and {NAME}.png; crops: {args.crops_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
