"""Tests of semantic-to-instance decoding and the classical baseline (tiny synthetic images)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cellseg.config import PostprocessParams
from cellseg.postprocess.classical import CLASSICAL_DEFAULTS, classical_segment
from cellseg.postprocess.decode import (
    DEEP_DEFAULTS,
    decode_instances,
    decode_with_params,
    fill_holes_per_instance,
    merge_unbordered,
)
from cellseg.postprocess.search_space import (
    CLASSICAL_SEARCH_SPACE,
    DEEP_SEARCH_SPACE,
    SearchRange,
    suggest_params,
)

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of all (truth, pred) pairs of two label images via one bincount."""
    nt, npred = int(truth.max()), int(pred.max())
    inter = np.bincount(truth.ravel() * (npred + 1) + pred.ravel(),
                        minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
    at, ap = inter.sum(1), inter.sum(0)
    union = at[:, None] + ap[None, :] - inter
    return (inter / np.maximum(union, 1))[1:, 1:]


def _assert_valid_labels(labels: np.ndarray, shape: tuple[int, int]) -> None:
    assert labels.dtype == np.int32
    assert labels.shape == shape
    ids = np.unique(labels)
    ids = ids[ids > 0]
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # consecutive 1..n


def _two_touching_disks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two overlapping disks split down the middle, with a touching-border band there."""
    shape = (64, 80)
    a, b = _disk(shape, (32, 28), 12), _disk(shape, (32, 50), 12)
    truth_a = a & (np.arange(shape[1])[None, :] < 39)
    truth_b = b & ~truth_a
    body = (a | b).astype(np.float32)
    border = ((a | b) & (np.abs(np.arange(shape[1])[None, :] - 38.5) <= 2)).astype(np.float32)
    probs = np.stack([body, border], -1)
    probs = np.clip(cv2.GaussianBlur(probs, (0, 0), 1.0), 0, 1).astype(np.float32)
    return probs, truth_a, truth_b


# ---------------------------------------------------------------------------------------------
# decode_instances
# ---------------------------------------------------------------------------------------------


def test_two_touching_disks_give_two_instances():
    probs, truth_a, truth_b = _two_touching_disks()
    labels = decode_instances(probs)
    _assert_valid_labels(labels, truth_a.shape)
    assert labels.max() == 2
    ious = sorted(max(_iou(labels == k, t) for k in (1, 2)) for t in (truth_a, truth_b))
    assert ious[0] > 0.8, ious


def test_without_border_channel_touching_disks_merge():
    # The border channel is what splits them: the body alone gives one seed, one instance.
    probs, _, _ = _two_touching_disks()
    assert decode_instances(probs[..., :1]).max() == 1
    assert decode_instances(probs[..., 0]).max() == 1  # a 2-D body map is accepted too


def test_zero_or_low_body_gives_no_instances():
    shape = (32, 40, 2)
    assert decode_instances(np.zeros(shape, np.float32)).max() == 0
    low = np.zeros(shape, np.float32)
    low[..., 0] = 0.25  # everywhere below mask_threshold=0.3
    assert decode_instances(low).max() == 0


def test_seed_threshold_and_keep_unseeded():
    probs = np.zeros((48, 48, 2), np.float32)
    probs[_disk((48, 48), (24, 24), 10), 0] = 0.45  # in the mask, never a seed at 0.5
    assert decode_instances(probs, keep_unseeded=False).max() == 0
    assert decode_instances(probs, keep_unseeded=True).max() == 1
    assert decode_instances(probs, seed_threshold=0.4, keep_unseeded=False).max() == 1
    assert decode_instances(probs, mask_threshold=0.5).max() == 0


def test_min_area_and_min_seed_area():
    shape = (60, 60)
    probs = np.zeros(shape + (2,), np.float32)
    probs[_disk(shape, (20, 20), 10), 0] = 1.0  # ~317 px
    probs[_disk(shape, (45, 45), 2.5), 0] = 1.0  # ~21 px
    assert decode_instances(probs, min_area=5, min_seed_area=1).max() == 2
    assert decode_instances(probs, min_area=50, min_seed_area=1).max() == 1
    # The small blob's seed is dropped; kept as an unseeded region unless told otherwise.
    assert decode_instances(probs, min_area=5, min_seed_area=30).max() == 2
    assert decode_instances(probs, min_area=5, min_seed_area=30, keep_unseeded=False).max() == 1


def test_smooth_sigma_removes_a_spur_and_keeps_the_cell():
    """A one-pixel spur on a disk's outline is thresholded in at sigma 0 and smoothed away at
    sigma 1; the disk stays one cell of about its area; sigma must be >= 0."""
    yy, xx = np.mgrid[:40, :40]
    body = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 8 ** 2).astype(np.float32)
    body[20, 29:33] = 1.0  # a thin spur
    probs = np.stack([body, np.zeros_like(body)], -1)
    kw = {"min_seed_area": 1, "min_area": 1, "mask_threshold": 0.5}
    plain = decode_instances(probs, **kw)
    smooth = decode_instances(probs, smooth_sigma=1.0, **kw)
    assert plain[20, 31] > 0 and smooth[20, 31] == 0
    assert smooth.max() == 1 and abs((smooth > 0).sum() - np.pi * 64) < 0.1 * np.pi * 64
    np.testing.assert_array_equal(decode_instances(probs, smooth_sigma=0.0),
                                  decode_instances(probs))
    with pytest.raises(ValueError, match="smooth_sigma"):
        decode_instances(probs, smooth_sigma=-1)


def test_split_height_splits_two_touching_disks_without_a_border():
    """Two overlapping disks with no border channel: one seed region with a neck. split_height
    1 gives two cells of about equal size; a height above the disks' radius keeps one."""
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 <= 10 ** 2
    b = (yy - 20) ** 2 + (xx - 38) ** 2 <= 10 ** 2
    body = (a | b).astype(np.float32)
    probs = np.stack([body, np.zeros_like(body)], -1)
    assert decode_instances(probs).max() == 1
    two = decode_instances(probs, split_height=1.0)
    assert two.max() == 2
    areas = np.bincount(two.ravel())[1:]
    assert abs(int(areas[0]) - int(areas[1])) < 0.1 * areas.sum()
    assert two[20, 20] != two[20, 38]
    assert decode_instances(probs, split_height=20.0).max() == 1


def test_merge_border_joins_a_watershed_split_but_not_touching_cells():
    """Left: one cell whose body dims in the middle (two seeds, no border between them).
    Right: two cells meeting on a drawn touching border. merge_border joins the left pair
    only; 0 (off) keeps the split; labels stay 1..n."""
    body = np.zeros((40, 80), np.float32)
    border = np.zeros_like(body)
    body[10:30, 5:35] = 0.9
    body[10:30, 18:22] = 0.45  # the dim middle: below the seed threshold
    body[10:30, 45:75] = 0.9
    border[10:30, 59:61] = 0.9  # the touching band
    probs = np.stack([body, border], -1)
    kw = {"seed_threshold": 0.5, "mask_threshold": 0.3, "min_seed_area": 1, "min_area": 1}
    split = decode_instances(probs, **kw)
    assert split.max() == 4 and split[20, 10] != split[20, 30]
    merged = decode_instances(probs, merge_border=0.3, **kw)
    assert merged.max() == 3 and sorted(np.unique(merged)) == [0, 1, 2, 3]
    assert merged[20, 10] == merged[20, 30] != 0
    assert merged[20, 50] != merged[20, 70]
    # Transitive merges and renumbering on a strip: 3-1 merge, 1|2 has a border, 4 apart.
    lab = np.array([[3, 3, 1, 1, 2, 2, 0, 4]])
    bor = np.array([[0, 0, 0, 0.9, 0.9, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(merge_unbordered(lab, bor, 0.5), [[1, 1, 1, 1, 2, 2, 0, 3]])
    np.testing.assert_array_equal(merge_unbordered(lab, bor, 0.0), lab)


def test_centre_channel_seeds_split_touching_disks():
    """Body alone merges two touching disks; a centre channel (low on each outline) seeds
    them apart, and the cells keep the body's extent."""
    from cellseg.model.targets import centre_map

    yy, xx = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 10 ** 2] = 1
    labels[((yy - 20) ** 2 + (xx - 38) ** 2 <= 10 ** 2) & (labels == 0)] = 2
    body = (labels > 0).astype(np.float32)
    two_channels = np.stack([body, np.zeros_like(body)], -1)
    assert decode_instances(two_channels).max() == 1
    three = np.concatenate([two_channels, centre_map(labels)[..., None]], -1)
    out = decode_instances(three, seed_threshold=0.5)
    assert out.max() == 2 and out[20, 20] != out[20, 38]
    assert ((out > 0) == (labels > 0)).all()


def test_fill_holes_knob():
    shape = (50, 50)
    ring = _disk(shape, (25, 25), 15) & ~_disk(shape, (25, 25), 5)
    probs = ring.astype(np.float32)[..., None]
    hole = _disk(shape, (25, 25), 5)
    filled = decode_instances(probs, fill_holes=True)
    assert filled.max() == 1 and (filled[hole] == 1).all()
    hollow = decode_instances(probs, fill_holes=False)
    assert hollow.max() == 1 and (hollow[hole] == 0).all()


def test_fill_holes_leaves_gaps_between_several_cells():
    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 5:10] = 1
    labels[5:15, 10:15] = 2
    labels[9:11, 8:12] = 0  # gap enclosed by cells 1 and 2 together
    labels[2, 2] = 3
    out = fill_holes_per_instance(labels)
    assert (out[9:11, 8:12] == 0).all()
    labels[9:11, 8:12] = 1
    labels[12, 7] = 0  # hole inside cell 1 alone
    assert fill_holes_per_instance(labels)[12, 7] == 1


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    seed_threshold=st.floats(0.0, 1.0),
    mask_threshold=st.floats(0.0, 1.0),
    min_area=st.integers(0, 60),
    min_seed_area=st.integers(0, 30),
    keep_unseeded=st.booleans(),
    fill_holes=st.booleans(),
    connectivity=st.sampled_from([1, 2]),
)
def test_random_maps_give_valid_labels(seed, seed_threshold, mask_threshold, min_area,
                                       min_seed_area, keep_unseeded, fill_holes, connectivity):
    rng = np.random.default_rng(seed)
    probs = rng.random((40, 56, 3)).astype(np.float32)
    probs = cv2.GaussianBlur(probs, (0, 0), 2.0)
    probs = (probs - probs.min()) / max(float(probs.max() - probs.min()), 1e-6)
    probs = probs.astype(np.float32)
    labels = decode_instances(
        probs, seed_threshold=seed_threshold, mask_threshold=mask_threshold,
        min_area=min_area, min_seed_area=min_seed_area, keep_unseeded=keep_unseeded,
        fill_holes=fill_holes, connectivity=connectivity,
    )
    _assert_valid_labels(labels, probs.shape[:2])
    areas = np.bincount(labels.ravel())[1:]
    assert (areas >= max(min_area, 1)).all()
    if not fill_holes:  # filled holes may hold pixels below the mask threshold
        assert not (labels[probs[..., 0] <= mask_threshold] > 0).any()
    # Each instance is one connected piece.
    structure = ndimage.generate_binary_structure(2, connectivity)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[sl] == k, structure=structure)[1] == 1


