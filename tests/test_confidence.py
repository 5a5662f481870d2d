"""Per-cell confidence (cellseg.postprocess.confidence): features, ranking, safe files,
cross-fitting."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from cellseg.constants import CELL_TYPES
from cellseg.postprocess.confidence import (
    FEATURE_NAMES,
    CellConfidence,
    ConfidenceModelError,
    cell_features,
    cross_fit_groups,
    cross_fit_predict,
    filter_cells,
    ids_hash,
    match_labels,
)


def hand_made() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64 x 80 label image: a disc (id 2), a square on the left edge (id 5), a long thin
    rectangle (id 9); body 0.9 inside cells, 0.1 outside; border 0.2 everywhere."""
    labels = np.zeros((64, 80), np.int32)
    yy, xx = np.mgrid[:64, :80]
    labels[(yy - 20) ** 2 + (xx - 30) ** 2 <= 8 ** 2] = 2
    labels[40:50, 0:10] = 5
    labels[50:54, 40:76] = 9
    body = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    border = np.full_like(body, 0.2)
    image = np.random.default_rng(0).integers(0, 255, labels.shape).astype(np.uint8)
    return labels, np.stack([body, border], axis=-1), image


def test_features_shape_and_order() -> None:
    labels, probs, image = hand_made()
    ids, X = cell_features(labels, probs, image, "cort")
    assert ids.tolist() == [2, 5, 9]
    assert X.shape == (3, len(FEATURE_NAMES))
    assert FEATURE_NAMES[0] == "area"
    assert FEATURE_NAMES[-3:] == tuple(f"type_{t}" for t in CELL_TYPES)
    col = {n: k for k, n in enumerate(FEATURE_NAMES)}
    assert X[:, col["area"]].tolist() == [float((labels == i).sum()) for i in (2, 5, 9)]
    np.testing.assert_allclose(X[:, col["body_mean"]], 0.9, atol=1e-6)
    np.testing.assert_allclose(X[:, col["body_ring"]], 0.1, atol=1e-6)
    np.testing.assert_allclose(X[:, col["border_outline"]], 0.2, atol=1e-6)
    assert X[1, col["edge_dist"]] == 0  # the square touches the left edge
    assert X[0, col["edge_dist"]] > 0
    # The thin rectangle is more eccentric and less disc-like than the disc.
    assert X[2, col["eccentricity"]] > X[0, col["eccentricity"]]
    assert X[2, col["perim2_area"]] > X[0, col["perim2_area"]]
    assert X[:, col["type_cort"]].tolist() == [1.0, 1.0, 1.0]
    assert X[:, col["type_astro"]].tolist() == [0.0, 0.0, 0.0]
    # Body only, no image: same rows, border and contrast features 0.
    ids2, X2 = cell_features(labels, probs[..., 0], None, "astro")
    assert ids2.tolist() == [2, 5, 9] and X2.shape == X.shape
    assert (X2[:, col["contrast"]] == 0).all() and (X2[:, col["border_mean"]] == 0).all()
    empty_ids, empty = cell_features(np.zeros((8, 8), np.int32), probs[:8, :8], None, "cort")
    assert empty_ids.size == 0 and empty.shape == (0, len(FEATURE_NAMES))
    with pytest.raises(ValueError, match="unknown cell type"):
        cell_features(labels, probs, image, "neuron")


def test_match_labels_uses_the_metric() -> None:
    labels, _, _ = hand_made()
    truth = labels.copy()
    truth[truth == 5] = 0  # the square is a false positive
    pred = labels.copy()
    pred[50:54, 40:50] = 0  # the rectangle keeps 26/36 of its pixels: IoU 0.72 -> matched
    ids, y = match_labels(truth, pred)
    assert ids.tolist() == [2, 5, 9] and y.tolist() == [1, 0, 1]


def separable(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURE_NAMES)))
    y = (X[:, FEATURE_NAMES.index("body_mean")] > 0).astype(int)
    return X, y


