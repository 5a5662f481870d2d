"""Run-length encoding in the competition's convention.

Pixels are numbered in **row-major** order of the H x W array (``mask.ravel()``), starts are
**1-indexed**, runs are ``start length`` pairs separated by spaces, sorted, non-overlapping and
inside the image. (The competition text says "top to bottom, then left to right", copied from
2018; the data is row-major, which the real sample confirms.)

Everything is vectorised: no Python loop over pixels or runs.
"""

from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """A malformed run-length string; the message names the source (image id / row)."""


def encode(mask: np.ndarray) -> str:
    """Encode a boolean H x W mask as ``"start length ..."`` (1-indexed, row-major).

    Args:
        mask: 2-D array; non-zero pixels are the object.

    Returns:
        The RLE string, ``""`` for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle.encode: expected a 2-D mask, got shape {mask.shape}")
    flat = mask.ravel().astype(bool)
    # Pad with zeros so every run has a rising and a falling edge.
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    if edges.size == 0:
        return ""
    starts = edges[0::2]
    lengths = edges[1::2] - starts
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(pairs.astype(str).tolist())


def parse(rle: str, n_pixels: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string into 0-indexed ``starts`` and ``lengths``.

    Args:
        rle: the run-length string.
        n_pixels: H * W of the image, to check that no run leaves it.
        where: what to name in errors (e.g. ``"train.csv row 17 (id 0030fd0e6378)"``).

    Raises:
        RLEError: odd token count, non-integer, start < 1, length < 1, unsorted or overlapping
            runs, run past the image end.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(rle, str):
        raise RLEError(f"{prefix}RLE must be a string, got {type(rle).__name__} {rle!r}")
    text = rle.strip()
    if not text:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = text.split()
    if len(tokens) % 2:
        raise RLEError(
            f"{prefix}RLE has an odd number of tokens ({len(tokens)}); expected start/length pairs"
        )
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise RLEError(f"{prefix}RLE token {bad!r} is not an integer") from None
    starts = values[0::2] - 1
    lengths = values[1::2]
    if (starts < 0).any():
        i = int(np.flatnonzero(starts < 0)[0])
        raise RLEError(f"{prefix}run {i}: start {starts[i] + 1} < 1 (starts are 1-indexed)")
    if (lengths < 1).any():
        i = int(np.flatnonzero(lengths < 1)[0])
        raise RLEError(f"{prefix}run {i}: length {lengths[i]} < 1")
    ends = starts + lengths
    if starts.size > 1:
        order_bad = starts[1:] < starts[:-1]
        if order_bad.any():
            i = int(np.flatnonzero(order_bad)[0]) + 1
            raise RLEError(
                f"{prefix}runs not sorted: run {i} starts at {starts[i] + 1}, "
                f"before run {i - 1} at {starts[i - 1] + 1}"
            )
        overlap = starts[1:] < ends[:-1]
        if overlap.any():
            i = int(np.flatnonzero(overlap)[0]) + 1
            raise RLEError(
                f"{prefix}run {i} (start {starts[i] + 1}) overlaps run {i - 1} "
                f"(pixels {starts[i - 1] + 1}..{ends[i - 1]})"
            )
    if ends[-1] > n_pixels:
        raise RLEError(
            f"{prefix}run {starts.size - 1} ends at pixel {ends[-1]}, past the image end "
            f"({n_pixels} pixels)"
        )
    return starts, lengths


def pixel_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat 0-indexed pixel indices covered by runs (vectorised ``concat(range(s, s+l))``)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    # Offsets within each run: arange(total) minus the cumulative start of each run.
    run_of_pixel = np.repeat(np.arange(starts.size), lengths)
    first_out = np.cumsum(lengths) - lengths
    return starts[run_of_pixel] + (np.arange(total) - first_out[run_of_pixel])


def decode_indices(rle: str, shape: tuple[int, int], where: str = "") -> np.ndarray:
    """Decode an RLE string to the flat (row-major) indices of its pixels."""
    height, width = shape
    starts, lengths = parse(rle, height * width, where)
    return pixel_indices(starts, lengths)


def decode(rle: str, shape: tuple[int, int], where: str = "") -> np.ndarray:
    """Decode an RLE string to a boolean mask of ``shape`` = (height, width).

    Empty string -> all-False mask.
    """
    height, width = shape
    if height < 1 or width < 1:
        raise ValueError(f"rle.decode: shape must be positive, got {shape}")
    flat = np.zeros(height * width, dtype=bool)
    starts, lengths = parse(rle, height * width, where)
    if starts.size:
        # Mark run boundaries with +1/-1 and integrate: no loop over runs.
        delta = np.zeros(height * width + 1, dtype=np.int32)
        np.add.at(delta, starts, 1)
        np.add.at(delta, starts + lengths, -1)
        flat = np.cumsum(delta[:-1]) > 0
    return flat.reshape(height, width)


def encode_labels(labels: np.ndarray) -> list[str]:
    """Encode every instance of a label image (0 = background), in increasing label order.

    One pass over the image: pixels are sorted by label once, then each label's run string is
    built from its (already sorted) pixel indices.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"rle.encode_labels: expected a 2-D label image, got {labels.shape}")
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return []
    lab = flat[idx]
    order = np.argsort(lab, kind="stable")  # stable: pixel order stays row-major per label
    idx, lab = idx[order], lab[order]
    # A run breaks where the label changes or the pixel index is not consecutive.
    brk = np.flatnonzero((np.diff(lab) != 0) | (np.diff(idx) != 1)) + 1
    run_starts = np.concatenate(([0], brk))
    run_ends = np.concatenate((brk, [idx.size]))
    starts = idx[run_starts] + 1
    lengths = run_ends - run_starts
    run_label = lab[run_starts]
    label_brk = np.flatnonzero(np.diff(run_label)) + 1
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    tokens = pairs.astype(str)
    bounds = np.concatenate(([0], label_brk, [starts.size]))
    return [" ".join(tokens[2 * a : 2 * b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
