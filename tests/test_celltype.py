"""Whole-image cell-type classifier: right on whole images, never collapsed to one type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellseg.constants import CELL_TYPES
from cellseg.data.synthetic import make_image
from cellseg.model.celltype import (
    FEATURE_NAMES,
    FEATURES_VERSION,
    CellTypeClassifier,
    CellTypeClassifierError,
    augment_image,
    choose_cell_type,
    ensemble_proba,
    image_features,
    training_features,
)

REAL_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "real_subset"


def _synthetic(n_per_type: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    images, types = [], []
    for t in CELL_TYPES:
        for _ in range(n_per_type):
            images.append(make_image(t, rng, 260, 352)[0])
            types.append(t)
    return images, types


def test_features_ignore_brightness_and_contrast():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, (64, 80)).astype(np.uint8)
    a = image_features(img)
    b = image_features(img.astype(np.float32) * 0.5 + 20)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="2-D image"):
        image_features(np.zeros((4, 4)))


def test_whole_image_types_are_right_and_not_collapsed():
    train_x, train_y = _synthetic(6, seed=1)
    test_x, test_y = _synthetic(4, seed=2)
    clf = CellTypeClassifier.fit(np.stack([image_features(x) for x in train_x]), train_y)
    pred = [CELL_TYPES[i] for i in clf.predict_images(test_x).argmax(1)]
    assert len(set(pred)) == len(CELL_TYPES), f"collapsed: {pred}"
    for t in CELL_TYPES:
        right = [p == t for p, y in zip(pred, test_y) if y == t]
        assert np.mean(right) >= 0.75, (t, pred)


def test_save_load_round_trip_and_bad_files(tmp_path):
    x, y = _synthetic(3, seed=3)
    feats = np.stack([image_features(i) for i in x])
    clf = CellTypeClassifier.fit(feats, y)
    clf.save(tmp_path / "c.json")
    again = CellTypeClassifier.load(tmp_path / "c.json")
    np.testing.assert_allclose(again.predict_proba(feats), clf.predict_proba(feats), atol=1e-6)
    p = ensemble_proba([clf, again], x[:2])
    assert p.shape == (2, len(CELL_TYPES)) and np.allclose(p.sum(1), 1, atol=1e-5)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CellTypeClassifierError, match="bad.json"):
        CellTypeClassifier.load(tmp_path / "bad.json")
    for unknown in (0, FEATURES_VERSION + 1):  # versions this code cannot compute: retrain
        (tmp_path / "old.json").write_text(f'{{"feature_version": {unknown}}}')
        with pytest.raises(CellTypeClassifierError, match="feature version"):
            CellTypeClassifier.load(tmp_path / "old.json")


def test_version_1_classifiers_of_older_experiments_still_route_as_before(tmp_path):
    """A classifier trained with version-1 features (experiments from before version 2)
    loads and is fed version-1 features, alone or beside a version-2 one in an ensemble."""
    from cellseg.model.celltype import image_features_v1

    x, y = _synthetic(3, seed=5)
    v1 = CellTypeClassifier.fit(np.stack([image_features_v1(i) for i in x]), y)
    v1.feature_version = 1
    v1.save(tmp_path / "v1.json")
    again = CellTypeClassifier.load(tmp_path / "v1.json")
    assert again.feature_version == 1
    expected = v1.predict_proba(np.stack([image_features_v1(i) for i in x[:2]]))
    np.testing.assert_allclose(again.predict_images(x[:2]), expected, atol=1e-6)
    v2 = CellTypeClassifier.fit(np.stack([image_features(i) for i in x]), y)
    both = ensemble_proba([again, v2], x[:2])
    np.testing.assert_allclose(both, (expected + v2.predict_images(x[:2])) / 2, atol=1e-6)


def test_two_types_only_gives_zero_for_the_third():
    x, y = _synthetic(3, seed=4)
    keep = [i for i, t in enumerate(y) if t != "astro"]
    clf = CellTypeClassifier.fit(np.stack([image_features(x[i]) for i in keep]),
                                 [y[i] for i in keep])
    p = clf.predict_images([x[i] for i in keep])
    assert np.all(p[:, CELL_TYPES.index("astro")] == 0)
    assert [CELL_TYPES[i] for i in p.argmax(1)] == [y[i] for i in keep]


def test_real_images_out_of_fold():
    """Half of the 40 real images train, the other half are classified (and the reverse)."""
    if not (REAL_SUBSET / "train.csv").is_file():
        pytest.skip(f"real subset not present at {REAL_SUBSET}")
    from cellseg.data.data_root import TrainData

    data = TrainData(REAL_SUBSET)
    ids = sorted(data.ids)
    feats = np.stack([image_features(data.load_image(i)) for i in ids])
    types = np.array([data.cell_type(i) for i in ids])
    halves = [np.arange(len(ids)) % 2 == k for k in (0, 1)]
    pred = np.empty(len(ids), object)
    for test in halves:
        clf = CellTypeClassifier.fit(feats[~test], types[~test])
        pred[test] = [CELL_TYPES[i] for i in clf.predict_proba(feats[test]).argmax(1)]
    assert set(pred) == set(CELL_TYPES)
    assert (pred == types).mean() >= 0.9, list(zip(types, pred))


def test_feature_names_match_features():
    img = np.random.default_rng(5).integers(0, 255, (96, 128)).astype(np.uint8)
    f = image_features(img)
    assert f.shape == (len(FEATURE_NAMES),) and np.all(np.isfinite(f))
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert np.all(np.isfinite(image_features(np.full((32, 40), 7, np.uint8))))  # blank image


def test_probabilities_ignore_global_brightness_and_contrast():
    """The features are ratios, shares and counts: a gain and an offset change no probability."""
    x, y = _synthetic(3, seed=6)
    clf = CellTypeClassifier.fit(np.stack([image_features(i) for i in x]), y)
    p = clf.predict_images(x)
    for gain, offset in ((0.5, 30.0), (1.7, -20.0)):
        q = clf.predict_images([i.astype(np.float32) * gain + offset for i in x])
        np.testing.assert_allclose(q, p, atol=0.01)  # float rounding at count thresholds


def test_augment_image_and_training_features_are_seeded():
    img = make_image("astro", np.random.default_rng(7), 130, 176)[0]
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = augment_image(img, rng)
        assert a.dtype == np.uint8 and a.ndim == 2 and min(a.shape) >= 8
    x, y = _synthetic(1, seed=8)
    f1, t1 = training_features(x, y, n_augment=2, seed=3)
    f2, t2 = training_features(x, y, n_augment=2, seed=3)
    assert f1.shape == (3 * len(x), len(FEATURE_NAMES)) and t1 == t2
    assert t1 == [t for t in y for _ in range(3)]
    np.testing.assert_array_equal(f1, f2)
    with pytest.raises(ValueError, match="images for"):
        training_features(x, y[:-1])


def test_training_features_on_threads_give_the_serial_rows():
    """Threads compute the features only; the copies come from one generator in order, so
    the rows are those of the plain loop (each image, then its copies), for any thread count
    and block boundary."""
    x, y = _synthetic(3, seed=4)  # 9 images: more than one block of 4 x 2 threads
    rng = np.random.default_rng(5)
    expected = []
    for image in x:
        expected.append(image_features(image))
        expected += [image_features(augment_image(image, rng)) for _ in range(2)]
    for n_threads in (1, 2, 3):
        feats, types = training_features(x, y, n_augment=2, seed=5, n_threads=n_threads)
        np.testing.assert_array_equal(feats, np.stack(expected))
        assert types == [t for t in y for _ in range(3)]


def test_fit_images_round_trip(tmp_path):
    x, y = _synthetic(2, seed=9)
    clf = CellTypeClassifier.fit_images(x, y, n_augment=1, seed=0)
    assert clf.n_train == {t: 2 for t in CELL_TYPES}  # images, not augmented rows
    clf.save(tmp_path / "c.json")
    again = CellTypeClassifier.load(tmp_path / "c.json")
    np.testing.assert_allclose(again.predict_images(x), clf.predict_images(x), atol=1e-6)


def test_choose_cell_type():
    scores = {"shsy5y": {"shsy5y": 0.14, "astro": 0.05, "cort": 0.12},
              "astro": {"shsy5y": 0.02, "astro": 0.05, "cort": 0.035},
              "cort": {"shsy5y": 0.25, "astro": 0.08, "cort": 0.29}}
    p = np.zeros(len(CELL_TYPES))
    p[CELL_TYPES.index("astro")], p[CELL_TYPES.index("shsy5y")] = 0.9, 0.1
    sure = choose_cell_type(p, routing_scores=scores)
    assert sure.cell_type == "astro" and sure.confident and "most probable" in sure.reason
    p[CELL_TYPES.index("astro")], p[CELL_TYPES.index("shsy5y")] = 0.55, 0.45
    # unsure: astro's parameters cost a shsy5y image far more than shsy5y's cost an astro one
    unsure = choose_cell_type(p, routing_scores=scores)
    assert unsure.cell_type == "shsy5y" and not unsure.confident
    assert "expected score" in unsure.reason
    plain = choose_cell_type(p)  # no routing scores: the most probable type, flagged unsure
    assert plain.cell_type == "astro" and not plain.confident
    assert choose_cell_type(p, threshold=0.5, routing_scores=scores).cell_type == "astro"
    with pytest.raises(ValueError, match="probabilities"):
        choose_cell_type([0.5, 0.5])
