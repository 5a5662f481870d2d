import numpy as np
import pytest

from cellseg.config import AugmentConfig, load_config
from cellseg.data import rle
from cellseg.data.data_root import decode_annotations
from cellseg.model.targets import TargetCache, annotation_key, make_targets, targets_as_float
from cellseg.train.augment import apply, build_augment
from cellseg.train.batches import Sample, TrainBatches


def box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_border_band_between_touching_cells_only():
    s = (20, 30)
    a, b, c = box(s, 5, 15, 2, 10), box(s, 5, 15, 10, 18), box(s, 5, 15, 24, 28)
    inst = decode_annotations([rle.encode(m) for m in (a, b, c)], s)
    t = make_targets(inst, radius=1)
    assert t.dtype == np.uint8 and t.shape == (20, 30, 2)
    np.testing.assert_array_equal(t[..., 0].astype(bool), a | b | c)
    border = t[..., 1].astype(bool)
    assert border[8, 9] and border[8, 10]  # where a meets b
    assert not border[:, 20:].any()  # the isolated cell c has no touching band
    assert not border[8, 5] and not border[8, 14]  # cell interiors


def test_overlap_pixels_are_border():
    s = (12, 12)
    a, b = box(s, 0, 6, 0, 6), box(s, 4, 10, 4, 10)
    inst = decode_annotations([rle.encode(a), rle.encode(b)], s)
    t = make_targets(inst, radius=1)
    assert t[..., 1][inst.overlap].all()


def test_target_cache_roundtrip_and_key(tmp_path):
    s = (10, 10)
    rows = [rle.encode(box(s, 1, 4, 1, 4))]
    calls = []

    def instances():
        calls.append(1)
        return decode_annotations(rows, s)

    cache = TargetCache(tmp_path)
    first = cache.get("img", rows, instances)
    second = cache.get("img", rows, instances)
    np.testing.assert_array_equal(first, second)
    assert len(calls) == 1  # second read came from disk
    assert annotation_key(rows) != annotation_key([rle.encode(box(s, 1, 5, 1, 4))])


@pytest.mark.parametrize("seed,elastic", [(s, 0.0) for s in range(5)] + [(0, 1.0), (1, 1.0)])
def test_augmentation_keeps_image_and_targets_aligned(seed, elastic):
    # The image encodes its own coordinates; targets are a binary version of the same pattern.
    rng = np.random.default_rng(seed)
    h, w = 96, 128
    image = np.zeros((h, w), np.uint8)
    targets = np.zeros((h, w, 2), np.uint8)
    for _ in range(8):
        y, x = rng.integers(8, h - 8), rng.integers(8, w - 8)
        image[y - 4:y + 4, x - 4:x + 4] = 255
        targets[y - 4:y + 4, x - 4:x + 4, 0] = 1
    cfg = AugmentConfig(crop_size=64, brightness_contrast=0.0, gamma=False, blur=False,
                        noise=False, elastic=elastic)
    aug = build_augment(cfg, seed=seed)
    assert any(type(t).__name__ == "ElasticTransform" for t in aug.transforms) == (elastic > 0)
    for _ in range(10):
        out_img, out_t = apply(aug, image, targets)
        assert out_img.shape == (64, 64) and out_t.shape == (64, 64, 2)
        assert set(np.unique(out_t)) <= {0, 1}  # nearest interpolation for targets
        bright = out_img > 127
        # Away from the interpolated edges, bright image pixels are exactly the target pixels.
        agree = (bright == out_t[..., 0].astype(bool)).mean()
        assert agree > 0.97


