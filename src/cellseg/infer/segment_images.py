"""Segment your own images: any folder, any size, outputs that Fiji, napari and QuPath open.

``infer.py`` reads a competition test folder and writes RLE; this module serves the people
who image cells: files, folders or globs of PNG / JPEG / TIFF (8- or 16-bit, one or several
channels, any size) go through a trained experiment (:class:`cellseg.infer.ensemble.FoldEnsemble`)
and come out, per image ``NAME``, as

* ``NAME_labels.tif``: label image at the input's size, 0 = background, cells 1..n (uint16;
  uint32 when an image has more than 65,535 cells);
* ``NAME_cells.csv``: one row per cell (``skimage.measure.regionprops_table``) with the
  image's cell type and a confidence (mean body probability inside the cell);
* ``NAME_overlay.png``: image | cells, at most :data:`OVERLAY_MAX_SIDE` px wide per panel;
* with ``rois=True``, ``NAME_rois.zip``: one ImageJ polygon ROI per cell (``roifile``), which
  Fiji's ROI Manager and QuPath import.

How an image is processed (choices, and why):

1. **Read** (:func:`read_image_any`) in its own dtype; a multi-channel image is reduced to one
   channel (``channel=K``, else the luminance of RGB / RGBA; other channel counts need
   ``channel``).
2. **Scale** (``scale`` or ``cell_diameter``): resize to the scale the model was trained at
   (``cell_diameter`` is compared with the median cell diameter of the training data,
   :func:`reference_diameter`, computed from the RLE run lengths of ``train.csv``).
3. **Normalise as training does**: zero mean, unit standard deviation over the *whole*
   (resized) image (:func:`cellseg.infer.maps.normalize_image`), with the two statistics
   computed once in row blocks and applied per tile, so every tile sees the same mapping.
4. **Cell type**: the override, else the folds' whole-image classifiers, else the network
   head, computed on the central :data:`TYPE_WINDOW` crop of the resized image: the
   classifier's features (cell size and density) were learnt on 520 x 704 images at the
   training scale, and a crop keeps that scale where a downsampled whole image would not.
5. **Tiles**: overlapping tiles of ``tile`` px (the last one aligned to the image end), each
   predicted and *decoded to instances on its own* with the type's tuned parameters; a cell is
   kept by the tile whose core (the tile minus half the overlap on inner sides) contains its
   centroid, so a cell near a tile edge is taken from the tile that sees it whole. A cell that
   still touches an inner tile edge (larger than half the overlap) is counted in
   ``cut_cells``. Memory: the input, its resized copy and the int32 label image, plus one batch
   of tiles; a full-size float probability map is never held (except with ``tile=0``, which
   predicts the whole image at once, as ``infer.py`` does).
6. **Back to the input size** by nearest neighbour; ids made consecutive again.

Every output is written atomically; an image whose outputs all exist is skipped (a re-run
finishes a stopped job); ``shard=(k, n)`` takes every n-th image of the sorted list, so n
machines share a collection without any output colliding.
"""

from __future__ import annotations

import glob
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellseg import fileio
from cellseg.constants import IMAGE_HEIGHT, IMAGE_WIDTH
from cellseg.exceptions import ImageReadError, SegmentError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Default tile side (px at model scale): above the 704 x 520 training images, so each tile
#: gives the network at least the context it was validated with, and a multiple of 2**depth.
DEFAULT_TILE = 1024
#: Default overlap between neighbouring tiles (px at model scale): each tile keeps cells whose
#: centroid lies >= overlap / 2 from its inner edges, so cells up to ~overlap / 2 px from their
#: centroid to their far edge (96 px: larger than real astro bodies at training scale) are
#: never cut, and the network has that much real context at every kept pixel.
DEFAULT_OVERLAP = 192
#: Crop used for the whole-image cell-type decision (the training images' size).
TYPE_WINDOW: tuple[int, int] = (IMAGE_HEIGHT, IMAGE_WIDTH)
OVERLAY_MAX_SIDE = 2048
UINT16_MAX_CELLS = 65535
_ROW_BLOCK = 1024  # rows per block when summing image statistics


