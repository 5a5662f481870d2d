"""COCO segmentations <-> flat pixel indices, without pycocotools.

Segmentations accepted (as pycocotools defines them):

* polygons: ``[[x0, y0, x1, y1, ...], ...]`` in pixel-edge coordinates (pixel ``(r, c)``
  covers ``[c, c+1) x [r, r+1)``); a pixel belongs to the cell when its centre is inside the
  polygon (even-odd rule, a centre on an edge going to the lower / right side as in
  pycocotools; several polygons of one cell are united). pycocotools snaps vertices to a
  1/5-pixel grid first, so about 2 % of the boundary pixels of random polygons differ from its
  masks (identical on axis-aligned ones).
* uncompressed RLE: ``{"counts": [int, ...], "size": [h, w]}``, **column-major** runs that
  start with a run of zeros;
* compressed RLE: the same runs as pycocotools' string (6-bit chunks offset by 48, counts
  after the second delta-coded against the count two places before). Decoded and encoded here
  by hand, so pycocotools is not a dependency.

Why by hand: nothing else in the kit needs pycocotools (a compiled package), and the codec is
small; it matched pycocotools exactly on 300 random masks (checked once, outside the repository).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cellseg.data import rle
from cellseg.exceptions import CocoError

# --------------------------------------------------------------------------------------------
# Run-length codecs
# --------------------------------------------------------------------------------------------


def decode_rle_string(text: str, where: str = "") -> np.ndarray:
    """pycocotools' compressed counts string -> int64 run counts (column-major, zeros first).

    Each count is little-endian 5-bit groups, a 6th bit saying "more follows", the last group's
    bit 4 the sign, every char offset by 48; counts from the third on are stored as the
    difference to the count two places before (``if (m > 2) x += cnts[m-2]`` in maskApi.c).
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(text, str):
        raise CocoError(f"{prefix}compressed RLE counts must be a string, got "
                        f"{type(text).__name__}")
    codes = np.frombuffer(text.encode("ascii", errors="replace"), np.uint8).astype(np.int64) - 48
    if codes.size and ((codes < 0) | (codes > 63)).any():
        i = int(np.flatnonzero((codes < 0) | (codes > 63))[0])
        raise CocoError(f"{prefix}compressed RLE has an invalid character {text[i]!r} at "
                        f"position {i} (expected '0'..'o')")
    counts: list[int] = []
    x = k = 0
    for c in codes.tolist():
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:
            continue
        if c & 0x10:
            x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
        x = k = 0
    if k:
        raise CocoError(f"{prefix}compressed RLE ends in the middle of a count")
    try:
        return np.asarray(counts, np.int64)
    except OverflowError:
        raise CocoError(f"{prefix}compressed RLE holds a count above 2**63") from None


def encode_rle_string(counts: Sequence[int] | np.ndarray) -> str:
    """Run counts -> pycocotools' compressed string (inverse of :func:`decode_rle_string`)."""
    counts = [int(v) for v in counts]
    out: list[str] = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def counts_to_indices(counts: Sequence[int] | np.ndarray, shape: tuple[int, int],
                      where: str = "") -> np.ndarray:
    """Column-major COCO run counts -> sorted flat **row-major** pixel indices of the mask."""
    prefix = f"{where}: " if where else ""
    height, width = shape
    try:
        counts = np.asarray(counts, np.int64)
    except (OverflowError, TypeError, ValueError):
        raise CocoError(f"{prefix}RLE counts must be integers below 2**63") from None
    if counts.ndim != 1:
        raise CocoError(f"{prefix}RLE counts must be a flat list of integers")
    if (counts < 0).any():
        i = int(np.flatnonzero(counts < 0)[0])
        raise CocoError(f"{prefix}RLE count {i} is negative ({counts[i]})")
    total = int(counts.sum())
    if total != height * width:
        raise CocoError(f"{prefix}RLE counts sum to {total} pixels, expected height x width = "
                        f"{height} x {width} = {height * width}")
    ends = np.cumsum(counts)
    starts = ends - counts
    ones = np.arange(1, counts.size, 2)
    keep = counts[ones] > 0
    col_major = rle.pixel_indices(starts[ones][keep], counts[ones][keep])
    x, y = np.divmod(col_major, height)
    return np.sort(y * width + x)


def indices_to_counts(indices: np.ndarray, shape: tuple[int, int]) -> list[int]:
    """Sorted row-major pixel indices -> column-major COCO run counts (zeros first; the last
    count is the final run, zeros or ones, like pycocotools' ``encode``)."""
    height, width = shape
    n = height * width
    idx = np.asarray(indices, np.int64)
    if idx.size == 0:
        return [n]
    y, x = np.divmod(idx, width)
    col = np.sort(x * height + y)
    brk = np.flatnonzero(np.diff(col) != 1) + 1
    starts = col[np.concatenate(([0], brk))]
    ends = col[np.concatenate((brk - 1, [col.size - 1]))] + 1
    out = np.empty(2 * starts.size + 1, np.int64)
    out[0] = starts[0]
    out[1::2] = ends - starts
    out[2:-1:2] = starts[1:] - ends[:-1]
    out[-1] = n - ends[-1]
    if out[-1] == 0:
        out = out[:-1]
    return out.tolist()


