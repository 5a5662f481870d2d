"""Synthetic phase-contrast images in the Sartorius competition's exact data layout.

Why: the real data (and a GPU) are not always at hand, yet every stage of the pipeline (loader,
targets, folds, training, tuning, inference, scoring) must run end to end. The generator makes
a data root that looks and behaves like the competition's: the same CSV columns and RLE
convention, one cell type per image, per-type counts and sizes drawn from the real statistics
(docs/design.md section 2, refined on the labelled real subset), crowded *touching* shsy5y
clusters (the instance-separation problem), annotations that overlap a neighbour by a few
pixels (as real annotations do; most among astro), and unannotated debris and neurites.

How an image is made (all vectorised or one OpenCV call per cell, no per-pixel Python):
1. Shapes: star-shaped polygons (ellipse x low-order harmonics; shsy5y elongated and bent,
   cort round, astro irregular with thin spiky processes), scaled to a target area drawn from
   a log-normal, filled with ``cv2.fillPoly`` in the cell's bounding box.
2. Placement: cluster centres + Gaussian offsets; a candidate is rejected if too much of it
   lies on cells already placed. Where cells overlap, each pixel goes to the cell it lies
   deepest in (largest distance to that cell's own edge), which yields shared, natural
   borders: touching cells.
3. Overlapping annotations: a small fraction of touching cells keep, in their annotation, the
   pixels of their full shape within a few pixels of their visible region (so their RLE row
   shares pixels with a neighbour's row, as in the real train.csv).
4. Rendering: background 128 with subtle illumination, dark cell bodies with texture and
   granules, a dark rim inside the edge, a bright halo outside it, bright lines where cells
   touch, an unannotated mesh of faint membrane outlines (warped Voronoi edges), unannotated
   neurites (thin curved lines) and dead-cell debris (dark round blobs with bright rims), an
   optical blur, then sensor noise with fine horizontal stripes. The image is
   shifted to mean 128, as the real images are (their means are 128.0 +/- 0.02).

Comparison with the real sample (``image_stats``; real = train/0030fd0e6378.png, shsy5y, with
its 395 annotations; synthetic = median over 10 images per type at 704x520, seed 0; the three
real test images have std 6.8 / 8.9 / 11.4 and quiet-background std 1.0 / 1.2 / 1.5):

    statistic                               real    shsy5y   astro    cort
    image mean                              128.0   128.0    128.0    128.0
    image std                               14.7    8.8      6.0      9.8
    background mean (>= 4 px from cells)    128.1   128.8    128.9    128.2
    background std                          11.4    6.2      3.0      9.1
    quiet background std (20% calmest)      5.8     2.5      1.4      2.6
    cell interior mean (eroded 2 px)        119.4   123.4    127.8    116.9
    ring 1-2 px outside cells, mean         129.8   133.6    129.4    132.3
    edge gradient / background gradient     2.0     3.0      4.5      2.9
    cell coverage                           0.30    0.15     0.18     0.02

The per-type parameters (``STYLES``) were tuned toward the 40 labelled images of the real
subset with ``bench/synthetic_vs_real.py`` (cells per image, area percentiles, elongation,
touching and overlapping annotations, contrast and halo in units of the background std,
texture inside cells vs background; before / after in ``bench/results/synthetic_vs_real.md``).
Most figures are now within about 30% of the real ones; the background is still calmer than
real (busy real backgrounds of neurites, membranes and dead cells), and real astro
annotations are more often hollow. Counts and sizes (100 images, seed 0): shsy5y 146 / 331 /
781 cells per image (min / median / max), median area 153 px; astro 25 / 74 / 191, 769 px;
cort 10 / 30 / 92, 230 px.

One module on purpose: shapes, placement, overlaps and
rendering share the per-type :class:`CellStyle` and were tuned together against the real
subset; :func:`make_dataset` writes them in the competition's layout.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cellseg import fileio
from cellseg.constants import CELL_TYPES, IMAGE_HEIGHT, IMAGE_WIDTH, TRAIN_COLUMNS
from cellseg.data import rle
from cellseg.data.images import write_png

# Real proportions of the 606 training images (docs/design.md section 2).
REAL_TYPE_FRACTIONS: dict[str, float] = {"shsy5y": 155 / 606, "astro": 131 / 606,
                                         "cort": 320 / 606}

_REF_PIXELS = IMAGE_HEIGHT * IMAGE_WIDTH


@dataclass(frozen=True)
class CellStyle:
    """Per-type shape, placement and look; counts and areas refer to a 704x520 field."""

    # cells per image: log-normal median / sigma, clipped to [min, max]
    count_median: float
    count_sigma: float
    count_min: int
    count_max: int
    # annotated cell area in px at 704x520: log-normal median / sigma, clipped
    area_median: float
    area_sigma: float
    area_min: float
    area_max: float
    aspect: tuple[float, float]  # long / short axis range
    harmonics: float  # amplitude of the shape harmonics (irregularity)
    bend: float  # max bend of the long axis (banana shapes)
    processes: tuple[int, int]  # annotated thin processes per cell (min, max)
    process_length: float  # in units of the cell radius
    cluster_size: float  # mean cells per cluster (1 = no clustering)
    loose_fraction: float  # cells placed uniformly, outside clusters
    spread: float  # cluster spread in cell radii per sqrt(cluster size)
    max_overlap: float  # reject a candidate whose shape lies this much on placed cells
    overlap_fraction: float  # touching cells whose annotation overlaps a neighbour
    # rendering, in gray levels
    body: float  # mean body offset
    body_sd: float  # cell-to-cell variation of the body offset
    texture: float
    granules: float
    rim: float  # dark line inside the edge
    halo: float  # bright halo outside
    border: float  # bright line between touching cells
    edge_width: float  # px at 704x520
    neurites_per_cell: float
    neurite_length: float  # px at 704x520
    debris_per_cell: float  # debris clumps per cell
    mesh: tuple[float, float]  # density range of the unannotated membrane mesh (0 = none)
    mesh_amp: float  # its line contrast
    # Optional look features (defaults keep the original look and random draws).
    debris_blobs: tuple[int, int] = (1, 9)  # blobs per debris clump (min, max)
    neurite_core: float = -22.0  # gray levels of a neurite's dark core
    neurite_halo: float = 9.0  # and of its bright flanks


STYLES: dict[str, CellStyle] = {
    # Values tuned toward the labelled real subset (bench/synthetic_vs_real.py; results in
    # bench/results/synthetic_vs_real.md): counts, areas, elongation, touching / overlapping
    # annotations, contrast and halo in units of the background std, texture.
    # Neuroblastoma: small elongated cells with spiky ends, crowded into touching clusters.
    "shsy5y": CellStyle(
        count_median=360, count_sigma=0.35, count_min=75, count_max=790,
        area_median=140, area_sigma=0.6, area_min=30, area_max=900,
        aspect=(1.3, 3.2), harmonics=0.2, bend=0.2, processes=(0, 2), process_length=0.8,
        cluster_size=18, loose_fraction=0.08, spread=0.6, max_overlap=0.3,
        overlap_fraction=0.15,
        body=-4.0, body_sd=3.5, texture=18.0, granules=-20.0, rim=-18.0, halo=11.0,
        border=13.0, edge_width=1.2, neurites_per_cell=2.5, neurite_length=60,
        debris_per_cell=0.04, mesh=(0.4, 1.0), mesh_amp=80.0),
    # Astrocytes: large, very irregular and elongated, long thin processes, faint bodies;
    # grouped, with many overlapping annotations.
    "astro": CellStyle(
        count_median=73, count_sigma=0.5, count_min=5, count_max=200,
        area_median=800, area_sigma=0.8, area_min=60, area_max=8000,
        aspect=(1.8, 6.0), harmonics=0.3, bend=0.2, processes=(2, 5), process_length=2.0,
        cluster_size=8, loose_fraction=0.15, spread=0.6, max_overlap=0.35,
        overlap_fraction=0.35,
        body=-0.5, body_sd=3.5, texture=12.0, granules=-10.0, rim=-22.0, halo=3.5,
        border=6.0, edge_width=1.2, neurites_per_cell=1.0, neurite_length=110,
        debris_per_cell=0.03, mesh=(0.2, 0.9), mesh_amp=36.0),
    # Cortical neurons: small round textured bodies, sparse, on a busy background of long
    # dark unannotated neurites and many small dead-cell specks.
    "cort": CellStyle(
        count_median=30, count_sigma=0.5, count_min=4, count_max=108,
        area_median=205, area_sigma=0.35, area_min=60, area_max=600,
        aspect=(1.0, 1.9), harmonics=0.06, bend=0.05, processes=(0, 1), process_length=0.6,
        cluster_size=4, loose_fraction=0.3, spread=0.8, max_overlap=0.3,
        overlap_fraction=0.5,
        body=-6.0, body_sd=3.0, texture=35.0, granules=-20.0, rim=-16.0, halo=16.0,
        border=14.0, edge_width=1.2, neurites_per_cell=8.0, neurite_length=150,
        debris_per_cell=12.0, mesh=(0.4, 1.0), mesh_amp=100.0,
        debris_blobs=(1, 2), neurite_core=-30.0, neurite_halo=6.0),
}


@dataclass(frozen=True)
class SyntheticCells:
    """The annotation of one image: a label image plus the few pixels owned twice.

    ``labels`` (H x W int32, 0 = background) gives each pixel its cell; ``extra_label[k]``
    also owns pixel ``extra_index[k]`` (flat, row-major), which already belongs to another
    cell. Cell ``i`` (1..n)'s annotation is ``labels == i`` plus its extra pixels: compact
    even for hundreds of cells, and exactly what the RLE rows encode.
    """

    labels: np.ndarray
    extra_label: np.ndarray
    extra_index: np.ndarray
    cell_type: str

    @property
    def n(self) -> int:
        """Number of cells."""
        return int(self.labels.max()) if self.labels.size else 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]

    def mask(self, i: int) -> np.ndarray:
        """Boolean mask of cell ``i`` (1-based), extra pixels included."""
        if not 1 <= i <= self.n:
            raise ValueError(f"SyntheticCells.mask: cell {i} out of range 1..{self.n}")
        m = self.labels == i
        m.ravel()[self.extra_index[self.extra_label == i]] = True
        return m

    def masks(self) -> list[np.ndarray]:
        """All masks, in label order (n x H x W booleans: mind the memory for big images)."""
        return [self.mask(i) for i in range(1, self.n + 1)]

    def areas(self) -> np.ndarray:
        """Annotated area of each cell, in label order."""
        n = self.n
        return (np.bincount(self.labels.ravel(), minlength=n + 1)[1:]
                + np.bincount(self.extra_label, minlength=n + 1)[1:])

    def overlap_pixels(self) -> int:
        """Pixels that belong to two or more annotations."""
        return int(np.unique(self.extra_index).size)

    def rles(self) -> list[str]:
        """One RLE string per cell, in label order (row-major, 1-indexed)."""
        out = rle.encode_labels(self.labels)
        for i in np.unique(self.extra_label):
            out[int(i) - 1] = rle.encode(self.mask(int(i)))
        return out


# --------------------------------------------------------------------------- shapes


def _scale_for(height: int, width: int, scale: float | None) -> float:
    """Linear size factor: by default the image shows the real field of view, resampled.

    The automatic factor stops at 0.25 (shsy5y median ~19 px) so tiny test images keep
    drawable cells; they then show part of the field.
    """
    if scale is None:
        return max(0.25, float(np.sqrt(height * width / _REF_PIXELS)))
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return float(scale)


def _polygons(style: CellStyle, rng: np.random.Generator, n: int, areas: np.ndarray,
              angles: np.ndarray, n_vertices: int = 40) -> np.ndarray:
    """Batch of n star-shaped polygons centred on 0, shape (n, V, 2) as (x, y), given areas."""
    t = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False)
    k = np.arange(2, 7)
    amp = style.harmonics * rng.random((n, k.size)) / (k - 1.0)
    phase = rng.uniform(0, 2 * np.pi, (n, k.size))
    r = 1.0 + np.einsum("nk,nkv->nv", amp, np.cos(k[None, :, None] * t + phase[:, :, None]))
    # Thin processes: narrow Gaussian bumps of the radius.
    lo, hi = style.processes
    n_proc = rng.integers(lo, hi + 1, n)
    max_p = int(n_proc.max()) if n else 0
    if max_p:
        theta = rng.uniform(0, 2 * np.pi, (n, max_p))
        length = style.process_length * rng.uniform(0.4, 1.0, (n, max_p))
        length *= np.arange(max_p)[None, :] < n_proc[:, None]
        width = rng.uniform(0.06, 0.14, (n, max_p))
        d = np.angle(np.exp(1j * (t[None, None, :] - theta[:, :, None])))
        r = r + np.sum(length[:, :, None] * np.exp(-0.5 * (d / width[:, :, None]) ** 2), axis=1)
    r = np.maximum(r, 0.3)
    aspect = rng.uniform(*style.aspect, n)
    x = np.sqrt(aspect)[:, None] * r * np.cos(t)
    y = r * np.sin(t) / np.sqrt(aspect)[:, None]
    bend = rng.uniform(-style.bend, style.bend, n)[:, None]
    y = y + bend * (x ** 2) / np.sqrt(aspect)[:, None]
    # Shoelace area, then scale to the target area.
    a = 0.5 * np.abs(np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1))
    f = np.sqrt(areas / np.maximum(a, 1e-6))[:, None]
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    return np.stack([f * (c * x - s * y), f * (s * x + c * y)], axis=-1)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float,
               size: int | None = None) -> np.ndarray:
    return np.clip(median * np.exp(sigma * rng.standard_normal(size)), lo, hi)


def _centres(style: CellStyle, rng: np.random.Generator, n: int, height: int, width: int,
             radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate centres (n, 2) as (x, y) and orientations: clusters plus loose cells."""
    n_clusters = max(1, int(round(n * (1 - style.loose_fraction) / style.cluster_size)))
    c_xy = rng.uniform((0, 0), (width, height), (n_clusters, 2))
    c_angle = rng.uniform(0, np.pi, n_clusters)
    member = rng.integers(0, n_clusters, n)
    size = np.bincount(member, minlength=n_clusters)
    sd = style.spread * radius * np.sqrt(np.maximum(size[member], 1))
    xy = c_xy[member] + rng.standard_normal((n, 2)) * sd[:, None]
    angle = c_angle[member] + rng.normal(0, 0.45, n)
    loose = rng.random(n) < style.loose_fraction
    xy[loose] = rng.uniform((0, 0), (width, height), (int(loose.sum()), 2))
    angle[loose] = rng.uniform(0, np.pi, int(loose.sum()))
    return xy, angle