def test_classifier_ranks_a_separable_case() -> None:
    X, y = separable()
    model = CellConfidence(random_state=0).fit(X, y)
    Xt, yt = separable(seed=1)
    p = model.predict_proba(Xt)
    assert p.shape == (len(yt),)
    assert ((p >= 0.5) == yt.astype(bool)).mean() > 0.95
    assert p[yt == 1].mean() > 0.8
    assert p[yt == 0].mean() < 0.2
    with pytest.raises(ValueError, match="one class"):
        CellConfidence().fit(X, np.ones(len(X)))


def test_filter_removes_low_confidence_cells() -> None:
    labels, probs, image = hand_made()
    out = filter_cells(labels, np.array([2, 5, 9]), np.array([True, False, True]))
    assert set(np.unique(out)) == {0, 2, 9}
    assert (out[labels == 2] == 2).all()
    # A model that learnt "low body probability = false" drops the faint cell.
    X, _ = separable()
    k = FEATURE_NAMES.index("body_mean")
    X[:, k] = np.random.default_rng(2).uniform(0, 1, len(X))
    model = CellConfidence().fit(X, (X[:, k] > 0.5).astype(int))
    faint = probs.copy()
    faint[..., 0][labels == 5] = 0.35
    kept = model.filter(labels, 0.5, faint, image, "cort")
    assert 5 not in np.unique(kept)


def test_save_load_round_trip(tmp_path) -> None:
    X, y = separable()
    model = CellConfidence(random_state=3).fit(X, y)
    path = model.save(tmp_path / "confidence", experiment="e", folds=[0, 1],
                      image_ids_hash=ids_hash(["b", "a"]))
    assert path.suffix == ".skops" and path.with_suffix(".json").is_file()
    again = CellConfidence.load(path)
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["n_cells"] == len(y) and record["features"] == list(FEATURE_NAMES)
    assert record["image_ids_hash"] == ids_hash(["a", "b"]) and "sklearn" in record
    # A changed model file no longer matches its record.
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ConfidenceModelError, match="sha256"):
        CellConfidence.load(path)


def _forge(path, payload: bytes) -> None:
    """Write a model file and a record that matches it (as an attacker could)."""
    import hashlib

    path.write_bytes(payload)
    path.with_suffix(".json").write_text(json.dumps({
        "sha256": hashlib.sha256(payload).hexdigest(), "features": list(FEATURE_NAMES)}))


def test_load_refuses_a_pickle(tmp_path) -> None:
    X, y = separable()
    model = CellConfidence().fit(X, y)
    path = tmp_path / "confidence.skops"
    _forge(path, pickle.dumps(model.model))
    with pytest.raises(ConfidenceModelError, match="not a skops"):
        CellConfidence.load(path)


def test_load_refuses_untrusted_types(tmp_path) -> None:
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    bad = tmp_path / "bad.skops"
    sio.dump(FunctionTransformer(func=os.system), bad)
    _forge(tmp_path / "confidence.skops", bad.read_bytes())
    with pytest.raises(ConfidenceModelError, match="untrusted"):
        CellConfidence.load(tmp_path / "confidence.skops")


def test_cross_fitting_never_scores_an_image_with_its_own_model(monkeypatch) -> None:
    groups = ["a"] * 3 + ["b"] * 2 + ["c"] * 4 + ["a"]  # rows of one image need not be adjacent
    seen = []
    for g, train, test in cross_fit_groups(groups):
        assert {groups[i] for i in test} == {g}
        assert g not in {groups[i] for i in train}
        assert len(train) + len(test) == len(groups)
        seen.extend(test.tolist())
    assert sorted(seen) == list(range(len(groups)))  # every row scored exactly once
    # cross_fit_predict: each model is fitted on rows whose groups exclude the scored group.
    fitted_on: list[set] = []
    X, y = separable(len(groups) * 20)
    rows = np.repeat(groups, 20)

    class Spy(CellConfidence):
        def fit(self, X_, y_):
            fitted_on.append({tuple(r) for r in X_})
            return super().fit(X_, y_)

    import cellseg.postprocess.confidence as conf

    monkeypatch.setattr(conf, "CellConfidence", Spy)
    p = cross_fit_predict(X, y, rows)
    assert p.shape == (len(y),) and np.isfinite(p).all()
    for (g, _, test), train_rows in zip(cross_fit_groups(rows), fitted_on):
        assert not train_rows & {tuple(r) for r in X[test]}
