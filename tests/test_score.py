import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellseg.metrics.score import image_score, iou_matrix, match, overlap, score_table, summarize

THRESHOLDS = np.arange(0.5, 1.0, 0.05)


def reference_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """Independent implementation straight from the definition: loops over cells."""
    t_ids = [i for i in np.unique(truth) if i != 0]
    p_ids = [i for i in np.unique(pred) if i != 0]
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, ti in enumerate(t_ids):
        for b, pi in enumerate(p_ids):
            inter = np.logical_and(truth == ti, pred == pi).sum()
            union = np.logical_or(truth == ti, pred == pi).sum()
            iou[a, b] = inter / union
    precisions = []
    for t in THRESHOLDS:
        hits = iou > t
        tp = int(hits.sum())  # unique for t >= 0.5 with disjoint masks
        fp = len(p_ids) - int(hits.any(axis=0).sum())
        fn = len(t_ids) - int(hits.any(axis=1).sum())
        denom = tp + fp + fn
        precisions.append(1.0 if denom == 0 else tp / denom)
    return float(np.mean(precisions))


def disk(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_empty_vs_empty_is_perfect():
    z = np.zeros((8, 8), np.int32)
    assert image_score(z, z) == 1.0


def test_empty_prediction_scores_zero():
    truth = np.zeros((8, 8), np.int32)
    truth[2:5, 2:5] = 1
    assert image_score(truth, np.zeros_like(truth)) == 0.0
    res = match(truth, np.zeros_like(truth))
    assert res.fn.tolist() == [1] * 10 and res.tp.sum() == 0


def test_prediction_without_truth_scores_zero():
    pred = np.zeros((8, 8), np.int32)
    pred[1:3, 1:3] = 4
    assert image_score(np.zeros_like(pred), pred) == 0.0


def test_exact_match_is_one_even_with_other_ids():
    truth = np.zeros((20, 20), np.int32)
    truth[disk(truth.shape, 5, 5, 3)] = 1
    truth[disk(truth.shape, 14, 14, 4)] = 2
    pred = np.where(truth == 1, 17, np.where(truth == 2, 3, 0))  # non-consecutive ids
    assert image_score(truth, pred) == 1.0


def test_one_split_cell():
    # Truth: one 4x10 cell; prediction splits it into two 4x5 halves.
    truth = np.zeros((10, 10), np.int32)
    truth[3:7, :] = 1
    pred = np.zeros_like(truth)
    pred[3:7, :5] = 1
    pred[3:7, 5:] = 2
    # Each half has IoU 0.5 with the truth: not > 0.5, so 0 TP, 2 FP, 1 FN at every threshold.
    res = match(truth, pred)
    assert res.tp.tolist() == [0] * 10
    assert res.fp.tolist() == [2] * 10
    assert res.fn.tolist() == [1] * 10
    assert res.score == 0.0


def test_iou_exactly_at_threshold_is_not_a_match():
    # Truth 20 px, prediction covers 15 of them: IoU = 15/20 = 0.75 exactly.
    truth = np.zeros((4, 5), np.int32)
    truth[:, :] = 1
    pred = np.zeros_like(truth)
    pred[:3, :] = 1
    res = match(truth, pred)
    assert iou_matrix(truth, pred)[0, 0] == pytest.approx(0.75)
    # thresholds 0.50..0.70 match (5), 0.75 does not (strict), nor anything above.
    assert res.tp.tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert res.score == pytest.approx(0.5)


def test_hand_computed_mixed_case():
    truth = np.zeros((10, 10), np.int32)
    truth[0:2, 0:5] = 1  # 10 px
    truth[5:10, 5:10] = 2  # 25 px
    pred = np.zeros_like(truth)
    pred[0:2, 0:5] = 1  # exact match of 1
    pred[5:10, 5:9] = 2  # 20 px inside cell 2: IoU 0.8
    pred[8:10, 0:2] = 3  # false positive
    res = match(truth, pred)
    # t < 0.8: 2 TP, 1 FP, 0 FN -> 2/3 ; t >= 0.8: 1 TP, 2 FP, 1 FN -> 1/4
    exp = [2 / 3 if t < 0.8 - 1e-9 else 1 / 4 for t in THRESHOLDS]
    np.testing.assert_allclose(res.precision, exp)
    assert res.score == pytest.approx(np.mean(exp))


def random_labels(rng, shape, n):
    """Random blobs: label image with up to n cells (disks with random centres)."""
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        lab[disk(shape, rng.integers(shape[0]), rng.integers(shape[1]), rng.integers(2, 7))] = k
    return lab


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_reference_on_random_label_images(seed):
    rng = np.random.default_rng(seed)
    truth = random_labels(rng, (40, 50), 8)
    # Prediction: truth perturbed (shifted, some cells dropped, some noise cells).
    pred = np.roll(truth, rng.integers(-2, 3), axis=int(rng.integers(2))) * 3
    pred[pred == 3 * int(rng.integers(1, 9))] = 0
    pred = np.where(random_labels(rng, (40, 50), 3) > 0, 100, pred)
    assert abs(image_score(truth, pred) - reference_score(truth, pred)) < 1e-9


def test_overlapping_truth_counts_shared_pixels_for_both_cells():
    shape = (10, 10)
    a = np.zeros(shape, bool)
    a[2:6, 2:6] = True
    b = np.zeros(shape, bool)
    b[4:8, 4:8] = True  # overlaps a on 2x2 = 4 px
    pred = np.zeros(shape, np.int32)
    pred[a] = 1
    pred[b & ~a] = 2
    iou = iou_matrix([np.flatnonzero(a), np.flatnonzero(b)], pred)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[1, 1] == pytest.approx(12 / 16)  # b (16 px) vs pred 2 (12 px)
    # Label-image truth path gives the same for non-overlapping truth.
    lab = np.where(a, 1, 0) + np.where(b & ~a, 2, 0)
    np.testing.assert_allclose(iou_matrix([np.flatnonzero(lab == 1), np.flatnonzero(lab == 2)],
                                          pred), iou_matrix(lab, pred))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 10))
