"""Training targets from instance labels: cell body, the touching-border band and (optional)
the distance to the cell's outline.

A semantic network cannot output instances, but it can learn where cells touch. Channel 0 is
the cell body (every annotated pixel), channel 1 the band where two different cells meet
(pixels whose neighbourhood holds two cell ids, plus contested overlap pixels). At inference,
seeds = body * (1 - border) split touching cells (DSB 2018 winners' recipe).

The band width scales with the image's cell size (radius ~ sqrt(median area) / 8, between 1
and ``max_radius`` px, ``train.border_radius_max``), so large astro cells get a wider band
than small shsy5y cells. A wide band costs thin cells: decoded from perfect targets, real
astro images score 0.57 with a 4 px band and 0.69 with 2 px (``bench/target_ceiling.py``).

With ``model.n_targets: 3`` a third channel holds each cell's distance to its own outline,
divided by the cell's largest distance (1 at the cell's centre, falling to 0 at its outline,
0 on background). Seeds cut from it separate touching cells by shape even where the network
misses the thin border band (the shsy5y merges); it is stored as uint8 0..255 and read back by
:func:`targets_as_float`.

Targets are cached on disk per image, keyed by TARGETS_VERSION and a hash of the image's
annotations, so changing either the recipe or the CSV recomputes them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cellseg import fileio
from cellseg.data.data_root import Instances

TARGETS_VERSION = 1
TARGET_CHANNELS = ("body", "border", "centre")


DEFAULT_MAX_RADIUS = 4


def border_radius(instances: Instances, max_radius: int = DEFAULT_MAX_RADIUS) -> int:
    """Half-width of the touching band in pixels, from the median cell area."""
    if instances.n_cells == 0:
        return 1
    median_area = float(np.median([p.size for p in instances.pixels]))
    return int(np.clip(round(np.sqrt(median_area) / 8.0), 1, max(int(max_radius), 1)))


def centre_map(labels: np.ndarray) -> np.ndarray:
    """float32 H x W: each cell's distance to its outline (pixels of other cells and
    background count as outside) over the cell's largest distance; 0 on background."""
    from skimage.segmentation import find_boundaries

    inside = (labels > 0) & ~find_boundaries(labels, mode="inner")
    dist = ndi.distance_transform_edt(inside) + (labels > 0)  # outline pixels at 1
    peak = np.asarray(ndi.maximum(dist, labels, index=np.arange(int(labels.max()) + 1)),
                      np.float64)
    peak[0] = 1.0
    return (dist / peak[labels]).astype(np.float32)


def make_targets(instances: Instances, radius: int | None = None,
                 max_radius: int = DEFAULT_MAX_RADIUS, n_targets: int = 2) -> np.ndarray:
    """uint8 H x W x n_targets targets: body (0/1), touching border (0/1) and, for
    ``n_targets`` 3, the centre map scaled to 0..255 (:func:`centre_map`).

    Args:
        instances: decoded annotations of one image.
        radius: band half-width; default from :func:`border_radius` (capped at
            ``max_radius``).
        n_targets: 2 or 3 (the network's ``model.n_targets``).
    """
    if n_targets not in (2, 3):
        raise ValueError(f"n_targets must be 2 (body, border) or 3 (+ centre), got {n_targets}")
    labels = instances.labels
    r = border_radius(instances, max_radius) if radius is None else radius
    size = 2 * r + 1
    footprint = np.ones((size, size), bool)
    big = np.iinfo(np.int32).max
    max_lab = ndi.maximum_filter(labels, footprint=footprint, mode="constant", cval=0)
    min_lab = ndi.minimum_filter(np.where(labels > 0, labels, big), footprint=footprint,
                                 mode="constant", cval=big)
    # Two different cells in the window: max != min over the non-zero labels.
    touching = (max_lab > 0) & (min_lab < big) & (max_lab != min_lab)
    body = labels > 0
    # Overlap pixels are claimed by the full masks of several cells; count them as body too.
    body |= instances.overlap
    border = (touching & (body | ndi.binary_dilation(body, iterations=1))) | instances.overlap
    channels = [body.astype(np.uint8), border.astype(np.uint8)]
    if n_targets == 3:
        channels.append(np.rint(centre_map(labels) * 255).astype(np.uint8))
    return np.stack(channels, axis=-1)


def targets_as_float(targets: np.ndarray) -> np.ndarray:
    """float32 targets in [0, 1] for the loss: body and border as they are, the centre
    channel (stored 0..255) divided by 255."""
    out = np.asarray(targets, np.float32).copy()
    if out.shape[-1] > 2:
        out[..., 2:] /= 255.0
    return out


def annotation_key(annotations: list[str] | np.ndarray,
                   max_radius: int = DEFAULT_MAX_RADIUS, n_targets: int = 2) -> str:
    """Short hash of an image's RLE rows and the target recipe (cache invalidation when
    either changes)."""
    recipe = f"v{TARGETS_VERSION}" + (f"|r{max_radius}" if max_radius != DEFAULT_MAX_RADIUS
                                      else "") + (f"|c{n_targets}" if n_targets != 2 else "")
    h = hashlib.sha1(recipe.encode())
    for text in annotations:
        h.update(str(text).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class TargetCache:
    """On-disk cache of targets, one ``.npz`` per image and annotation hash."""

    def __init__(self, cache_dir: str | os.PathLike,
                 max_radius: int = DEFAULT_MAX_RADIUS, n_targets: int = 2) -> None:
        self.dir = Path(cache_dir) / f"targets_v{TARGETS_VERSION}"
        self.max_radius = int(max_radius)
        self.n_targets = int(n_targets)

    def path(self, image_id: str, key: str) -> Path:
        return self.dir / f"{image_id}_{key}.npz"

    def get(self, image_id: str, annotations: list[str] | np.ndarray,
            instances_fn) -> np.ndarray:
        """Return cached targets or compute them with ``instances_fn()`` and store them."""
        path = self.path(image_id, annotation_key(annotations, self.max_radius,
                                                  self.n_targets))
        if path.is_file():
            try:
                return fileio.load_npz(path)["targets"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache entry: recompute and overwrite
        targets = make_targets(instances_fn(), max_radius=self.max_radius,
                               n_targets=self.n_targets)
        fileio.save_npz(path, targets=targets)
        return targets