def test_train_batches_shapes_and_reproducibility():
    cfg = load_config(None, ["augment.crop_size=32", "train.batch_size=3",
                             "train.steps_per_epoch=2"])
    rng = np.random.default_rng(0)
    samples = [Sample(f"id{k}", t, rng.integers(0, 255, (40, 50), dtype=np.uint8),
                      (rng.random((40, 50, 2)) > 0.5).astype(np.uint8))
               for k, t in enumerate(["shsy5y", "astro", "cort", "cort", "cort"])]
    names = ["seg1", "seg2", "cell_type"]
    x, y = TrainBatches(samples, cfg, names, workers=1)[1]
    x2, y2 = TrainBatches(samples, cfg, names, workers=1)[1]
    assert x.shape == (3, 32, 32, 1) and x.dtype == np.float32
    assert y["seg1"].shape == (3, 32, 32, 2) and y["cell_type"].shape == (3,)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y["cell_type"], y2["cell_type"])
    assert abs(float(x.mean())) < 0.5  # per-crop normalisation


def test_balanced_sampling_draws_rare_types():
    cfg = load_config(None, ["augment.crop_size=32", "train.batch_size=8"])
    rng = np.random.default_rng(0)
    samples = [Sample(f"c{k}", "cort", rng.integers(0, 255, (40, 50), dtype=np.uint8),
                      np.zeros((40, 50, 2), np.uint8)) for k in range(18)]
    samples += [Sample("s0", "shsy5y", rng.integers(0, 255, (40, 50), dtype=np.uint8),
                       np.zeros((40, 50, 2), np.uint8))]
    batches = TrainBatches(samples, cfg, ["seg1", "cell_type"], workers=1)
    types = np.concatenate([batches[i][1]["cell_type"] for i in range(20)])
    share = float((types == 0).mean())  # shsy5y is index 0: 1 of 19 images
    assert 0.35 < share < 0.65


def test_band_radius_cap_changes_targets_and_cache_key(tmp_path):
    """A capped band (train.border_radius_max) is thinner and cached under another key."""
    from cellseg.model.targets import border_radius

    s = (80, 80)
    a, b = box(s, 10, 50, 10, 40), box(s, 10, 50, 40, 70)  # big touching cells: radius 4
    rows = [rle.encode(a), rle.encode(b)]
    inst = decode_annotations(rows, s)
    assert border_radius(inst) == 4 and border_radius(inst, max_radius=2) == 2
    wide, thin = make_targets(inst), make_targets(inst, max_radius=2)
    assert thin[..., 1].sum() < wide[..., 1].sum()
    assert annotation_key(rows) != annotation_key(rows, max_radius=2)
    got = TargetCache(tmp_path, max_radius=2).get("a", rows, lambda: inst)
    np.testing.assert_array_equal(got, thin)
    again = TargetCache(tmp_path).get("a", rows, lambda: inst)  # default cap: not the thin one
    np.testing.assert_array_equal(again, wide)


def test_centre_channel_peaks_inside_each_cell_and_splits_touching_cells(tmp_path):
    """Two touching squares: the centre map is 1 at each cell's middle, falls toward its
    outline (lowest on the touching line), is 0 on background; uint8 0..255 on disk, [0, 1]
    through targets_as_float; cached under its own key."""
    s = (20, 30)
    a, b = box(s, 5, 15, 5, 15), box(s, 5, 15, 15, 25)
    inst = decode_annotations([rle.encode(a), rle.encode(b)], s)
    labels = inst.labels
    t = make_targets(inst, radius=1, n_targets=3)
    assert t.shape == (20, 30, 3) and t.dtype == np.uint8
    c = targets_as_float(t)[..., 2]
    assert c.max() == 1.0 and c[labels == 0].max() == 0.0
    assert c[9, 9] > 0.7 and c[9, 14] < 0.3 and c[9, 15] < 0.3  # the touching line is low
    np.testing.assert_array_equal(targets_as_float(t)[..., :2], t[..., :2])
    rows = ["1 1"]
    assert annotation_key(rows, n_targets=3) != annotation_key(rows)
    got = TargetCache(tmp_path, n_targets=3).get("a", rows, lambda: inst)
    np.testing.assert_array_equal(got, t)
    with pytest.raises(ValueError, match="n_targets"):
        make_targets(inst, n_targets=4)
