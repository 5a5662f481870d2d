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


# --------------------------------------------------------------------------------------------
# The filter as tune.py fits it and the ensemble applies it
# --------------------------------------------------------------------------------------------

def _scene(seed: int, n_true: int = 6, n_false: int = 5, size: int = 120):
    """Maps of true discs (body 0.95) and false blobs (body 0.62: decoded, but no true cell
    there), the truth as flat pixel indices, and an image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = np.full((size, size), 0.05, np.float32)
    truth = []
    centres = [(r, c) for r in range(12, size - 8, 24) for c in range(12, size - 8, 24)]
    rng.shuffle(centres)
    for k, (r, c) in enumerate(centres[:n_true + n_false]):
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= int(rng.integers(5, 9)) ** 2
        if k < n_true:
            body[disc] = 0.95
            truth.append(np.flatnonzero(disc).astype(np.int32))
        else:
            body[disc] = 0.62
    probs = np.stack([body, np.zeros_like(body)], -1)
    image = (body * 200 + rng.normal(0, 5, body.shape)).clip(0, 255).astype(np.uint8)
    return probs, truth, image


def _eval_sets(n_images: int = 10):
    from cellseg.tune.eval_sets import EvalSet
    from cellseg.train import oof

    sets, images = {}, {}
    for t, cell_type in enumerate(("cort", "astro")):
        ids, inputs, truths = [], [], []
        for i in range(n_images):
            probs, truth, image = _scene(100 * t + i)
            image_id = f"{cell_type}{i:02d}"
            ids.append(image_id)
            inputs.append(oof.quantize(probs))
            truths.append(truth)
            images[image_id] = image
        sets[cell_type] = EvalSet("deep", cell_type, ids, [i % 2 for i in range(n_images)],
                                  inputs, truths)
    return sets, images


class _Images:
    """The one TrainData method the fit uses."""

    def __init__(self, images: dict) -> None:
        self.images = images

    def load_image(self, image_id: str) -> np.ndarray:
        return self.images[image_id]


PARAMS = {"seed_threshold": 0.5, "mask_threshold": 0.3, "min_seed_area": 5, "min_area": 5}


def test_scored_image_gives_the_metric_of_the_filtered_labels() -> None:
    from cellseg.metrics.score import image_score
    from cellseg.postprocess.confidence import ScoredImage
    from cellseg.postprocess.decode import decode_with_params

    probs, truth, _ = _scene(7)
    labels = decode_with_params(probs, PARAMS)
    scored = ScoredImage(truth, labels)
    assert scored.n == 11 and scored.y.sum() == 6
    rng = np.random.default_rng(0)
    for keep in (np.ones(scored.n, bool), scored.y.astype(bool), rng.random(scored.n) < 0.5):
        filtered = filter_cells(labels, scored.ids, keep)
        assert scored.score(keep)[0] == pytest.approx(image_score(truth, filtered), abs=1e-12)


def test_tune_fit_chooses_a_cutoff_that_drops_the_false_cells() -> None:
    from cellseg.tune.confidence_fit import fit_confidence_filter

    sets, images = _eval_sets()
    params = {t: PARAMS for t in CELL_TYPES}
    fit = fit_confidence_filter(sets, _Images(images), params, seed=0, log=None)
    assert fit is not None and fit.grouping == "image"
    assert fit.n_fits == 20 + 1  # one model per left-out image, then the final one
    for cell_type in ("cort", "astro"):
        f = fit.types[cell_type]
        assert f.n_images == 10 and f.n_cells == 110
        assert f.cutoff > 0
        assert f.dropped == 50  # exactly the false blobs
        assert f.filtered > f.baseline + 0.2
        assert f.held_out == pytest.approx(f.filtered)
    assert fit.model.record["cutoffs"] == {t: fit.types[t].cutoff for t in fit.types}
    assert fit.model.record["n_images"] == 20 and len(fit.digest) == 12
    # A filter that cannot help is off: every decoded cell true -> all one class -> None.
    for es in sets.values():
        es.inputs[:] = [np.where(x[..., :1] == oof_q(0.62), oof_q(0.05), x[..., :1]).repeat(2, -1)
                        * np.array([1, 0], np.uint8) for x in es.inputs]
    assert fit_confidence_filter(sets, _Images(images), params, log=None) is None


def oof_q(value: float) -> np.uint8:
    from cellseg.train import oof

    return oof.quantize(np.float32(value))


def test_ensemble_decodes_with_the_cutoff_and_reports_confidences() -> None:
    from cellseg.infer.ensemble import FoldEnsemble
    from cellseg.tune.confidence_fit import fit_confidence_filter

    sets, images = _eval_sets()
    params = {t: PARAMS for t in CELL_TYPES}
    fit = fit_confidence_filter(sets, _Images(images), params, seed=0, log=None)
    probs, truth, image = _scene(999)
    ens = FoldEnsemble(models=[], model_files=[], classifiers=[], params=params,
                       confidence=fit.model, cutoffs={"cort": fit.types["cort"].cutoff})
    labels, conf = ens.decode_scored(probs, "cort", image)
    assert labels.max() == conf.size == 6  # the 5 false blobs dropped, ids 1..6
    assert (conf >= fit.types["cort"].cutoff).all()
    assert np.array_equal(ens.decode(probs, "cort", image), labels)
    # No cut-off for shsy5y: every decoded cell stays, each with the model's confidence.
    labels, conf = ens.decode_scored(probs, "shsy5y", image)
    assert labels.max() == conf.size == 11 and conf.min() < fit.types["cort"].cutoff
    # Without a model: the confidence is the mean body probability, nothing dropped.
    plain = FoldEnsemble(models=[], model_files=[], classifiers=[], params=params)
    labels, conf = plain.decode_scored(probs, "cort", image)
    assert labels.max() == 11
    np.testing.assert_allclose(np.sort(conf), [0.62] * 5 + [0.95] * 6, atol=1e-6)


def test_ensemble_routes_an_uncertain_image_by_expected_score() -> None:
    """Confident: the most probable type. Unsure (top < 0.6) with routing scores: the type
    whose parameters are expected to score best; without routing scores: the most probable."""
    from cellseg.infer.ensemble import FoldEnsemble

    routing = {"shsy5y": {"shsy5y": 0.14, "astro": 0.05, "cort": 0.12},
               "astro": {"shsy5y": 0.02, "astro": 0.05, "cort": 0.04},
               "cort": {"shsy5y": 0.25, "astro": 0.08, "cort": 0.29}}
    ens = FoldEnsemble(models=[], model_files=[], classifiers=[], params={}, routing=routing)
    order = list(CELL_TYPES)
    probs = np.zeros(3)
    probs[[order.index("astro"), order.index("shsy5y")]] = [0.9, 0.1]
    assert ens.cell_type(probs) == "astro"  # confident
    probs[[order.index("astro"), order.index("shsy5y")]] = [0.55, 0.45]
    # expected: shsy5y 0.45*0.14+0.55*0.02 = 0.074, astro 0.05, cort 0.45*0.12+0.55*0.04 = 0.076
    assert ens.cell_type(probs) == "cort"
    ens.routing = None
    assert ens.cell_type(probs) == "astro"
    ens.cell_type_override = "shsy5y"
    assert ens.cell_type(probs) == "shsy5y"