def _place(style: CellStyle, rng: np.random.Generator, height: int, width: int,
           n_target: int, s: float) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """Place cells; return the label image and each kept cell's full-shape mask in its box.

    Returns ``labels`` (int32, sequential 1..n) and, per cell, ``(y0, x0, full_mask)`` where
    ``full_mask`` is its whole polygon clipped to the image (used for overlapping annotations).
    """
    n_cand = int(n_target * 2.5) + 8
    area_scale = s * s
    areas = _lognormal(rng, style.area_median, style.area_sigma, style.area_min,
                       style.area_max, n_cand) * area_scale
    radius = float(np.sqrt(style.area_median * area_scale / np.pi))
    xy, angle = _centres(style, rng, n_cand, height, width, radius)
    polys = _polygons(style, rng, n_cand, areas, angle) + xy[:, None, :]

    owner = np.zeros((height, width), np.int32)
    depth = np.zeros((height, width), np.float32)
    boxes: list[tuple[int, int, np.ndarray]] = []
    min_area = max(8.0, style.area_min * area_scale * 0.5)
    lo_all = np.floor(polys.min(axis=1)).astype(int) - 1
    hi_all = np.ceil(polys.max(axis=1)).astype(int) + 2
    for j in range(n_cand):
        if len(boxes) >= n_target:
            break
        (x0, y0), (x1, y1) = lo_all[j], hi_all[j]
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        pts = np.round((polys[j] - (x0, y0)) * 8).astype(np.int32)
        cv2.fillPoly(local, [pts], 1, lineType=cv2.LINE_8, shift=3)
        full_area = int(local.sum())
        if full_area < min_area:
            continue
        # Depth inside the whole shape (before clipping, so cut cells keep natural depth).
        dist = cv2.distanceTransform(local, cv2.DIST_L2, 3)
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y1, height), min(x1, width)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        m = local[sub].astype(bool)
        vis = int(m.sum())
        if vis < max(min_area, 0.35 * full_area):
            continue  # mostly outside the image
        o = owner[cy0:cy1, cx0:cx1]
        if np.count_nonzero(o[m]) > style.max_overlap * vis:
            continue
        d = depth[cy0:cy1, cx0:cx1]
        dd = dist[sub]
        win = m & (dd > d)
        label = len(boxes) + 1
        o[win] = label
        d[win] = dd[win]
        boxes.append((cy0, cx0, m))

    # Clean up: keep each cell's largest connected piece; drop cells carved too small.
    labels = np.zeros_like(owner)
    kept: list[tuple[int, int, np.ndarray]] = []
    for i, (y0, x0, m) in enumerate(boxes, start=1):
        h, w = m.shape
        vis = (owner[y0:y0 + h, x0:x0 + w] == i).astype(np.uint8)
        n_cc, cc, stats, _ = cv2.connectedComponentsWithStats(vis, connectivity=4)
        if n_cc < 2:
            continue
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[best, cv2.CC_STAT_AREA])
        if area < max(min_area, 0.4 * m.sum()):
            continue
        kept.append((y0, x0, m))
        labels[y0:y0 + h, x0:x0 + w][cc == best] = len(kept)
    return labels, kept


