"""Semantic-to-instance post-processing: probability maps -> one label per cell.

Why this module matters: plain semantic U-Nets scored 0.04-0.15 on Sartorius because they
could not split crowded shsy5y cells (docs/design.md section 4). The network here predicts a cell
*body* map and a *touching-border* band; this module turns those into instances the way the
2018 Data Science Bowl winners did:

1. seed score = body * (1 - border): high in cell centres, low on the band between two
   touching cells, so touching cells get separate seeds (a network with a third, centre
   channel uses centre * (1 - border): low on every outline, touching or not);
2. seeds = connected components of ``score > seed_threshold`` (tiny ones dropped);
3. mask = ``body > mask_threshold`` (looser than the seeds, so cells keep their full extent);
4. marker-controlled watershed of ``-score`` inside the mask: fronts from neighbouring seeds
   meet on the border band;
5. holes filled per instance, instances under ``min_area`` dropped, labels made consecutive.

Every step is a whole-image vectorised operation (``scipy.ndimage``, ``skimage``,
``bincount`` look-up tables); nothing loops over cells in Python, so an image with hundreds of
cells decodes in tens of milliseconds on one core.

The "traditional algorithm" baseline (:mod:`cellseg.postprocess.classical`) produces the same
output from the raw image; :mod:`cellseg.postprocess.search_space` holds what ``tune.py``
(Optuna) samples for both.

The output is always an ``int32`` label image: 0 = background, cells 1..n consecutive. A label
image cannot hold two cells on one pixel, so the submission's "no overlapping masks" rule holds
by construction.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from cellseg.config import PostprocessParams

# Probabilities from float16 sigmoids or TTA averaging can stray a hair outside [0, 1].
_PROB_TOLERANCE = 1e-3
# The knobs' defaults stand in one place, the config's PostprocessParams.
_DEFAULTS = PostprocessParams()


# --------------------------------------------------------------------------------------------
# Argument checks (fail early, name the argument, say what was expected)
# --------------------------------------------------------------------------------------------


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_int(name: str, value: Any, low: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_float(name: str, value: Any, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < low or (strict and value == low):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {op} {low}, got {value}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_connectivity(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or value not in (1, 2):
        raise ValueError(
            f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {value!r}"
        )
    return int(value)


def _check_probs(probs: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validate a probability map and return (body, border or None, centre or None) as
    float32 views."""
    if not isinstance(probs, np.ndarray):
        raise ValueError(f"probs must be a numpy array, got {type(probs).__name__}")
    if probs.ndim == 2:
        probs = probs[..., None]
    if probs.ndim != 3:
        raise ValueError(
            f"probs must be H x W x C (channel 0 = body, 1 = touching border) or H x W, "
            f"got shape {probs.shape}"
        )
    height, width, channels = probs.shape
    if channels < 1 or height < 1 or width < 1:
        raise ValueError(f"probs has an empty dimension: shape {probs.shape}")
    if channels > 16 and height <= 16:
        raise ValueError(
            f"probs shape {probs.shape} looks channels-first; expected H x W x C "
            f"(use np.moveaxis(probs, 0, -1))"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(
            f"probs must be floating-point probabilities in [0, 1], got dtype {probs.dtype} "
            f"(divide 8-bit maps by 255 first)"
        )
    used = probs[..., : min(channels, 3)]
    lo, hi = float(used.min()), float(used.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("probs contains NaN or infinite values")
    if lo < -_PROB_TOLERANCE or hi > 1.0 + _PROB_TOLERANCE:
        raise ValueError(
            f"probs must be probabilities in [0, 1] (after the sigmoid), got range "
            f"[{lo:.4g}, {hi:.4g}]"
        )
    body = np.asarray(probs[..., 0], np.float32)
    border = np.asarray(probs[..., 1], np.float32) if channels > 1 else None
    centre = np.asarray(probs[..., 2], np.float32) if channels > 2 else None
    return body, border, centre


# --------------------------------------------------------------------------------------------
# Vectorised label-image helpers
# --------------------------------------------------------------------------------------------


def _structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(2, connectivity)


def drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop labels with fewer than ``min_area`` pixels and renumber the rest 1..n (int32).

    One ``bincount`` and one look-up table: no loop over labels. Not zeroing the small ones
    and ``skimage.segmentation.relabel_sequential``: same labels, 5x slower (4.3 vs 20.9 ms
    on a 520x704 image with 300 cells).
    """
    areas = np.bincount(labels.ravel())
    keep = areas >= max(min_area, 1)
    keep[0] = False
    lut = np.zeros(areas.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def _split_seeds(markers: np.ndarray, height: float, structure: np.ndarray) -> np.ndarray:
    """Seeds from the h-maxima of each seed region's distance transform; a region with no
    maximum that high keeps itself as one seed (a small cell is never lost)."""
    from skimage.morphology import h_maxima

    dist = ndimage.distance_transform_edt(markers > 0)
    peaks, n_peaks = ndimage.label(h_maxima(dist, height) > 0, structure=structure)
    peaks[markers == 0] = 0
    has_peak = np.zeros(int(markers.max()) + 1, bool)
    has_peak[markers[peaks > 0]] = True
    has_peak[0] = True
    lone = ~has_peak[markers]  # seed pixels of regions without a peak
    out = np.where(lone, markers + n_peaks, peaks)
    return drop_small(watershed(-dist, out, mask=markers > 0, connectivity=1)
                       .astype(np.int32), 1)


def fill_holes_per_instance(labels: np.ndarray) -> np.ndarray:
    """Fill background holes that lie inside exactly one instance.

    Why not ``binary_fill_holes`` per cell: that is a full-image operation per cell (seconds
    for hundreds of cells). Instead the holes of the whole foreground are found at once; a hole
    component whose every neighbouring foreground pixel belongs to one instance is that
    instance's hole and takes its label. A gap enclosed jointly by several touching cells is
    not a hole of any one of them and stays background.

    Args:
        labels: integer label image, 0 = background.

    Returns:
        A new label image (same dtype) with single-instance holes filled.
    """
    fg = labels > 0
    holes = ndimage.binary_fill_holes(fg) & ~fg
    if not holes.any():
        return labels.copy()
    hole_ids, n_holes = ndimage.label(holes)  # 4-connected, as binary_fill_holes' flood
    # Pair every hole pixel with its 4-neighbours' labels. A hole's 4-neighbours are either
    # the same hole or foreground (a background neighbour would be part of the hole), and holes
    # never touch the image edge, so the shifted slices below see every neighbour.
    n_labels = int(labels.max()) + 1
    codes = []
    for src, dst in (
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
    ):
        h = hole_ids[src]
        lab = labels[dst]
        sel = (h > 0) & (lab > 0)
        codes.append(h[sel].astype(np.int64) * n_labels + lab[sel])
    pairs = np.unique(np.concatenate(codes))
    pair_hole, pair_label = pairs // n_labels, pairs % n_labels
    n_neighbours = np.bincount(pair_hole, minlength=n_holes + 1)
    lut = np.zeros(n_holes + 1, labels.dtype)
    single = n_neighbours[pair_hole] == 1
    lut[pair_hole[single]] = pair_label[single]
    out = labels.copy()
    out[holes] = lut[hole_ids[holes]]
    return out


def merge_unbordered(labels: np.ndarray, border: np.ndarray, threshold: float) -> np.ndarray:
    """Merge neighbouring instances whose shared boundary has a mean border probability
    below ``threshold``, then renumber 1..n.

    Why: the watershed splits a cell wherever its seed score breaks into two blobs (a large,
    flat shsy5y cell with a dim middle), although the network drew no touching border
    between them; two truly touching cells meet on a high border band. Every 4-neighbour
    pixel pair with two different labels is one boundary sample (the mean of its two border
    values); pairs below ``threshold`` are merged transitively (connected components of the
    merge graph), all at once, with no loop over cells.
    """
    n = int(labels.max())
    if n < 2 or threshold <= 0:
        return labels
    codes, values = [], []
    for a, b, ba, bb in ((labels[:, :-1], labels[:, 1:], border[:, :-1], border[:, 1:]),
                         (labels[:-1, :], labels[1:, :], border[:-1, :], border[1:, :])):
        sel = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])
        codes.append(lo.astype(np.int64) * (n + 1) + hi)
        values.append(0.5 * (ba[sel] + bb[sel]))
    code = np.concatenate(codes)
    if code.size == 0:
        return labels
    pairs, inverse = np.unique(code, return_inverse=True)
    mean = np.bincount(inverse, np.concatenate(values)) / np.bincount(inverse)
    merge = pairs[mean < threshold]
    if merge.size == 0:
        return labels
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(merge.size), (merge // (n + 1), merge % (n + 1))),
                       shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    # Each label becomes the smallest label of its merged group (0 is alone in its group),
    # then drop_small renumbers 1..m.
    smallest = np.full(int(component.max()) + 1, n + 1)
    np.minimum.at(smallest, component, np.arange(n + 1))
    return drop_small(smallest[component][labels].astype(np.int32), 1)


# --------------------------------------------------------------------------------------------
# Deep-model decoding
# --------------------------------------------------------------------------------------------


def decode_instances(
    probs: np.ndarray,
    seed_threshold: float = _DEFAULTS.seed_threshold,
    mask_threshold: float = _DEFAULTS.mask_threshold,
    min_seed_area: int = _DEFAULTS.min_seed_area,
    min_area: int = _DEFAULTS.min_area,
    keep_unseeded: bool = _DEFAULTS.keep_unseeded,
    fill_holes: bool = _DEFAULTS.fill_holes,
    compactness: float = _DEFAULTS.compactness,
    connectivity: int = _DEFAULTS.connectivity,
    smooth_sigma: float = _DEFAULTS.smooth_sigma,
    split_height: float = _DEFAULTS.split_height,
    merge_border: float = _DEFAULTS.merge_border,
) -> np.ndarray:
    """Turn the network's body / touching-border probabilities into an instance label image.

    Args:
        probs: float array H x W x C in [0, 1]; channel 0 = cell body probability, channel 1
            (optional) = touching-border band probability, channel 2 (optional) = the centre
            map (:func:`cellseg.model.targets.centre_map`), which then replaces the body in
            the seed score; further channels are ignored.
            An H x W array is taken as the body alone (no border channel).
        seed_threshold: seeds are connected components of ``body * (1 - border)`` (``centre
            * (1 - border)`` with a centre channel) above this.
            Higher = fewer, more certain seeds (more merges); lower = more splits.
        mask_threshold: pixels with ``body`` above this can belong to a cell. Seeds are
            intersected with the mask, so it need not be below ``seed_threshold``.
        min_seed_area: seeds with fewer pixels are dropped before the watershed (noise peaks
            that would otherwise split a cell). Their pixels are then claimed by neighbouring
            seeds, or form an unseeded region (see ``keep_unseeded``).
        min_area: final instances with fewer pixels are removed (set to background).
        keep_unseeded: what to do with a connected mask region that holds no seed (its seed
            score never reaches ``seed_threshold`` or its seeds were all under
            ``min_seed_area``). True (default): keep it as one instance if it has at least
            ``min_area`` pixels; it is confident foreground, typically a small or faint cell
            whose centre the border channel eroded, and dropping it is a sure miss. False:
            drop it, trusting the seeds (fewer false positives from faint debris).
        fill_holes: fill background holes enclosed by a single instance (astro bodies are
            often predicted hollow).
        compactness: skimage's compact watershed parameter; 0 = classic watershed.
        connectivity: 1 = 4-neighbour, 2 = 8-neighbour, for seeds, regions and flooding.
        smooth_sigma: Gaussian sigma (px) applied to the body and border maps (not a centre
            map) before thresholding; 0 = none.
            Annotators draw smooth outlines, a pixel-wise threshold of a noisy map does not.
        split_height: > 0 splits a seed region at its necks: its seeds become the
            maxima of the region's distance transform that stand at least this many pixels
            above their surroundings (h-maxima), so two touching cells whose border the
            network missed still get two seeds; 0 = off.
        merge_border: > 0 merges neighbouring instances whose shared boundary has a mean
            border probability below this (:func:`merge_unbordered`): the watershed split
            one cell where the network saw no touching border; 0 = off (also without a
            border channel).

    Returns:
        int32 label image H x W: 0 = background, instances 1..n consecutive, no overlaps.

    Raises:
        ValueError: ``probs`` not a float H x W x C array in [0, 1], or a knob out of range.
    """
    body, border, centre = _check_probs(probs)
    seed_threshold = _check_fraction("seed_threshold", seed_threshold)
    mask_threshold = _check_fraction("mask_threshold", mask_threshold)
    min_seed_area = check_int("min_seed_area", min_seed_area)
    min_area = check_int("min_area", min_area)
    keep_unseeded = _check_bool("keep_unseeded", keep_unseeded)
    fill_holes = _check_bool("fill_holes", fill_holes)
    compactness = check_float("compactness", compactness)
    connectivity = _check_connectivity(connectivity)
    smooth_sigma = check_float("smooth_sigma", smooth_sigma)
    split_height = check_float("split_height", split_height)
    merge_border = _check_fraction("merge_border", merge_border)
    structure = _structure(connectivity)
    if smooth_sigma > 0:
        body = ndimage.gaussian_filter(body, smooth_sigma, mode="nearest")
        if border is not None:
            border = ndimage.gaussian_filter(border, smooth_sigma, mode="nearest")

    score = body if centre is None else np.clip(centre, 0.0, 1.0)
    if border is not None:
        score = score * (1.0 - np.clip(border, 0.0, 1.0))
    mask = body > mask_threshold
    if not mask.any():
        return np.zeros(body.shape, np.int32)

    markers, _ = ndimage.label((score > seed_threshold) & mask, structure=structure)
    if min_seed_area > 1:
        markers = drop_small(markers, min_seed_area)
    if split_height > 0 and markers.any():
        markers = _split_seeds(markers, split_height, structure)
    if markers.any():
        labels = watershed(
            -score, markers, mask=mask, connectivity=connectivity, compactness=compactness
        ).astype(np.int32, copy=False)
    else:
        labels = np.zeros(body.shape, np.int32)

    if keep_unseeded:
        # The watershed floods every mask pixel connected to a seed, so what is left of the
        # mask is exactly the set of whole mask components without a seed.
        orphans, n_orphans = ndimage.label(mask & (labels == 0), structure=structure)
        if n_orphans:
            offset = int(labels.max())
            labels = np.where(orphans > 0, orphans + offset, labels).astype(np.int32)

    if merge_border > 0 and border is not None:
        labels = merge_unbordered(labels, border, merge_border)
    if fill_holes:
        labels = fill_holes_per_instance(labels)
    return drop_small(labels, min_area)


def signature_defaults(fn: Any) -> dict[str, Any]:
    """Keyword defaults of ``fn`` (one source of truth: the signature itself)."""
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


#: Defaults of :func:`decode_instances`' knobs (read-only).
DEEP_DEFAULTS: Mapping[str, Any] = types.MappingProxyType(signature_defaults(decode_instances))


def decode_with_params(
    probs: np.ndarray,
    params: PostprocessParams | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> np.ndarray:
    """:func:`decode_instances` with knobs from a config object or a tuned dict.

    Why: ``tune.py`` saves the best knobs per cell type as a small YAML dict and the config
    holds a :class:`~cellseg.config.PostprocessParams`; both go through one call here, with
    unknown keys rejected instead of silently ignored.

    Args:
        probs: as for :func:`decode_instances`.
        params: a ``PostprocessParams``, a mapping of :func:`decode_instances` keyword
            arguments (any subset; missing ones take their defaults), or None for defaults.
        **overrides: keyword arguments applied on top of ``params``.

    Returns:
        int32 label image, as :func:`decode_instances`.

    Raises:
        ValueError: unknown parameter names (the message lists the valid ones) or bad values.
    """
    if params is None:
        kwargs: dict[str, Any] = {}
    elif isinstance(params, PostprocessParams):
        kwargs = dataclasses.asdict(params)
    elif isinstance(params, Mapping):
        kwargs = dict(params)
    else:
        raise ValueError(
            f"params must be a PostprocessParams, a dict or None, got {type(params).__name__}"
        )
    kwargs.update(overrides)
    unknown = sorted(set(kwargs) - set(DEEP_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown post-processing parameter(s) {unknown}; valid: {sorted(DEEP_DEFAULTS)}"
        )
    return decode_instances(probs, **kwargs)


__all__ = [
    "DEEP_DEFAULTS",
    "check_float",
    "check_int",
    "decode_instances",
    "decode_with_params",
    "drop_small",
    "fill_holes_per_instance",
    "merge_unbordered",
    "signature_defaults",
]