def indices_to_rle(indices: np.ndarray) -> str:
    """Sorted row-major pixel indices -> the competition's RLE (same as ``rle.encode``)."""
    idx = np.asarray(indices, np.int64)
    if idx.size == 0:
        return ""
    brk = np.flatnonzero(np.diff(idx) != 1) + 1
    first = np.concatenate(([0], brk))
    lengths = np.diff(np.concatenate((first, [idx.size])))
    pairs = np.empty(2 * first.size, np.int64)
    pairs[0::2] = idx[first] + 1
    pairs[1::2] = lengths
    return " ".join(pairs.astype(str).tolist())


def polygon_indices(polygons: Sequence[Sequence[float]], shape: tuple[int, int],
                    where: str = "") -> np.ndarray:
    """Rasterise COCO polygons (pixel centres inside, even-odd, union of the polygons) to
    sorted row-major pixel indices; coordinates outside the image are clipped."""
    prefix = f"{where}: " if where else ""
    height, width = shape
    mask_parts = []
    for p, poly in enumerate(polygons):
        try:
            xy = np.asarray(poly, np.float64)
        except (TypeError, ValueError):
            raise CocoError(f"{prefix}polygon {p} is not a list of numbers") from None
        if xy.ndim != 1 or xy.size < 6 or xy.size % 2:
            raise CocoError(f"{prefix}polygon {p} has {xy.size if xy.ndim == 1 else 'nested'} "
                            f"coordinates; expected an even number >= 6 (x0, y0, x1, y1, ...)")
        if not np.isfinite(xy).all():
            raise CocoError(f"{prefix}polygon {p} has a non-finite coordinate")
        xs, ys = xy[0::2], xy[1::2]
        x2, y2 = np.roll(xs, -1), np.roll(ys, -1)
        y_lo, y_hi = np.minimum(ys, y2), np.maximum(ys, y2)
        # Rows whose centre r + 0.5 lies in (y_lo, y_hi]: half-open, so a vertex counts once;
        # a centre exactly on an edge goes to the lower / right pixel, as in pycocotools.
        r0 = np.clip(np.floor(y_lo - 0.5) + 1, 0, height).astype(np.int64)
        r1 = np.clip(np.floor(y_hi - 0.5) + 1, 0, height).astype(np.int64)
        n_rows = np.maximum(r1 - r0, 0)
        if n_rows.sum() == 0:
            continue
        edge = np.repeat(np.arange(xs.size), n_rows)
        first = np.cumsum(n_rows) - n_rows
        rows = r0[edge] + (np.arange(edge.size) - first[edge])
        cy = rows + 0.5
        t = (cy - ys[edge]) / (y2[edge] - ys[edge])
        cx = xs[edge] + t * (x2[edge] - xs[edge])
        # Column c is inside when an odd number of crossings lie at x < c + 0.5.
        cols = np.clip(np.floor(cx - 0.5) + 1, 0, width).astype(np.int64)
        row_lo = int(rows.min())
        toggles = np.zeros((int(rows.max()) - row_lo + 1, width + 1), np.int32)
        np.add.at(toggles, (rows - row_lo, cols), 1)
        inside = (np.cumsum(toggles[:, :width], axis=1) & 1).astype(bool)
        r, c = np.nonzero(inside)
        mask_parts.append((r + row_lo) * width + c)
    if not mask_parts:
        return np.zeros(0, np.int64)
    if len(mask_parts) == 1:
        return mask_parts[0].astype(np.int64)  # np.nonzero is already row-major sorted
    return np.unique(np.concatenate(mask_parts)).astype(np.int64)


def segmentation_indices(seg: Any, shape: tuple[int, int], where: str = "") -> np.ndarray:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> sorted row-major
    pixel indices, checked against the image ``shape`` = (height, width)."""
    prefix = f"{where}: " if where else ""
    if isinstance(seg, Mapping):
        if "counts" not in seg or "size" not in seg:
            raise CocoError(f"{prefix}RLE segmentation needs 'counts' and 'size', got keys "
                            f"{sorted(seg)}")
        size = seg["size"]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise CocoError(f"{prefix}RLE 'size' must be [height, width], got {size!r}")
        if tuple(size) != tuple(shape):
            raise CocoError(f"{prefix}RLE size {list(size)} (height, width) differs from the "
                            f"image's {list(shape)}")
        counts = seg["counts"]
        if isinstance(counts, (bytes, bytearray)):
            counts = counts.decode("ascii", errors="replace")
        if isinstance(counts, str):
            return counts_to_indices(decode_rle_string(counts, where), shape, where)
        if isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in counts):
            return counts_to_indices(counts, shape, where)
        raise CocoError(f"{prefix}RLE 'counts' must be a string or a list of integers")
    if isinstance(seg, list):
        if not seg:
            raise CocoError(f"{prefix}empty segmentation (no polygon)")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seg):
            seg = [seg]  # a bare polygon, as some exporters write it
        if not all(isinstance(p, list) for p in seg):
            raise CocoError(f"{prefix}segmentation must be a list of polygons "
                            f"[[x0, y0, x1, y1, ...], ...] or an RLE dict")
        return polygon_indices(seg, shape, where)
    raise CocoError(f"{prefix}segmentation must be polygons or an RLE dict, got "
                    f"{type(seg).__name__}")