def test_property_relabelling_scores_one_and_removal_lowers(seed, n):
    rng = np.random.default_rng(seed)
    truth = random_labels(rng, (30, 30), n)
    ids = np.unique(truth)[1:]
    perm = rng.permutation(1000)[: ids.size] + 1
    lut = np.zeros(truth.max() + 1, np.int64)
    lut[ids] = perm
    assert image_score(truth, lut[truth]) == 1.0
    if ids.size:
        removed = np.where(truth == ids[0], 0, truth)
        assert image_score(truth, removed) < 1.0


def test_score_table_and_summary():
    truth = np.zeros((6, 6), np.int32)
    truth[1:3, 1:3] = 1
    table = score_table([("a", "cort", truth, truth), ("b", "astro", truth, 0 * truth)])
    summary = summarize(table)
    assert summary.loc["overall", "score"] == pytest.approx(0.5)
    assert summary.loc["cort", "score"] == 1.0 and summary.loc["astro", "score"] == 0.0
    assert summary.loc["overall", "images"] == 2


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        image_score(np.zeros((3, 3), np.int32), np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="integer labels"):
        image_score(np.zeros((3, 3)), np.zeros((3, 3), np.int32))


def test_overlap_keeps_original_ids_and_counts_pixels_once():
    pred = np.zeros((4, 6), np.int32)
    pred[0, :3] = 42
    pred[2, :] = 7
    ov = overlap([np.array([0, 1, 2]), np.array([14, 12, 12, 13])], pred)  # unsorted, repeat
    assert ov.pred_ids.tolist() == [7, 42] and ov.true_ids.tolist() == [1, 2]
    assert ov.true_area.tolist() == [3, 3] and ov.pred_area.tolist() == [6, 3]
    np.testing.assert_allclose(ov.iou(), [[0.0, 1.0], [0.5, 0.0]])
    lab = np.zeros((4, 6), np.int32)
    lab[3, 1:3] = 9
    assert overlap(lab, pred).true_ids.tolist() == [9]