# --------------------------------------------------------------------------------- inputs
def collect_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False
                   ) -> list[Path]:
    """Image files named by ``inputs`` (files, folders, glob patterns), sorted, no repeats.

    Why sorted and resolved: ``--shard k/n`` must give every machine the same list, whatever
    order the shell or the file system returns.

    Raises:
        SegmentError: an input that names nothing, or no image at all.
    """
    found: dict[Path, None] = {}
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = [p for p in path.glob(pattern)
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise SegmentError(f"{path}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
                                   + ("" if recursive else "; --recursive looks in sub-folders"))
        elif path.is_file():
            files = [path]
        elif glob.has_magic(text):
            files = [Path(p) for p in glob.glob(text, recursive=recursive)
                     if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise SegmentError(f"{text}: pattern matches no image file")
        else:
            raise SegmentError(f"{text}: no such file or folder")
        for f in files:
            found[f.resolve()] = None
    if not found:
        raise SegmentError("no input image given")
    return sorted(found, key=str)


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A unique output name per input: the file stem, unless two inputs share it.

    Shared stems (``a/x.tif`` and ``b/x.tif``, or ``x.png`` and ``x.tif``) get the path
    relative to the inputs' common folder with ``/`` as ``__``, plus ``_<ext>`` if still equal,
    so outputs never overwrite each other. Computed on the whole list (before sharding), so
    every shard names an image the same way.
    """
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    common = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path()
    names: dict[Path, str] = {}
    for p in paths:
        if stems[p.stem] == 1:
            names[p] = p.stem
        else:
            rel = p.relative_to(common).with_suffix("")
            names[p] = "__".join(rel.parts)
    counts: dict[str, int] = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    return {p: (n if counts[n] == 1 else f"{n}_{p.suffix.lstrip('.').lower()}")
            for p, n in names.items()}


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N`` (K as a Slurm ``--array=0-(N-1)`` id)."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise SegmentError(f"--shard {text!r}: expected K/N, e.g. 0/4 (K = 0 .. N-1)") from None
    if n < 1 or not 0 <= k < n:
        raise SegmentError(f"--shard {text!r}: need N >= 1 and 0 <= K < N (K counts from 0)")
    return k, n


def shard(paths: Sequence[Path], k: int, n: int) -> list[Path]:
    """The k-th of n disjoint parts of ``paths`` (every n-th item from k: big and small
    images of one folder are spread over the parts, and the parts cover the list)."""
    return list(paths[k::n])


# --------------------------------------------------------------------------------- reading
def _to_gray(arr: np.ndarray, channel: int | None, path: Path, rgb_order: bool) -> np.ndarray:
    """H x W from H x W x C (or C x H x W with C <= 4 from TIFF)."""
    if arr.ndim == 2:
        if channel not in (None, 0):
            raise ImageReadError(f"{path}: single-channel image has no channel {channel}")
        return arr
    if arr.ndim != 3:
        raise ImageReadError(f"{path}: expected a 2-D image or one with channels, got shape "
                             f"{arr.shape} (stacks and time series are not supported)")
    if arr.shape[0] < min(arr.shape[1], arr.shape[2]):  # channels / planes first ("CYX")
        arr = np.moveaxis(arr, 0, -1)
    n_channels = arr.shape[-1]
    if channel is not None:
        if not 0 <= channel < n_channels:
            raise ImageReadError(f"{path}: --channel {channel} out of range; the image has "
                                 f"{n_channels} channels (0..{n_channels - 1})")
        return np.ascontiguousarray(arr[..., channel])
    if n_channels == 1:
        return arr[..., 0]
    if n_channels in (3, 4):
        rgb = arr[..., :3] if rgb_order else arr[..., 2::-1]
        gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if np.issubdtype(arr.dtype, np.integer):
            gray = np.rint(gray).astype(arr.dtype)
        return gray
    raise ImageReadError(f"{path}: {n_channels} channels (or planes); choose one with "
                         f"--channel K")


def read_image_any(path: str | os.PathLike, channel: int | None = None) -> np.ndarray:
    """One image as a 2-D array in its own dtype (uint8, uint16, float32, ...).

    PNG and JPEG through OpenCV (16-bit PNG kept), TIFF through ``tifffile`` (first series;
    singleton axes dropped). ``channel`` picks one channel (0-based, RGB order); by default
    RGB(A) becomes luminance. Why native dtype: a 16-bit 8000 x 8000 image is 128 MB as read
    and would be 256 MB as float32; normalisation happens per tile.

    Raises:
        ImageReadError: unreadable, truncated or empty file, or unusable shape (named).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = np.squeeze(tifffile.imread(path))
            rgb_order = True
        else:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ImageReadError(f"{path}: cannot read the image (corrupt or not "
                                     f"{suffix.lstrip('.').upper()})")
            rgb_order = False  # OpenCV gives BGR(A)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises several types on a damaged file
        raise ImageReadError(f"{path}: cannot read the image ({type(exc).__name__}: "
                             f"{exc})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    gray = _to_gray(arr, channel, path, rgb_order)
    if gray.ndim != 2 or min(gray.shape) < 8:
        raise ImageReadError(f"{path}: image of shape {gray.shape} is too small (>= 8 x 8)")
    if np.issubdtype(gray.dtype, np.floating) and not np.isfinite(gray).all():
        raise ImageReadError(f"{path}: image contains NaN or infinite values")
    return gray


# --------------------------------------------------------------------------------- scale
def reference_diameter(data_root: str | os.PathLike) -> float:
    """Median equivalent diameter (px) of the training cells in ``<data_root>/train.csv``.

    Why from the RLE run lengths: a cell's area is the sum of its run lengths, so 70k cells
    take a second without decoding a mask.

    Raises:
        SegmentError: no readable ``train.csv`` (the message says what to pass instead).
    """
    import pandas as pd

    path = Path(data_root) / "train.csv"
    if not path.is_file():
        raise SegmentError(f"--cell-diameter needs the training data's median cell diameter, "
                           f"but {path} does not exist; pass --reference-diameter PX (e.g. "
                           f"from export.json), --scale F, or --set data.root=DIR")
    try:
        ann = pd.read_csv(path, usecols=["annotation"])["annotation"].dropna().astype(str)
    except (ValueError, OSError) as exc:
        raise SegmentError(f"{path}: cannot read annotations ({exc})") from None
    areas = np.array([sum(int(v) for v in a.split()[1::2]) for a in ann], np.float64)
    areas = areas[areas > 0]
    if areas.size == 0:
        raise SegmentError(f"{path}: no annotated cell to measure")
    return float(np.median(np.sqrt(4.0 * areas / np.pi)))


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an intensity image to ``(h, w)`` (area averaging down, bilinear up), keeping
    uint8 / uint16 / float32 and converting other types to float32 (OpenCV's set)."""
    h, w = shape
    if image.shape == (h, w):
        return image
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        image = image.astype(np.float32)
    down = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """Image size after resizing by ``scale`` (at least 8 x 8)."""
    return max(8, int(round(shape[0] * scale))), max(8, int(round(shape[1] * scale)))


def labels_to_shape(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (pixel centres mapped, no new ids)."""
    h0, w0 = shape
    h, w = labels.shape
    if (h, w) == (h0, w0):
        return labels
    rows = np.minimum(((np.arange(h0) + 0.5) * (h / h0)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(w0) + 0.5) * (w / w0)).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------------- tiling
def image_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the whole image in float64, one row block at a time
    (no full-size float copy), as :func:`cellseg.infer.maps.normalize_image` computes them."""
    n = image.size
    total = 0.0
    for r in range(0, image.shape[0], _ROW_BLOCK):
        total += float(image[r:r + _ROW_BLOCK].sum(dtype=np.float64))
    mean = total / n
    sq = 0.0
    for r in range(0, image.shape[0], _ROW_BLOCK):
        d = image[r:r + _ROW_BLOCK].astype(np.float64) - mean
        sq += float(np.einsum("ij,ij->", d, d))
    return mean, math.sqrt(sq / n)


def normalize_with(block: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(block - mean) / std`` as float32 (zeros for a flat image, as training does)."""
    x = block.astype(np.float64)
    out = (x - mean) / std if std > 1e-6 else np.zeros_like(x)
    return out.astype(np.float32)


@dataclass(frozen=True)
class Span:
    """One tile along one axis: pixels ``[start, stop)``, of which ``[core_lo, core_hi)`` is
    the part where this tile owns the cells (cores partition the axis)."""

    start: int
    stop: int
    core_lo: int
    core_hi: int


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 32) -> list[Span]:
    """Overlapping tiles covering ``[0, length)``.

    Why aligned: a U-Net is shift-equivariant only for shifts by multiples of its
    down-sampling factor ``2**depth``; every tile therefore starts at a multiple of
    ``multiple`` and then sees exactly what the whole-image prediction sees (measured: a
    tile at an odd offset changes probabilities by up to 0.8 far inside it). The last tile
    ends at the image end, so it is padded exactly as the whole image is (it may be up to
    ``multiple - 1`` px longer than the others).

    As few tiles as ``tile`` allows with at least ``overlap`` px shared by neighbours; the
    tiles are then shrunk to the smallest multiple of ``multiple`` keeping that count (less
    wasted work: 2,000 px in tiles of 1,024 become 3 tiles of about 800, not 3 of 1,024).
    The boundary between two cores is the middle of their overlap, so a core lies at least
    ``overlap // 2`` px inside each of its inner tile edges. ``tile <= 0`` or
    ``tile >= length`` gives one tile.
    """
    if tile <= 0 or tile >= length:
        return [Span(0, length, 0, length)]
    if not 0 <= overlap < tile - multiple:
        raise SegmentError(f"tile overlap {overlap} must be >= 0 and smaller than the tile "
                           f"({tile}) minus {multiple}")

    def layout(size: int) -> list[int] | None:
        last = (length - size) // multiple * multiple
        step_max = (size - overlap) // multiple * multiple
        if step_max <= 0:
            return None
        n = math.ceil(last / step_max) + 1
        if n == 1:
            return [0]
        step = math.ceil(last / (n - 1) / multiple) * multiple
        return [min(i * step, last) for i in range(n)]

    tile = max(tile // multiple * multiple, multiple)
    starts = layout(tile)
    assert starts is not None
    n = len(starts)
    size = math.ceil((length + (n - 1) * overlap) / n / multiple) * multiple
    while size < tile:  # smallest tiles giving the same count
        cand = layout(size)
        if cand is not None and len(cand) == n:
            starts = cand
            break
        size += multiple
    else:
        size = tile
    stops = [s + size for s in starts[:-1]] + [length]
    spans = []
    for i, (s, e) in enumerate(zip(starts, stops)):
        lo = 0 if i == 0 else (s + stops[i - 1]) // 2
        hi = length if i == len(starts) - 1 else (starts[i + 1] + e) // 2
        spans.append(Span(s, e, lo, hi))
    return spans


def model_multiple(models: Sequence[Any], at_least: int = 32) -> int:
    """The input-size multiple the models need: ``2**depth`` (what
    :func:`cellseg.infer.maps.predict_images` pads to), but at least ``at_least``."""
    out = at_least
    try:
        from cellseg.model.network import model_info

        for m in models:
            out = max(out, 2 ** model_info(m).depth)
    except (ValueError, ImportError, AttributeError):
        pass
    return out


@dataclass
class SegmentResult:
    """One image's segmentation at the input's size, with how it was made."""

    labels: np.ndarray  # int32 H x W, 0 = background, 1..n consecutive
    confidence: np.ndarray  # float32 (n + 1,), mean body probability per id (index 0 unused)
    cell_type: str
    type_probs: np.ndarray  # (3,) or (0,)
    model_shape: tuple[int, int]
    n_tiles: int
    cut_cells: int  # kept cells touching an inner tile edge (bigger than half the overlap)
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return int(self.confidence.size - 1)


def _cell_type(ens: Any, image: np.ndarray, mean: float, std: float
               ) -> tuple[str, np.ndarray]:
    """Override, else classifiers, else network head, on the central TYPE_WINDOW crop."""
    if getattr(ens, "cell_type_override", None) is not None:
        return ens.cell_type(np.zeros(0, np.float32)), np.zeros(0, np.float32)
    h, w = image.shape
    ch, cw = min(TYPE_WINDOW[0], h), min(TYPE_WINDOW[1], w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = image[y0:y0 + ch, x0:x0 + cw]
    if ens.classifiers:
        from cellseg.model.celltype import ensemble_proba

        probs = ensemble_proba(ens.classifiers, [crop])[0]
    else:
        from cellseg.infer.maps import predict_images

        _, types = predict_images(ens.models, normalize_with(crop, mean, std)[None],
                                  heads=ens.heads, tta=ens.tta, batch_size=1)
        probs = types[0]
    return ens.cell_type(probs), np.asarray(probs, np.float32)


def _compact(labels: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop ids without pixels, renumber 1..n in order (in place, one row block at a time),
    carry the confidences along."""
    counts = np.bincount(labels.ravel(), minlength=confidence.size)
    present = counts[1:] > 0
    if present.all():
        return labels, confidence
    lut = np.zeros(counts.size, labels.dtype)
    lut[1:][present] = np.arange(1, int(present.sum()) + 1, dtype=labels.dtype)
    conf = np.concatenate([[0.0], confidence[1:][present[:confidence.size - 1]]])
    for r in range(0, labels.shape[0], _ROW_BLOCK):  # in place: no second full-size array
        labels[r:r + _ROW_BLOCK] = lut[labels[r:r + _ROW_BLOCK]]
    return labels, conf.astype(np.float32)


def segment_array(
    ens: Any,
    image: np.ndarray,
    scale: float = 1.0,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = False,
) -> SegmentResult:
    """Segment one 2-D image (any dtype, any size) with a loaded ensemble.

    Args:
        ens: a :class:`cellseg.infer.ensemble.FoldEnsemble` (``models``, ``heads``, ``tta``,
            ``batch_size``, ``classifiers``, ``cell_type()``, ``decode()``).
        image: H x W as read (:func:`read_image_any`).
        scale: resize factor to the model's scale (labels come back at H x W).
        tile: tile side at model scale (see :func:`tile_spans`); 0 = whole image.
        overlap: px shared by neighbouring tiles at model scale.
        progress: a tqdm bar over tiles when there are several.

    Returns:
        :class:`SegmentResult`.
    """
    from cellseg.infer.maps import predict_images

    timing: dict[str, float] = {"resize": 0.0, "type": 0.0, "model": 0.0, "decode": 0.0,
                                "stitch": 0.0}
    t = time.perf_counter()
    if not scale > 0:
        raise SegmentError(f"scale must be > 0, got {scale}")
    shape0 = image.shape
    model_shape = scaled_shape(shape0, scale)
    work = resize(image, model_shape)
    mean, std = image_stats(work)
    timing["resize"] = time.perf_counter() - t
    t = time.perf_counter()
    kind, type_probs = _cell_type(ens, work, mean, std)
    timing["type"] = time.perf_counter() - t

    multiple = model_multiple(ens.models)
    batch = max(int(getattr(ens, "batch_size", 1)), 1)
    h, w = model_shape
    rows = tile_spans(h, tile, overlap, multiple)
    cols = tile_spans(w, tile, overlap, multiple)
    tiles = [(r, c) for r in rows for c in cols]
    # Batches of equal-shape tiles (the last row / column may be a little longer).
    batches: list[list[tuple[Span, Span]]] = []
    for rc in tiles:
        shape = (rc[0].stop - rc[0].start, rc[1].stop - rc[1].start)
        last = batches[-1] if batches else None
        if (last is None or len(last) == batch
                or (last[0][0].stop - last[0][0].start, last[0][1].stop - last[0][1].start)
                != shape):
            batches.append([rc])
        else:
            last.append(rc)
    labels = np.zeros(model_shape, np.int32)
    conf_parts: list[np.ndarray] = [np.zeros(1, np.float32)]
    next_id = 1
    cut = 0
    bar = None
    if progress and len(tiles) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tiles), desc="  tiles", unit="tile", leave=False)
    try:
        for chunk in batches:
            t = time.perf_counter()
            x = np.stack([normalize_with(work[r.start:r.stop, c.start:c.stop], mean, std)
                          for r, c in chunk])
            probs, _ = predict_images(ens.models, x, heads=ens.heads, tta=ens.tta,
                                      batch_size=batch)
            del x
            timing["model"] += time.perf_counter() - t
            for k, (r, c) in enumerate(chunk):
                t = time.perf_counter()
                tl = ens.decode(probs[k], kind)
                timing["decode"] += time.perf_counter() - t
                t = time.perf_counter()
                n = int(tl.max())
                if n == 0:
                    timing["stitch"] += time.perf_counter() - t
                    continue
                flat = tl.ravel()
                tw = tl.shape[1]
                area = np.bincount(flat, minlength=n + 1).astype(np.float64)
                yy, xx = np.divmod(np.arange(flat.size), tw)
                cy = np.bincount(flat, weights=yy, minlength=n + 1) / np.maximum(area, 1)
                cx = np.bincount(flat, weights=xx, minlength=n + 1) / np.maximum(area, 1)
                body = np.bincount(flat, weights=probs[k][..., 0].ravel(), minlength=n + 1)
                gy, gx = cy + r.start, cx + c.start
                keep = ((gy >= r.core_lo) & (gy < r.core_hi) & (gx >= c.core_lo)
                        & (gx < c.core_hi) & (area > 0))
                keep[0] = False
                # Cells on an inner tile edge were seen only in part by this tile.
                edge_ids: list[np.ndarray] = []
                if r.start > 0:
                    edge_ids.append(tl[0])
                if r.stop < h:
                    edge_ids.append(tl[-1])
                if c.start > 0:
                    edge_ids.append(tl[:, 0])
                if c.stop < w:
                    edge_ids.append(tl[:, -1])
                on_edge = np.zeros(n + 1, bool)
                if edge_ids:
                    on_edge[np.concatenate(edge_ids)] = True
                region = labels[r.start:r.stop, c.start:c.stop]
                # A cell mostly pasted already by a neighbouring tile is the same cell.
                taken = np.bincount(flat, weights=(region.ravel() > 0), minlength=n + 1)
                keep &= taken <= 0.5 * area
                cut += int((keep & on_edge).sum())
                ids = np.flatnonzero(keep)
                lut = np.zeros(n + 1, np.int32)
                lut[ids] = np.arange(next_id, next_id + ids.size, dtype=np.int32)
                mapped = lut[tl]
                free = (mapped > 0) & (region == 0)
                region[free] = mapped[free]
                conf_parts.append((body[ids] / area[ids]).astype(np.float32))
                next_id += ids.size
                timing["stitch"] += time.perf_counter() - t
            del probs
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    t = time.perf_counter()
    del work
    confidence = np.concatenate(conf_parts)
    labels, confidence = _compact(labels, confidence)
    if model_shape != shape0:
        labels = labels_to_shape(labels, shape0)
        labels, confidence = _compact(labels, confidence)
    timing["stitch"] += time.perf_counter() - t
    return SegmentResult(labels=labels, confidence=confidence, cell_type=kind,
                         type_probs=type_probs, model_shape=model_shape, n_tiles=len(tiles),
                         cut_cells=cut, timing=timing)


# --------------------------------------------------------------------------------- outputs
CSV_COLUMNS: tuple[str, ...] = (
    "id", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y",
    "bbox_max_x", "equivalent_diameter", "mean_intensity", "cell_type", "cell_type_prob",
    "confidence",
)


def cell_table(labels: np.ndarray, intensity: np.ndarray, confidence: np.ndarray,
               cell_type: str, cell_type_prob: float = float("nan")):
    """One row per cell (pixels of the input image; bbox max exclusive), as a DataFrame."""
    import pandas as pd
    from skimage.measure import regionprops_table

    if labels.max() == 0:
        return pd.DataFrame(columns=list(CSV_COLUMNS))
    props = regionprops_table(
        labels, intensity_image=intensity,
        properties=("label", "area", "centroid", "bbox", "equivalent_diameter_area",
                    "intensity_mean"))
    ids = props["label"].astype(np.int64)
    return pd.DataFrame({
        "id": ids, "area": props["area"].astype(np.int64),
        "centroid_y": np.round(props["centroid-0"], 2),
        "centroid_x": np.round(props["centroid-1"], 2),
        "bbox_min_y": props["bbox-0"], "bbox_min_x": props["bbox-1"],
        "bbox_max_y": props["bbox-2"], "bbox_max_x": props["bbox-3"],
        "equivalent_diameter": np.round(props["equivalent_diameter_area"], 3),
        "mean_intensity": np.round(props["intensity_mean"], 3),
        "cell_type": cell_type,
        "cell_type_prob": round(float(cell_type_prob), 4),
        "confidence": np.round(confidence[ids], 4),
    }, columns=list(CSV_COLUMNS))


def label_dtype(n_cells: int) -> type:
    """uint16 (what every viewer opens) up to 65,535 cells, uint32 beyond."""
    return np.uint16 if n_cells <= UINT16_MAX_CELLS else np.uint32


def write_label_tiff(path: str | os.PathLike, labels: np.ndarray) -> np.dtype:
    """Write the label image as a zlib-compressed TIFF (atomically); returns its dtype."""
    import tifffile

    dtype = label_dtype(int(labels.max()))
    with fileio.atomic_path(path, suffix=".tmp.tif") as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype, copy=False), photometric="minisblack",
                         compression="zlib", metadata={"axes": "YX"})
    return np.dtype(dtype)


def cell_contours(labels: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """``(id, points)`` per cell: the outer contour (x, y) of its largest piece (OpenCV, on
    the cell's bounding box only, so the cost follows the cells, not the image)."""
    from scipy import ndimage

    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = np.pad((labels[sl] == i).astype(np.uint8), 1)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        pts = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
        pts += (sl[1].start - 1, sl[0].start - 1)
        yield i, pts


def write_rois(path: str | os.PathLike, labels: np.ndarray) -> int:
    """ImageJ ROI zip, one polygon per cell named by its id (as in the CSV and the label
    image); returns how many were written. Fiji: ROI Manager > More > Open; QuPath: File >
    Import objects / drag and drop."""
    from roifile import ImagejRoi, roiwrite

    rois = []
    for i, pts in cell_contours(labels):
        if len(pts) < 3:  # a one- or two-pixel cell: a tiny square around it
            x, y = pts[0]
            pts = np.array([[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1]], np.float64)
        rois.append(ImagejRoi.frompoints(pts, name=f"{i:06d}"))
    with fileio.atomic_path(path, suffix=".tmp.zip") as tmp:
        tmp.unlink()
        if rois:
            roiwrite(tmp, rois)
        else:
            import zipfile

            zipfile.ZipFile(tmp, "w").close()
    return len(rois)


def display_uint8(image: np.ndarray) -> np.ndarray:
    """Contrast-stretched uint8 copy (0.5-99.5 percentiles) for pictures of any bit depth."""
    x = image.astype(np.float32)
    lo, hi = np.percentile(x[:: max(1, x.shape[0] // 1024), :: max(1, x.shape[1] // 1024)],
                           (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def overlay_picture(image: np.ndarray, labels: np.ndarray,
                    max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """RGB picture: image | cells filled in random colours with white outlines, downsampled
    so the long side of a panel is at most ``max_side``."""
    from cellseg.evaluate.viz import outlines

    h, w = image.shape
    f = min(1.0, max_side / max(h, w))
    size = (max(1, int(round(h * f))), max(1, int(round(w * f))))
    small = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA) if f < 1 else image
    gray = display_uint8(small)
    lab = labels_to_shape(labels, size)
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    colours = np.random.default_rng(0).integers(60, 256, size=(int(lab.max()) + 1, 3))
    fill = rgb.copy()
    m = lab > 0
    fill[m] = (0.5 * rgb[m] + 0.5 * colours[lab[m]]).astype(np.uint8)
    fill[outlines(lab)] = (255, 255, 255)
    sep = np.full((size[0], 4, 3), 255, np.uint8)
    return np.concatenate([rgb, sep, fill], axis=1)


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """:func:`overlay_picture` as a PNG (atomically)."""
    pic = overlay_picture(image, labels)
    with fileio.atomic_path(path, suffix=".tmp.png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def output_paths(out_dir: str | os.PathLike, name: str, rois: bool) -> dict[str, Path]:
    """Where one image's outputs go (``labels``, ``cells``, ``overlay``, maybe ``rois``)."""
    out_dir = Path(out_dir)
    paths = {"labels": out_dir / f"{name}_labels.tif", "cells": out_dir / f"{name}_cells.csv",
             "overlay": out_dir / f"{name}_overlay.png"}
    if rois:
        paths["rois"] = out_dir / f"{name}_rois.zip"
    return paths


def is_done(paths: dict[str, Path]) -> bool:
    """All outputs present (each is written atomically, so present means complete)."""
    return all(p.is_file() for p in paths.values())


# --------------------------------------------------------------------------------- the run
@dataclass
class ImageRecord:
    """One row of the summary table."""

    name: str
    path: str
    status: str  # done | skipped | failed
    height: int = 0
    width: int = 0
    n_tiles: int = 0
    cell_type: str = ""
    n_cells: int = 0
    cut_cells: int = 0
    seconds: float = 0.0
    label_dtype: str = ""
    error: str = ""

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


def segment_file(ens: Any, path: Path, paths: dict[str, Path], channel: int | None = None,
                 scale: float = 1.0, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 progress: bool = False) -> ImageRecord:
    """Read, segment and write every output of one image (the labels TIFF last)."""
    t0 = time.perf_counter()
    image = read_image_any(path, channel)
    res = segment_array(ens, image, scale=scale, tile=tile, overlap=overlap, progress=progress)
    prob = (float(res.type_probs[list(_cell_types()).index(res.cell_type)])
            if res.type_probs.size else float("nan"))
    table = cell_table(res.labels, image, res.confidence, res.cell_type, prob)
    with fileio.atomic_path(paths["cells"]) as tmp:
        table.to_csv(tmp, index=False)
    write_overlay(paths["overlay"], image, res.labels)
    if "rois" in paths:
        write_rois(paths["rois"], res.labels)
    dtype = write_label_tiff(paths["labels"], res.labels)
    return ImageRecord(name=paths["labels"].name[: -len("_labels.tif")], path=str(path),
                       status="done", height=image.shape[0], width=image.shape[1],
                       n_tiles=res.n_tiles, cell_type=res.cell_type, n_cells=res.n_cells,
                       cut_cells=res.cut_cells, seconds=time.perf_counter() - t0,
                       label_dtype=str(dtype))


def _cell_types() -> tuple[str, ...]:
    from cellseg.constants import CELL_TYPES

    return CELL_TYPES


def format_summary(records: Sequence[ImageRecord]) -> str:
    """The end-of-run table: per image, then totals (seconds per megapixel of input)."""
    lines = [(f"{'image':<28}{'size':>13}{'MP':>7}{'tiles':>6}{'type':>8}{'cells':>8}"
              f"{'s':>8}{'s/MP':>8}  status")]
    for r in records:
        size = f"{r.width}x{r.height}" if r.height else "-"
        spm = f"{r.seconds / r.megapixels:.2f}" if r.status == "done" and r.megapixels else "-"
        note = r.status + (f" ({r.cut_cells} cells on a tile edge)" if r.cut_cells else "")
        lines.append(f"{r.name[:27]:<28}{size:>13}{r.megapixels:>7.2f}{r.n_tiles:>6}"
                     f"{r.cell_type:>8}{r.n_cells:>8}{r.seconds:>8.1f}{spm:>8}  {note}")
    done = [r for r in records if r.status == "done"]
    mp = sum(r.megapixels for r in done)
    secs = sum(r.seconds for r in done)
    lines.append(
        f"{len(done)} segmented, {sum(r.status == 'skipped' for r in records)} skipped "
        f"(already done), {sum(r.status == 'failed' for r in records)} failed; "
        f"{sum(r.n_cells for r in done)} cells; {mp:.2f} MP in {secs:.1f} s"
        + (f" = {secs / mp:.2f} s/MP" if mp else ""))
    return "\n".join(lines)


def run_segment(
    ens: Any,
    files: Sequence[Path],
    out_dir: str | os.PathLike,
    names: dict[Path, str] | None = None,
    channel: int | None = None,
    scale: float = 1.0,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    rois: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    summary_name: str = "segment_summary.csv",
    log=None,
) -> list[ImageRecord]:
    """Segment ``files`` into ``out_dir``; one failed image never stops the others.

    Returns the per-image records (status ``done``, ``skipped`` or ``failed`` with the error)
    and writes them to ``out_dir/summary_name``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = names or output_names(list(files))
    records: list[ImageRecord] = []
    bar = tqdm(files, desc="segment", unit="img", disable=not progress)
    for path in bar:
        name = names[path]
        paths = output_paths(out_dir, name, rois)
        if not overwrite and is_done(paths):
            records.append(ImageRecord(name=name, path=str(path), status="skipped"))
            continue
        bar.set_postfix_str(name[:30])
        try:
            records.append(segment_file(ens, path, paths, channel=channel, scale=scale,
                                        tile=tile, overlap=overlap, progress=progress))
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the others
            # (OpenCV, tifffile, TensorFlow and scikit-image raise many types; Ctrl-C and
            # SystemExit still stop the run)
            known = (ImageReadError, SegmentError, ValueError, OSError, MemoryError)
            text = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
            msg = text if str(path) in text else f"{path}: {text}"
            log(f"error: {msg}")
            records.append(ImageRecord(name=name, path=str(path), status="failed",
                                       error=msg))
        else:
            if records[-1].cut_cells:
                log(f"warning: {path}: {records[-1].cut_cells} cell(s) touch a tile edge "
                    f"(larger than half the overlap); raise --tile-overlap")
    table = pd.DataFrame([{**r.__dict__, "megapixels": round(r.megapixels, 3),
                           "seconds": round(r.seconds, 3)} for r in records])
    with fileio.atomic_path(Path(out_dir) / summary_name) as tmp:
        table.to_csv(tmp, index=False)
    return records


__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "ImageRecord",
    "SegmentError",
    "SegmentResult",
    "cell_table",
    "collect_inputs",
    "format_summary",
    "image_stats",
    "is_done",
    "labels_to_shape",
    "output_names",
    "output_paths",
    "parse_shard",
    "read_image_any",
    "reference_diameter",
    "run_segment",
    "segment_array",
    "segment_file",
    "shard",
    "tile_spans",
    "write_label_tiff",
    "write_rois",
]