def _overlaps(style: CellStyle, rng: np.random.Generator, labels: np.ndarray,
              full: list, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Pick touching cells whose annotation reaches a few px into a neighbour's pixels."""
    height, width = labels.shape
    ex_lab: list[np.ndarray] = []
    ex_idx: list[np.ndarray] = []
    pick = np.flatnonzero(rng.random(len(full)) < style.overlap_fraction) + 1
    for i in pick:
        y0, x0, m = full[i - 1]
        h, w = m.shape
        lab = labels[y0:y0 + h, x0:x0 + w]
        vis = (lab == i).astype(np.uint8)
        r = int(rng.integers(2, 5) * max(s, 0.5) + 0.5)
        grown = cv2.dilate(vis, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
        extra = m & grown.astype(bool) & (lab > 0) & (lab != i)
        ys, xs = np.nonzero(extra)
        if ys.size:
            ex_idx.append((ys + y0) * width + (xs + x0))
            ex_lab.append(np.full(ys.size, i, np.int32))
    if not ex_idx:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    idx = np.concatenate(ex_idx).astype(np.int64)
    lab = np.concatenate(ex_lab)
    order = np.lexsort((idx, lab))
    return lab[order], idx[order]


# --------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise, normalised to unit standard deviation.

    Wide blurs are made at low resolution and resized up (same look, a fraction of the cost).
    """
    h, w = shape
    f = max(1, int(sigma // 3))
    small = (max(2, -(-h // f)), max(2, -(-w // f)))
    n = cv2.GaussianBlur(rng.standard_normal(small, np.float32), (0, 0), sigma / f)
    if f > 1:
        n = cv2.resize(n, (w, h), interpolation=cv2.INTER_LINEAR)
    return n / max(float(n.std()), 1e-6)


def _neurites(rng: np.random.Generator, style: CellStyle, starts: np.ndarray, s: float,
              shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Thin curved unannotated lines (core, halo) as float layers in [0, 1]."""
    h, w = shape
    core = np.zeros(shape, np.uint8)
    halo = np.zeros(shape, np.uint8)
    n = len(starts)
    if n:
        steps = 16
        seg = style.neurite_length * max(s, 0.35) * rng.uniform(0.4, 1.6, n) / steps
        ang = rng.uniform(0, 2 * np.pi, n)[:, None] + np.cumsum(
            rng.normal(0, 0.18, (n, steps)), axis=1)
        d = np.stack([np.cos(ang), np.sin(ang)], -1) * seg[:, None, None]
        pts = starts[:, None, :] + np.concatenate([np.zeros((n, 1, 2)), np.cumsum(d, 1)], 1)
        pts = np.round(pts * 8).astype(np.int32)
        thick = max(1, int(round(s)))
        cv2.polylines(halo, list(pts), False, 255, thickness=thick + max(1, round(2 * s)),
                      lineType=cv2.LINE_AA,
                      shift=3)
        cv2.polylines(core, list(pts), False, 255, thickness=thick, lineType=cv2.LINE_AA,
                      shift=3)
    return core.astype(np.float32) / 255, halo.astype(np.float32) / 255


def _debris(rng: np.random.Generator, style: CellStyle, n_cells: int, free: np.ndarray,
            s: float) -> tuple[np.ndarray, np.ndarray]:
    """Dead-cell clumps (dark round blobs with bright rims) on free background, unannotated."""
    h, w = free.shape
    core = np.zeros((h, w), np.uint8)
    ring = np.zeros((h, w), np.uint8)
    n_clumps = int(rng.poisson(style.debris_per_cell * n_cells + 0.5))
    cand = rng.uniform((0, 0), (w, h), (4 * n_clumps + 4, 2)).astype(int)
    ok = free[cand[:, 1], cand[:, 0]]
    centres = cand[ok][:n_clumps]
    rs = max(s, 0.4)
    for cx, cy in centres:
        k = int(rng.integers(style.debris_blobs[0], style.debris_blobs[1] + 1))
        offs = rng.normal(0, 3.0 * rs * np.sqrt(k), (k, 2))
        radii = rng.uniform(1.5, 3.5, k) * rs
        for (ox, oy), r in zip(offs, radii):
            c = (int(round((cx + ox) * 8)), int(round((cy + oy) * 8)))
            cv2.circle(ring, c, int(round((r + 1.2 * rs) * 8)), 255, -1, cv2.LINE_AA, 3)
            cv2.circle(core, c, int(round(r * 8)), 255, -1, cv2.LINE_AA, 3)
    # Isolated specks.
    n_specks = int(rng.poisson(20 * rs * rs + 0.02 * n_cells))
    sp = rng.uniform((0, 0), (w, h), (n_specks, 2))
    for x, y in sp:
        cv2.circle(core, (int(x * 8), int(y * 8)), int(rng.uniform(0.6, 1.5) * rs * 8), 160,
                   -1, cv2.LINE_AA, 3)
    return core.astype(np.float32) / 255, ring.astype(np.float32) / 255


def _mesh(rng: np.random.Generator, shape: tuple[int, int], s: float, density: float
          ) -> np.ndarray:
    """Partial network of thin wavy lines: the outlines of flat, unannotated cell membranes.

    Wavy Voronoi edges of random seeds, kept where a smooth noise field is high, as a
    bright-centred, dark-flanked line profile of unit height.
    """
    h, w = shape
    spacing = 45.0 * max(s, 0.35)
    n = int(rng.poisson(max(density, 0.0) * h * w / spacing ** 2))
    if n < 2:
        return np.zeros(shape, np.float32)
    seeds = np.ones(shape, np.uint8)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = 0
    _, vor = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3,
                                             labelType=cv2.DIST_LABEL_PIXEL)
    # Warp the cells so edges curve like membranes, not straight Voronoi lines.
    amp = 0.25 * spacing
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    dx = amp * _smooth_noise(rng, shape, 0.4 * spacing)
    dy = amp * _smooth_noise(rng, shape, 0.4 * spacing)
    vor = cv2.remap(vor.astype(np.float32), gx + dx, gy + dy, cv2.INTER_NEAREST,
                    borderMode=cv2.BORDER_REFLECT)
    edge = np.zeros(shape, np.float32)
    edge[1:, :] += vor[1:, :] != vor[:-1, :]
    edge[:, 1:] += vor[:, 1:] != vor[:, :-1]
    keep = _smooth_noise(rng, shape, 0.6 * spacing) > rng.uniform(-0.6, 0.3)
    edge = np.minimum(edge, 1.0) * keep
    fine = cv2.GaussianBlur(edge, (0, 0), 0.5 * max(s, 0.5))
    wide = cv2.GaussianBlur(edge, (0, 0), 1.6 * max(s, 0.5))
    return fine - 0.8 * wide


def _render(style: CellStyle, rng: np.random.Generator, labels: np.ndarray, s: float
            ) -> np.ndarray:
    """Phase-contrast look from a label image; returns uint8."""
    h, w = labels.shape
    shape = (h, w)
    rs = max(s, 0.4)
    cell = labels > 0
    n = int(labels.max())
    # Edges: cell pixels with a 4-neighbour of another label (background or cell).
    diff_v = labels[1:, :] != labels[:-1, :]
    diff_h = labels[:, 1:] != labels[:, :-1]
    edge = np.zeros(shape, bool)
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    touch = np.zeros(shape, bool)  # where two cells meet
    tv = diff_v & cell[1:, :] & cell[:-1, :]
    th = diff_h & cell[:, 1:] & cell[:, :-1]
    touch[1:, :] |= tv
    touch[:-1, :] |= tv
    touch[:, 1:] |= th
    touch[:, :-1] |= th
    edge &= cell
    # Dark rim only along the cell/background edge; where cells touch, a bright line instead.
    d_in = cv2.distanceTransform((cell & ~(edge & ~touch)).astype(np.uint8), cv2.DIST_L2, 3)
    d_out = cv2.distanceTransform((~cell).astype(np.uint8), cv2.DIST_L2, 3)
    ew = style.edge_width * rs

    img = np.zeros(shape, np.float32)
    # Cell bodies: per-cell offset, texture, granules.
    offs = np.concatenate(([0.0], style.body + style.body_sd * rng.standard_normal(n)))
    img += offs.astype(np.float32)[labels]
    tex = style.texture * _smooth_noise(rng, shape, 1.2 * rs)
    gran = (_smooth_noise(rng, shape, 0.8 * rs) > 2.0).astype(np.float32) * style.granules
    interior = np.clip(d_in / (2 * ew), 0, 1)
    img += cell * interior * (tex + gran)
    img += style.rim * cell * np.exp(-d_in / ew)
    img += style.halo * (~cell) * np.exp(-(d_out - 1) / ew)
    img += style.border * touch

    # Unannotated membrane mesh (fainter under cells), neurites from random cell pixels,
    # and debris on free background.
    mesh = _mesh(rng, shape, s, float(rng.uniform(*style.mesh)))
    img += style.mesh_amp * mesh * (1.0 - 0.7 * cell)
    ys, xs = np.nonzero(edge)
    n_neur = int(rng.poisson(style.neurites_per_cell * max(n, 3)))
    if ys.size and n_neur:
        pick = rng.integers(0, ys.size, n_neur)
        starts = np.stack([xs[pick], ys[pick]], 1).astype(np.float64)
    else:
        starts = rng.uniform((0, 0), (w, h), (n_neur, 2))
    core, nhalo = _neurites(rng, style, starts, s, shape)
    img += style.neurite_halo * nhalo + style.neurite_core * core
    dcore, dring = _debris(rng, style, n, d_out > 4 * rs, s)
    img += 28.0 * dring * (~cell) - 62.0 * dcore * (~cell)

    img = cv2.GaussianBlur(img, (0, 0), 0.6 * rs)
    # Subtle illumination (real images are flat-field corrected) and sensor noise with
    # fine horizontal stripes.
    gy, gx = rng.integers(2, 5, 2)
    illum = cv2.resize(rng.standard_normal((int(gy), int(gx))).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    img += 0.8 * illum
    img += 0.5 * rng.standard_normal((h, 1)).astype(np.float32)
    streak = cv2.blur(rng.standard_normal(shape, np.float32), (9, 1)) * 3.0
    img += 0.6 * streak + 0.8 * rng.standard_normal(shape, np.float32)
    img += 128.0 - float(img.mean())
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- public API


def _check_type(cell_type: str) -> CellStyle:
    if cell_type not in STYLES:
        raise ValueError(f"unknown cell_type {cell_type!r}; expected one of {CELL_TYPES}")
    return STYLES[cell_type]


def n_cells_for(cell_type: str, rng: np.random.Generator, height: int = IMAGE_HEIGHT,
                width: int = IMAGE_WIDTH, scale: float | None = None,
                count_scale: float = 1.0) -> int:
    """Draw a cell count: real per-type statistics x field of view x ``count_scale``."""
    style = _check_type(cell_type)
    s = _scale_for(height, width, scale)
    fov = height * width / (s * s * _REF_PIXELS)
    n = _lognormal(rng, style.count_median, style.count_sigma, style.count_min,
                   style.count_max) * fov * count_scale
    return max(1, int(round(float(n))))


def make_image(cell_type: str, rng: np.random.Generator, height: int = IMAGE_HEIGHT,
               width: int = IMAGE_WIDTH, *, scale: float | None = None,
               count_scale: float = 1.0, n_cells: int | None = None
               ) -> tuple[np.ndarray, SyntheticCells]:
    """One synthetic image and its annotation, in memory.

    Args:
        cell_type: "shsy5y", "astro" or "cort".
        rng: the random generator (the result is a pure function of its state).
        height, width: image size in px (>= 32).
        scale: linear cell size relative to a 704x520 image. None: the image shows the real
            field of view resampled, so cells shrink with the image (sqrt of the pixel ratio).
            1.0 on a small image gives real-size cells, i.e. a crop (fewer cells).
        count_scale: multiply the drawn cell count (e.g. 0.3 for fast, sparse images).
        n_cells: exact number of candidate cells to aim for (overrides the drawn count).

    Returns:
        ``(image, instances)``: uint8 H x W image and its :class:`SyntheticCells`. Crowded images
        can hold a few fewer cells than aimed for (candidates that do not fit are dropped).
    """
    style = _check_type(cell_type)
    if height < 32 or width < 32:
        raise ValueError(f"image size must be at least 32x32, got {height}x{width}")
    if not count_scale > 0:
        raise ValueError(f"count_scale must be > 0, got {count_scale}")
    s = _scale_for(height, width, scale)
    if n_cells is None:
        n_cells = n_cells_for(cell_type, rng, height, width, scale, count_scale)
    elif n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    for _ in range(5):  # an image with no cell would have no CSV row: draw again
        labels, full = _place(style, rng, height, width, int(n_cells), s)
        if full:
            break
    else:
        raise ValueError(f"could not place any {cell_type} cell in a {height}x{width} image "
                         f"at scale {s:.3g}; use a larger image or scale")
    extra_label, extra_index = _overlaps(style, rng, labels, full, s)
    image = _render(style, rng, labels, s)
    return image, SyntheticCells(labels, extra_label, extra_index, cell_type)


@dataclass
class TypeStats:
    """Per-type summary of a generated split."""

    images: int = 0
    cells: list[int] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)
    overlap_pixels: int = 0

    def row(self) -> dict[str, float]:
        c = np.asarray(self.cells) if self.cells else np.zeros(1)
        a = np.concatenate(self.areas) if self.areas else np.zeros(1)
        return {"images": self.images, "cells": int(c.sum()), "cells_min": int(c.min()),
                "cells_median": float(np.median(c)), "cells_max": int(c.max()),
                "area_median": float(np.median(a)), "overlap_px": self.overlap_pixels}


@dataclass
class DatasetSummary:
    """What :func:`make_dataset` wrote: per split, per cell type statistics."""

    out_dir: Path
    height: int
    width: int
    seed: int
    stats: dict[str, dict[str, TypeStats]]  # split -> cell type -> stats

    def table(self) -> pd.DataFrame:
        rows = [{"split": split, "cell_type": t, **st.row()}
                for split, per in self.stats.items() for t, st in per.items() if st.images]
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        n = {k: sum(st.images for st in v.values()) for k, v in self.stats.items()}
        head = (f"Synthetic data root {self.out_dir} ({self.width}x{self.height}, seed "
                f"{self.seed}): {n.get('train', 0)} train, {n.get('test', 0)} test images")
        tab = self.table()
        if tab.empty:
            return head
        return head + "\n" + tab.to_string(index=False, float_format=lambda v: f"{v:.0f}")


_ID_NUMERIC = re.compile(r"[0-9]+([eE][0-9]+)?")


def _new_id(rng: np.random.Generator, taken: set[str]) -> str:
    """A 12-hex-char id like the real ones, never one a CSV reader would take for a number."""
    while True:
        image_id = rng.bytes(6).hex()
        if image_id not in taken and not _ID_NUMERIC.fullmatch(image_id):
            taken.add(image_id)
            return image_id


def _allocate(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Images per type by largest remainder; each type with weight gets one if n allows."""
    types = [t for t in CELL_TYPES if fractions.get(t, 0) > 0]
    total = sum(fractions[t] for t in types)
    raw = {t: n * fractions[t] / total for t in types}
    count = {t: int(np.floor(v)) for t, v in raw.items()}
    if n >= len(types):
        for t in types:
            count[t] = max(count[t], 1)
    while sum(count.values()) > n:
        t = max(types, key=lambda t: count[t] - raw[t])
        count[t] -= 1
    while sum(count.values()) < n:
        t = max(types, key=lambda t: raw[t] - count[t])
        count[t] += 1
    return count


def _samples(rng: np.random.Generator, counts: Mapping[str, int],
             taken: set[str]) -> list[tuple[str, str, str, list[int]]]:
    """Group each type's images into samples of 3-6 time points (a well imaged over time).

    Returns (cell_type, sample_id, sample_date, [minutes after plating, one per image]).
    """
    prefix = {"shsy5y": ["shsy5y[diff]"], "astro": ["astros[hippo]"],
              "cort": ["cort[pre-treat]", "cort[oka-high]", "cort[oka-low]", "cort[mito]"]}
    out = []
    for t in CELL_TYPES:
        left = counts.get(t, 0)
        while left > 0:
            k = min(left, int(rng.integers(3, 7)))
            if 0 < left - k < 3:
                k = left if left <= 6 else left - 3
            left -= k
            while True:
                row, col = "ABCDEFGH"[int(rng.integers(0, 8))], int(rng.integers(1, 13))
                sid = (f"{prefix[t][int(rng.integers(0, len(prefix[t])))]}_{row}{col}-"
                       f"{int(rng.integers(1, 5))}_Vessel-{int(rng.integers(100, 1000))}_Ph_"
                       f"{int(rng.integers(1, 5))}")
                if sid not in taken:
                    taken.add(sid)
                    break
            date = pd.Timestamp("2019-01-01") + pd.Timedelta(days=int(rng.integers(0, 700)))
            # Time-lapse within the first day after plating, like the real plate_time values.
            step = int(rng.choice([60, 120, 180, 240]))
            start = int(rng.integers(0, (23 * 60 - (k - 1) * step) // 30 + 1)) * 30
            minutes = [start + i * step for i in range(k)]
            out.append((t, sid, date.strftime("%Y-%m-%d"), minutes))
    return out


def _plate_time(minutes: int) -> str:
    return f"{minutes // 60:02d}h{minutes % 60:02d}m00s"


def _elapsed(minutes: int) -> str:
    return str(pd.Timedelta(minutes=minutes))  # "0 days 11:30:00", like the real column


def _prepare_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output directory {out} is not empty; pass overwrite=True (--overwrite) "
                f"to replace the synthetic data root there")
        # Remove only what a data root holds, so stale images cannot mix with new ones.
        for sub in ("train", "test"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        for name in ("train.csv", "test_truth.csv", "sample_submission.csv", "folds.csv"):
            (out / name).unlink(missing_ok=True)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)


# Largest synthetic image: a few float64 work arrays of this size fit in a few GB.
MAX_PIXELS = 8192 * 8192


def make_dataset(out_dir: str | Path, n_train: int = 60, n_test: int = 12, seed: int = 0,
                 height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH, *,
                 scale: float | None = None, count_scale: float = 1.0,
                 type_fractions: Mapping[str, float] | None = None,
                 overwrite: bool = False,
                 progress: Callable[[int], None] | None = None) -> DatasetSummary:
    """Write a complete synthetic data root in the competition's layout.

    Writes ``train.csv`` (one row per cell), ``train/{id}.png``, ``test/{id}.png``,
    ``sample_submission.csv`` (``id,predicted``, empty predictions) and ``test_truth.csv``
    (train.csv's format for the test images, so a demo can score itself). Every file is
    written atomically; the output is a pure function of the arguments (byte-identical for
    the same seed).

    Args:
        out_dir: the data root; must be empty or absent unless ``overwrite``.
        n_train, n_test: images per split (n_train >= 1, n_test >= 0).
        seed: random seed.
        height, width: image size.
        scale, count_scale: see :func:`make_image`.
        type_fractions: share of images per cell type; default the real shares
            (shsy5y 26%, astro 22%, cort 53%). Every type with a share gets >= 1 image
            when the split has enough images.
        overwrite: replace the data root's files in a non-empty ``out_dir``.
        progress: called with 1 after each image (e.g. ``tqdm.update``).

    Returns:
        A :class:`DatasetSummary` (print it for the per-type table).
    """
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if height < 32 or width < 32:
        raise ValueError(f"image size must be at least 32x32, got {height}x{width}")
    if height * width > MAX_PIXELS:  # before any folder or array: 1e5 x 1e5 is 80 GB of floats
        raise ValueError(f"image size {height}x{width} ({height * width:,} pixels) is too large; "
                         f"at most {MAX_PIXELS:,} pixels (e.g. 8192x8192)")
    fractions = dict(REAL_TYPE_FRACTIONS if type_fractions is None else type_fractions)
    bad = set(fractions) - set(CELL_TYPES)
    if bad or not any(v > 0 for v in fractions.values()) or any(v < 0 for v in
                                                                  fractions.values()):
        raise ValueError(f"type_fractions must map {CELL_TYPES} to shares >= 0 with one > 0, "
                         f"got {fractions}")
    out = Path(out_dir)
    _prepare_dir(out, overwrite)

    meta_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    taken_ids: set[str] = set()
    taken_samples: set[str] = set()
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        plan = []
        for t, sid, date, minutes in _samples(meta_rng, _allocate(n, fractions) if n else {},
                                              taken_samples):
            for m in minutes:
                plan.append((_new_id(meta_rng, taken_ids), t, sid, date, m))
        splits[split] = sorted(plan)

    stats: dict[str, dict[str, TypeStats]] = {}
    for split_no, (split, plan) in enumerate(splits.items()):
        rows: list[tuple] = []
        per = stats.setdefault(split, {t: TypeStats() for t in CELL_TYPES})
        for k, (image_id, t, sid, date, minutes) in enumerate(plan):
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1 + split_no, k]))
            image, inst = make_image(t, rng, height, width, scale=scale,
                                     count_scale=count_scale)
            write_png(out / split / f"{image_id}.png", image)
            meta = (width, height, t, _plate_time(minutes), date, sid, _elapsed(minutes))
            rows.extend((image_id, code, *meta) for code in inst.rles())
            st = per[t]
            st.images += 1
            st.cells.append(inst.n)
            st.areas.append(inst.areas())
            st.overlap_pixels += inst.overlap_pixels()
            if progress is not None:
                progress(1)
        table = pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))
        name = "train.csv" if split == "train" else "test_truth.csv"
        fileio.write_text(out / name, table.to_csv(index=False, lineterminator="\n"))
        if split == "test":
            sub = pd.DataFrame({"id": [p[0] for p in plan], "predicted": ""})
            fileio.write_text(out / "sample_submission.csv",
                              sub.to_csv(index=False, lineterminator="\n"))
    return DatasetSummary(out, height, width, seed, stats)


def image_stats(image: np.ndarray, masks: Sequence[np.ndarray] | np.ndarray) -> dict[str, float]:
    """Look statistics used to compare synthetic with real images (see the module docstring).

    ``masks`` is a list of boolean masks or an (n, H, W) stack / label image (0 = background).
    """
    im = np.asarray(image, np.float64)
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        cell = masks > 0
    else:
        cell = np.zeros(im.shape, bool)
        for m in masks:  # no (n, H, W) stack: hundreds of full-size masks are large
            cell |= np.asarray(m, bool)
    c8 = cell.astype(np.uint8)
    bg = cv2.dilate(c8, np.ones((7, 7), np.uint8)) == 0
    inner = cv2.erode(c8, np.ones((5, 5), np.uint8)) > 0
    ring = (cv2.dilate(c8, np.ones((5, 5), np.uint8)) > 0) & ~cell
    edge = cv2.morphologyEx(c8, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    g = np.hypot(cv2.Sobel(im, cv2.CV_64F, 1, 0), cv2.Sobel(im, cv2.CV_64F, 0, 1))
    local = cv2.blur((im - cv2.blur(im, (25, 25))) ** 2, (25, 25))
    quiet = local <= np.percentile(local, 20)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    return {
        "mean": float(im.mean()), "std": float(im.std()),
        "bg_mean": mean(im[bg]), "bg_std": float(im[bg].std()) if bg.any() else float("nan"),
        "quiet_std": float(im[quiet].std()),
        "cell_mean": mean(im[inner]), "ring_mean": mean(im[ring]),
        "edge_gradient_ratio": mean(g[edge]) / max(mean(g[bg]), 1e-6),
        "coverage": float(cell.mean()),
    }
