"""Segment your own images: any folder, any size, outputs that Fiji, napari and QuPath open.

``infer.py`` reads a competition test folder and writes RLE; this module serves the people
who image cells: files, folders or globs of PNG / JPEG / TIFF (8- or 16-bit, one or several
channels, any size) go through a trained experiment (:class:`cellseg.infer.ensemble.FoldEnsemble`)
and come out, per image ``NAME``, as

* ``NAME_labels.tif``: label image at the input's size, 0 = background, cells 1..n (uint16;
  uint32 when an image has more than 65,535 cells);
* ``NAME_cells.csv``: one row per cell (``skimage.measure.regionprops_table``) with the
  image's cell type and a confidence (the tuned per-cell model's probability that the cell is
  right, cellseg.postprocess.confidence; mean body probability inside the cell when the
  experiment has no such model);
* ``NAME_overlay.png``: image | cells, at most :data:`OVERLAY_MAX_SIDE` px wide per panel;
* with ``rois=True``, ``NAME_rois.zip``: one ImageJ polygon ROI per cell (``roifile``), which
  Fiji's ROI Manager and QuPath import.

How an image is processed (choices, and why):

1. **Read** (:func:`cellseg.data.images.read_image_any`) in its own dtype; a multi-channel
   image is reduced to one channel (``channel=K``, else the luminance of RGB / RGBA; other
   channel counts need ``channel``).
2. **Scale** (``scale`` or ``cell_diameter``): resize to the scale the model was trained at
   (``cell_diameter`` is compared with the median cell diameter of the training data,
   :func:`reference_diameter`, computed from the RLE run lengths of ``train.csv``).
3. **Normalise as training does**: zero mean, unit standard deviation over the *whole*
   (resized) image (:func:`cellseg.model.predict.normalize_image`), with the two statistics
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

Every output is written atomically, then ``NAME_segment.json`` records what made them
(:func:`run_settings`); a re-run skips an image whose record matches the run and its files,
and redoes it otherwise (another model, folds, heads, TTA, scale, tiles, channel, tuned
parameters or cell type; a changed input or output), so a re-run finishes a stopped job and
never keeps stale cells. The summary table merges with the earlier one; temporary files of a
killed run are removed at the start; Ctrl-C stops after the current image, writes the
summary and lists what was not done. ``shard=(k, n)`` takes every n-th image of the sorted
list, so n machines share a collection without any output colliding.

Tiles are laid out by :mod:`cellseg.infer.tiling`; the files written per image are
:mod:`cellseg.infer.segment_outputs`. What is left here
is the run: inputs, scale, cell type, the tile loop and the summary.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellseg import fileio
from cellseg.constants import IMAGE_HEIGHT, IMAGE_WIDTH
from cellseg.data.images import IMAGE_SUFFIXES, read_image_any
from cellseg.exceptions import ImageReadError, SegmentError
from cellseg.infer.segment_outputs import (
    cell_table,
    labels_to_shape,
    output_files,
    output_paths,
    read_record,
    record_path,
    record_problem,
    write_label_tiff,
    write_overlay,
    write_record,
    write_rois,
)
from cellseg.infer.tiling import (
    ROW_BLOCK,
    Span,
    normalisation_stats,
    model_multiple,
    normalize_with,
    tile_spans,
)

#: Default tile side (px at model scale): above the 704 x 520 training images, so each tile
#: gives the network at least the context it was validated with, and a multiple of 2**depth.
DEFAULT_TILE = 1024
#: Default overlap between neighbouring tiles (px at model scale): each tile keeps cells whose
#: centroid lies >= overlap / 2 from its inner edges, so cells up to ~overlap / 2 px from their
#: centroid to their far edge (96 px: larger than real astro bodies at training scale) are
#: never cut, and the network has that much real context at every kept pixel.
DEFAULT_OVERLAP = 192
#: Accepted resize factors (``--scale``, or the one ``--cell-diameter`` gives): beyond them an
#: image becomes a few pixels or 10,000 times larger, which is a typo, not a magnification.
SCALE_RANGE: tuple[float, float] = (0.01, 100.0)
#: Crop used for the whole-image cell-type decision (the training images' size).
TYPE_WINDOW: tuple[int, int] = (IMAGE_HEIGHT, IMAGE_WIDTH)


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
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise SegmentError(f"{fileio.printable(path)}: unsupported file type "
                                   f"{path.suffix.lower() or '(no extension)'!r}; expected an "
                                   f"image: {', '.join(IMAGE_SUFFIXES)}")
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


def check_out_dir(out: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                  files: Sequence[Path], recursive: bool = False) -> Path:
    """Fail before any model loads when ``out`` cannot take the outputs: a file in its path,
    not writable, or among the inputs (an input image inside it, or, with ``recursive``, it
    inside an input folder), where a re-run would segment its own outputs. Creates nothing.

    Raises:
        SegmentError: naming ``--out`` and what was expected.
    """
    out = Path(out)
    try:
        fileio.require_writable_folder(out, "--out")
    except OSError as exc:
        raise SegmentError(str(exc)) from None
    target = out.resolve()
    for f in files:
        if target in f.parents:
            raise SegmentError(f"--out {out} holds the input image {fileio.printable(f)}: a "
                               f"re-run would segment its own outputs; choose an --out "
                               f"outside the inputs")
    for item in inputs:
        folder = Path(item)
        if recursive and folder.is_dir() and (folder.resolve() == target
                                              or folder.resolve() in target.parents):
            raise SegmentError(f"--out {out} lies inside the input folder {folder} searched "
                               f"with --recursive: a re-run would segment its own outputs; "
                               f"choose an --out outside it")
    return out


def unique_output_stems(paths: Sequence[Path]) -> dict[Path, str]:
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


# --------------------------------------------------------------------------------- scale
def check_scale(scale: float, option: str = "--scale") -> float:
    """``scale`` if finite and within :data:`SCALE_RANGE`, else a SegmentError naming
    ``option`` (checked before any model loads, not per image)."""
    lo, hi = SCALE_RANGE
    if not (np.isfinite(scale) and lo <= scale <= hi):
        raise SegmentError(f"{option}: resize factor {scale:g} outside [{lo:g}, {hi:g}]; "
                           f"expected the ratio of the training scale to your images'")
    return float(scale)


def check_positive(value: float | None, option: str) -> None:
    """A finite number > 0 (a diameter in px), else a SegmentError naming ``option``."""
    if value is not None and not (np.isfinite(value) and value > 0):
        raise SegmentError(f"{option} must be a finite number of pixels > 0, got {value:g}")


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


@dataclass
class SegmentResult:
    """One image's segmentation at the input's size, with how it was made."""

    labels: np.ndarray  # int32 H x W, 0 = background, 1..n consecutive
    confidence: np.ndarray  # float32 (n + 1,), per id (index 0 unused): FoldEnsemble.decode_scored
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
        _, types = ens.predict_normalized(normalize_with(crop, mean, std)[None], batch_size=1)
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
    for r in range(0, labels.shape[0], ROW_BLOCK):  # in place: no second full-size array
        labels[r:r + ROW_BLOCK] = lut[labels[r:r + ROW_BLOCK]]
    return labels, conf.astype(np.float32)


def _tile_batches(tiles: list[tuple[Span, Span]], batch: int
                  ) -> list[list[tuple[Span, Span]]]:
    """Consecutive tiles in batches of equal shape (the last row / column of tiles may be a
    little longer), at most ``batch`` per batch."""
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
    return batches


def _paste_tile(labels: np.ndarray, tl: np.ndarray, conf: np.ndarray, r: Span, c: Span,
                next_id: int) -> tuple[np.ndarray, int] | None:
    """Paste one tile's cells into ``labels`` (in place) as ids ``next_id, next_id + 1, ...``.

    ``tl`` holds the tile's cells as 1..n and ``conf[i - 1]`` cell i's confidence
    (:meth:`~cellseg.infer.ensemble.FoldEnsemble.decode_scored`). A tile keeps the cells
    whose centre lies in its core; a cell mostly pasted already by a neighbouring tile is the
    same cell and is skipped. Returns ``(each pasted cell's confidence, how many pasted cells
    touch an inner tile edge)``, or None when the tile has no cell.
    """
    n = int(tl.max())
    if n == 0:
        return None
    h, w = labels.shape
    flat = tl.ravel()
    tw = tl.shape[1]
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    yy, xx = np.divmod(np.arange(flat.size), tw)
    cy = np.bincount(flat, weights=yy, minlength=n + 1) / np.maximum(area, 1)
    cx = np.bincount(flat, weights=xx, minlength=n + 1) / np.maximum(area, 1)
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
    taken = np.bincount(flat, weights=(region.ravel() > 0), minlength=n + 1)
    keep &= taken <= 0.5 * area
    ids = np.flatnonzero(keep)
    lut = np.zeros(n + 1, np.int32)
    lut[ids] = np.arange(next_id, next_id + ids.size, dtype=np.int32)
    mapped = lut[tl]
    free = (mapped > 0) & (region == 0)
    region[free] = mapped[free]
    return np.asarray(conf, np.float32)[ids - 1], int((keep & on_edge).sum())


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

    timing: dict[str, float] = {"resize": 0.0, "type": 0.0, "model": 0.0, "decode": 0.0,
                                "stitch": 0.0}
    t = time.perf_counter()
    if not scale > 0:
        raise SegmentError(f"scale must be > 0, got {scale}")
    shape0 = image.shape
    model_shape = scaled_shape(shape0, scale)
    work = resize(image, model_shape)
    mean, std = normalisation_stats(work)
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
    batches = _tile_batches(tiles, batch)
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
            probs, _ = ens.predict_normalized(x, batch_size=batch)
            del x
            timing["model"] += time.perf_counter() - t
            for k, (r, c) in enumerate(chunk):
                t = time.perf_counter()
                tl, tconf = ens.decode_scored(probs[k], kind,
                                              work[r.start:r.stop, c.start:c.stop])
                timing["decode"] += time.perf_counter() - t
                t = time.perf_counter()
                pasted = _paste_tile(labels, tl, tconf, r, c, next_id)
                if pasted is not None:
                    conf, n_cut = pasted
                    conf_parts.append(conf)
                    next_id += conf.size
                    cut += n_cut
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

    #: the fields a record keeps, so a skipped image's row still shows its cells
    RESULT_FIELDS = ("height", "width", "n_tiles", "cell_type", "n_cells", "cut_cells",
                     "seconds", "label_dtype")

    def result(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.RESULT_FIELDS}

    def row(self) -> dict[str, Any]:
        """A summary-table row (names and errors printable whatever the file names)."""
        return {**{k: (fileio.printable(v) if isinstance(v, str) else v)
                   for k, v in self.__dict__.items()},
                "megapixels": round(self.megapixels, 3), "seconds": round(self.seconds, 3)}


def segment_file(ens: Any, path: Path, paths: dict[str, Path], channel: int | None = None,
                 scale: float = 1.0, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 progress: bool = False, record: tuple[Path, dict, str] | None = None
                 ) -> ImageRecord:
    """Read, segment and write every output of one image (the labels TIFF last, then the
    ``record`` = (path, settings, input sha256) when given)."""
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
    rec = ImageRecord(name=paths["labels"].name[: -len("_labels.tif")], path=str(path),
                      status="done", height=image.shape[0], width=image.shape[1],
                      n_tiles=res.n_tiles, cell_type=res.cell_type, n_cells=res.n_cells,
                      cut_cells=res.cut_cells, seconds=time.perf_counter() - t0,
                      label_dtype=str(dtype))
    if record is not None:
        rpath, settings, input_sha = record
        write_record(rpath, settings, input_sha, paths, rec.result())
    return rec


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
        lines.append(f"{fileio.printable(r.name)[:27]:<28}{size:>13}{r.megapixels:>7.2f}{r.n_tiles:>6}"
                     f"{r.cell_type:>8}{r.n_cells:>8}{r.seconds:>8.1f}{spm:>8}  {note}")
    done = [r for r in records if r.status == "done"]
    mp = sum(r.megapixels for r in done)
    secs = sum(r.seconds for r in done)
    lines.append(
        f"{len(done)} segmented, {sum(r.status == 'skipped' for r in records)} skipped "
        f"(already done), {sum(r.status == 'failed' for r in records)} failed"
        + (f", {sum(r.status == NOT_DONE for r in records)} not done (interrupted)"
           if any(r.status == NOT_DONE for r in records) else "") + "; "
        f"{sum(r.n_cells for r in done)} cells; {mp:.2f} MP in {secs:.1f} s"
        + (f" = {secs / mp:.2f} s/MP" if mp else ""))
    return "\n".join(lines)


#: Status of the images a Ctrl-C left undone (listed in the summary; a re-run does them).
NOT_DONE = "not done"


def run_settings(ens: Any, scale: float, channel: int | None, tile: int, overlap: int
                 ) -> dict[str, Any]:
    """What makes an image's outputs, as recorded in ``NAME_segment.json``: a re-run with any
    of it different redoes the image. Model files are hashed once per run."""
    import hashlib
    import json

    from cellseg.postprocess.tuned import model_digest

    params = json.dumps(getattr(ens, "params", {}), sort_keys=True, default=str)
    confidence = getattr(ens, "confidence", None)
    return {
        "models": {str(k): model_digest(p) for k, p in getattr(ens, "model_files", [])},
        "folds": [int(k) for k in getattr(ens, "folds", [])],
        "heads": str(getattr(ens, "heads", "")),
        "tta": list(getattr(ens, "tta", [])),
        "cell_type": getattr(ens, "cell_type_override", None),
        "classifiers": bool(getattr(ens, "classifiers", None)),
        "tuned_params_sha256": hashlib.sha256(params.encode()).hexdigest(),
        # The per-cell confidence filter drops cells and fills the confidence column.
        "confidence_model_sha256": (None if confidence is None
                                    else confidence.record.get("sha256")),
        "confidence_cutoffs": ({t: float(v) for t, v in sorted(ens.cutoffs.items())}
                               if confidence is not None else {}),
        "scale": float(scale), "channel": channel, "tile": int(tile),
        "tile_overlap": int(overlap),
    }


def _merge_summary(path: Path, records: Sequence[ImageRecord], log) -> None:
    """Write this run's rows over the earlier summary's (rows of images not in this run are
    kept), atomically. Why: a re-run that skips finished images must not wipe their cells."""
    import pandas as pd

    rows = {r.name: r.row() for r in records}
    names = [fileio.printable(n) for n in rows]
    new = pd.DataFrame([rows[n] for n in rows])
    if path.is_file():
        try:
            old = pd.read_csv(path, dtype={"name": str}, keep_default_na=False)
            old = old[~old["name"].isin(names)]
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        except (OSError, ValueError, KeyError) as exc:
            log(f"warning: {path}: earlier summary unreadable ({exc}); replaced")
    with fileio.atomic_path(path) as tmp:
        new.to_csv(tmp, index=False)


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

    An image whose ``NAME_segment.json`` matches this run's :func:`run_settings`, its input
    and its output files is skipped (``overwrite`` redoes it anyway); any other is redone.
    Temporary files that killed runs left for these images are removed first. Ctrl-C stops
    after the current image: the rest get status :data:`NOT_DONE`, the summary is written,
    and the records are returned as usual (the caller exits 130).

    Returns the per-image records (status ``done``, ``skipped``, ``failed`` with the error,
    or ``not done``) and merges them into ``out_dir/summary_name``.
    """
    from tqdm.auto import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    names = names or unique_output_stems(list(files))
    stale = fileio.remove_stale_temp_files(
        out_dir, [summary_name, *(f for p in files for f in output_files(names[p]))])
    if stale:
        log(f"note: removed {len(stale)} temporary file(s) left by a killed run in {out_dir}")
    settings = run_settings(ens, scale, channel, tile, overlap)
    records: list[ImageRecord] = []
    redone: list[str] = []
    bar = tqdm(files, desc="segment", unit="img", disable=not progress)
    try:
        for path in bar:
            name = names[path]
            paths = output_paths(out_dir, name, rois)
            rpath = record_path(out_dir, name)
            try:
                input_sha = fileio.file_digest(path)
            except OSError as exc:
                input_sha = ""
                problem: str | None = str(exc)
            else:
                record = read_record(rpath)
                problem = record_problem(record, settings, input_sha, paths)
                if not overwrite and problem is None:
                    prev = record.get("result", {}) if record else {}
                    records.append(ImageRecord(
                        name=name, path=str(path), status="skipped",
                        **{k: prev[k] for k in ImageRecord.RESULT_FIELDS if k in prev}))
                    continue
                if record is not None and problem is not None:
                    redone.append(f"{fileio.printable(name)} ({problem})")
            bar.set_postfix_str(fileio.printable(name)[:30])
            try:
                records.append(segment_file(ens, path, paths, channel=channel, scale=scale,
                                            tile=tile, overlap=overlap, progress=progress,
                                            record=(rpath, settings, input_sha)))
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the others
                # (OpenCV, tifffile, TensorFlow and scikit-image raise many types; Ctrl-C and
                # SystemExit still stop the run)
                known = (ImageReadError, SegmentError, ValueError, OSError, MemoryError)
                text = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
                msg = fileio.printable(text if str(path) in text else f"{path}: {text}")
                log(f"error: {msg}")
                records.append(ImageRecord(name=name, path=str(path), status="failed",
                                           error=msg))
            else:
                if records[-1].cut_cells:
                    log(f"warning: {fileio.printable(path)}: {records[-1].cut_cells} cell(s) "
                        f"touch a tile edge (larger than half the overlap); raise "
                        f"--tile-overlap")
    except KeyboardInterrupt:
        finished = {r.path for r in records}
        records.extend(ImageRecord(name=names[p], path=str(p), status=NOT_DONE)
                       for p in files if str(p) not in finished)
    finally:
        bar.close()
    if redone:
        log(f"note: {len(redone)} image(s) redone, their earlier outputs being stale: "
            + "; ".join(redone[:5]) + (" ..." if len(redone) > 5 else ""))
    _merge_summary(out_dir / summary_name, records, log)
    return records


__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "IMAGE_SUFFIXES",
    "NOT_DONE",
    "SCALE_RANGE",
    "ImageRecord",
    "SegmentError",
    "SegmentResult",
    "check_out_dir",
    "check_positive",
    "check_scale",
    "collect_inputs",
    "format_summary",
    "labels_to_shape",
    "unique_output_stems",
    "parse_shard",
    "reference_diameter",
    "run_segment",
    "run_settings",
    "segment_array",
    "segment_file",
    "shard",
]