@pytest.mark.parametrize(
    ("probs", "kwargs", "message"),
    [
        ([[0.5]], {}, "numpy array"),
        (np.zeros((2, 3, 4, 5), np.float32), {}, "H x W x C"),
        (np.zeros((2, 64, 64), np.float32), {}, "channels-first"),
        (np.zeros((8, 8, 2), np.uint8), {}, "floating-point"),
        (np.full((8, 8, 2), 1.5, np.float32), {}, r"\[0, 1\]"),
        (np.full((8, 8, 2), np.nan, np.float32), {}, "NaN"),
        (np.zeros((8, 8, 2), np.float32), {"seed_threshold": 1.5}, "seed_threshold"),
        (np.zeros((8, 8, 2), np.float32), {"mask_threshold": -0.1}, "mask_threshold"),
        (np.zeros((8, 8, 2), np.float32), {"seed_threshold": "0.5"}, "seed_threshold"),
        (np.zeros((8, 8, 2), np.float32), {"min_area": -1}, "min_area"),
        (np.zeros((8, 8, 2), np.float32), {"min_seed_area": 2.5}, "min_seed_area"),
        (np.zeros((8, 8, 2), np.float32), {"keep_unseeded": "yes"}, "keep_unseeded"),
        (np.zeros((8, 8, 2), np.float32), {"connectivity": 3}, "connectivity"),
        (np.zeros((8, 8, 2), np.float32), {"compactness": -1.0}, "compactness"),
    ],
)
def test_bad_arguments_raise_clear_errors(probs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        decode_instances(probs, **kwargs)


def test_decode_with_params():
    probs, _, _ = _two_touching_disks()
    expected = decode_instances(probs, min_area=30)
    np.testing.assert_array_equal(
        decode_with_params(probs, PostprocessParams(min_area=30)), expected)
    np.testing.assert_array_equal(decode_with_params(probs, {"min_area": 30}), expected)
    np.testing.assert_array_equal(decode_with_params(probs, None, min_area=30), expected)
    with pytest.raises(ValueError, match="unknown post-processing parameter.*seed_thresh"):
        decode_with_params(probs, {"seed_thresh": 0.5})
    with pytest.raises(ValueError, match="PostprocessParams"):
        decode_with_params(probs, [0.5])


# ---------------------------------------------------------------------------------------------
# Search spaces
# ---------------------------------------------------------------------------------------------


class _MidTrial:
    """A stand-in for optuna.Trial that picks the middle of each range."""

    def suggest_float(self, name, low, high, log=False):
        return float(np.sqrt(low * high)) if log else (low + high) / 2

    def suggest_int(self, name, low, high, log=False):
        return int(round(np.sqrt(low * high))) if log else (low + high) // 2

    def suggest_categorical(self, name, choices):
        return choices[0]


@pytest.mark.parametrize(
    ("space", "defaults"),
    [(DEEP_SEARCH_SPACE, DEEP_DEFAULTS), (CLASSICAL_SEARCH_SPACE, CLASSICAL_DEFAULTS)],
)
def test_search_spaces_cover_defaults(space, defaults):
    for name, rng in space.items():
        assert name in defaults, name
        assert rng.contains(defaults[name]), (name, defaults[name], rng)
    with pytest.raises(TypeError):
        space["new"] = SearchRange("float", 0, 1)  # read-only: no global mutable state


def test_suggested_params_run():
    probs, _, _ = _two_touching_disks()
    deep = suggest_params(_MidTrial(), DEEP_SEARCH_SPACE, prefix="shsy5y.")
    assert set(deep) == set(DEEP_SEARCH_SPACE)
    _assert_valid_labels(decode_with_params(probs, deep), probs.shape[:2])
    classical = suggest_params(_MidTrial(), CLASSICAL_SEARCH_SPACE)
    image = np.full((40, 40), 128, np.uint8)
    _assert_valid_labels(classical_segment(image, **classical), image.shape)
    assert DEEP_SEARCH_SPACE["seed_threshold"].to_dict()["low"] == 0.2


def test_search_range_validation():
    with pytest.raises(ValueError, match="low <= high"):
        SearchRange("float", 1.0, 0.0)
    with pytest.raises(ValueError, match="kind"):
        SearchRange("uniform", 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Classical baseline
# ---------------------------------------------------------------------------------------------


def _phase_contrast_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark elliptical cells with bright halos on a noisy gray background, and their labels."""
    rng = np.random.default_rng(seed)
    shape = (200, 260)
    truth = np.zeros(shape, np.int32)
    n = 0
    for _ in range(400):
        if n == 35:
            break
        cell = np.zeros(shape, np.uint8)
        center = (int(rng.integers(15, shape[1] - 15)), int(rng.integers(15, shape[0] - 15)))
        axes = (int(rng.integers(7, 13)), int(rng.integers(5, 9)))
        cv2.ellipse(cell, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        cell = cell.astype(bool)
        grown = ndimage.binary_dilation(cell, iterations=1)
        if (truth[grown] > 0).any():  # cells may touch (halos merge) but never overlap
            continue
        n += 1
        truth[cell] = n
    fg = truth > 0
    halo = ndimage.binary_dilation(fg, iterations=3) & ~fg
    image = np.full(shape, 128.0, np.float32)
    image[halo] = 175.0
    image[fg] = 95.0
    # Uneven illumination and noise, as in real phase-contrast images.
    image += np.linspace(-15, 15, shape[1])[None, :]
    image = cv2.GaussianBlur(image, (0, 0), 1.0) + rng.normal(0, 6, shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_classical_finds_most_cells():
    image, truth = _phase_contrast_image()
    labels = classical_segment(image, min_distance=5)
    _assert_valid_labels(labels, image.shape)
    iou = _iou_matrix(truth, labels)
    matched = (iou > 0.5).any(axis=1).sum()
    assert matched >= 0.7 * truth.max(), (matched, truth.max())


def test_classical_flat_image_and_bad_input():
    assert classical_segment(np.full((30, 30), 100, np.uint8)).max() == 0
    with pytest.raises(ValueError, match="2-D grayscale"):
        classical_segment(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="polarity"):
        classical_segment(np.zeros((10, 10), np.uint8), polarity="dim")
    with pytest.raises(ValueError, match="min_distance"):
        classical_segment(np.zeros((10, 10), np.uint8), min_distance=0)
    with pytest.raises(ValueError, match="background_sigma"):
        classical_segment(np.zeros((10, 10), np.uint8), background_sigma=0)
