"""Tiles for images larger than memory allows: overlapping spans aligned to the network.

Why aligned: UNet++ pools ``depth`` times, so a tile that starts on a multiple of ``2**depth``
sees the same pixel grid as the whole image, and tiled and whole-image maps agree beyond the
network's receptive field from a tile edge (bench/results/segment.md). The image's mean and
standard deviation are computed once, in row blocks, and applied to every tile, so every tile
gets the normalisation the whole image would have had.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellseg.exceptions import SegmentError

ROW_BLOCK = 1024  # rows per block when summing image statistics


def normalisation_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the whole image in float64, one row block at a time
    (no full-size float copy), as :func:`cellseg.model.predict.normalize_image` computes them."""
    n = image.size
    total = 0.0
    for r in range(0, image.shape[0], ROW_BLOCK):
        total += float(image[r:r + ROW_BLOCK].sum(dtype=np.float64))
    mean = total / n
    sq = 0.0
    for r in range(0, image.shape[0], ROW_BLOCK):
        d = image[r:r + ROW_BLOCK].astype(np.float64) - mean
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
    :func:`cellseg.model.predict.predict_images` pads to), but at least ``at_least``."""
    out = at_least
    try:
        from cellseg.model.network import model_info

        for m in models:
            out = max(out, 2 ** model_info(m).depth)
    except (ValueError, ImportError, AttributeError):
        pass
    return out
