"""Error analysis (cellseg.metrics.error_analysis) and its overlays, on hand-built images
with known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellseg.metrics.error_analysis import (
    SIZE_BINS,
    TABLE_COLUMNS,
    error_analysis,
    error_counts,
    error_summary,
    error_summary_markdown,
    error_table,
    size_bin,
)
from cellseg.metrics.score import match, matched_pairs
from cellseg.viz import (
    ERROR_COLOURS,
    FILL_ALPHA,
    error_overlay,
    plot_iou_hist,
    save_error_overlay,
)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """Truth and prediction (40 x 60) with one of each error kind:

    truth 1 (rows 2-9, cols 2-11, 80 px) matched exactly by pred 10;
    truth 2 + 3 (rows 2-9, cols 20-27 and 28-35) merged into pred 20;
    truth 4 (rows 14-21, cols 2-31, 240 px) split into preds 30 (cols 2-16) and 31 (17-31);
    truth 5 (rows 30-35, cols 40-45, 36 px) missed;
    pred 40 (rows 30-37, cols 2-9) false positive.
    """
    truth = np.zeros((40, 60), np.int32)
    truth[2:10, 2:12] = 1
    truth[2:10, 20:28] = 2
    truth[2:10, 28:36] = 3
    truth[14:22, 2:32] = 4
    truth[30:36, 40:46] = 5
    pred = np.zeros_like(truth)
    pred[2:10, 2:12] = 10
    pred[2:10, 20:36] = 20
    pred[14:22, 2:17] = 30
    pred[14:22, 17:32] = 31
    pred[30:38, 2:10] = 40
    return truth, pred


def test_each_error_kind_is_found_and_attributed():
    truth, pred = scene()
    rec = error_analysis(truth, pred)
    assert (rec.n_true, rec.n_pred) == (5, 5)
    assert (rec.tp, rec.fn, rec.fp, rec.merges, rec.splits) == (1, 4, 4, 1, 1)
    assert rec.reasons() == {"fn_merge": 2, "fn_split": 1, "fn_other": 1,
                             "fp_merge": 1, "fp_split": 2, "fp_other": 1}
    # Per cell, in truth order (ids 1..5) and sorted prediction order (10, 20, 30, 31, 40).
    assert rec.true_ids.tolist() == [1, 2, 3, 4, 5]
    assert rec.pred_ids.tolist() == [10, 20, 30, 31, 40]
    assert rec.true_match.tolist() == [0, -1, -1, -1, -1]
    assert rec.true_in_merge.tolist() == [False, True, True, False, False]
    assert rec.true_split.tolist() == [False, False, False, True, False]
    assert rec.pred_merge.tolist() == [False, True, False, False, False]
    assert rec.pred_split_piece.tolist() == [False, False, True, True, False]
    assert rec.pred_matched.tolist() == [True, False, False, False, False]
    # IoU: exact match 1; merged cells 64/128 = 0.5; split halves 120/240 = 0.5; missed 0.
    np.testing.assert_allclose(rec.best_iou, [1.0, 0.5, 0.5, 0.5, 0.0])
    assert rec.mean_iou == 1.0 and np.isnan(rec.matched_iou[1:]).all()
    assert rec.tp == match(truth, pred).tp[0]


def test_partial_match_iou_and_error_counts():
    truth = np.zeros((10, 10), np.int32)
    truth[0:5, 0:4] = 1  # 20 px
    pred = np.zeros_like(truth)
    pred[0:4, 0:4] = 7  # 16 px inside: IoU 0.8
    counts = error_counts(truth, pred)
    assert list(counts) == ["tp", "fn", "fp", "merges", "splits", "mean_iou", "score",
                            "score_outlines", "score_no_fp", "score_merges_split"]
    assert counts["tp"] == 1 and counts["fn"] == 0 and counts["fp"] == 0
    assert counts["mean_iou"] == pytest.approx(0.8)
    full = error_counts(truth, pred, by_size=True)
    assert list(full) == list(TABLE_COLUMNS) and full["true_lt100"] == 1
    # Nothing matched: mean IoU is NaN, not 0 (an average of nothing).
    assert math.isnan(error_counts(truth, np.zeros_like(truth))["mean_iou"])


def test_small_overlap_with_a_neighbour_is_no_split_or_merge():
    """A prediction covering 10 % of a true cell (< 20 %) makes no split; a true cell only 30 %
    inside a big prediction (< 50 %) makes no merge."""
    truth = np.zeros((20, 20), np.int32)
    truth[0:10, 0:10] = 1  # 100 px
    truth[0:10, 10:20] = 2  # 100 px
    pred = np.zeros_like(truth)
    pred[0:10, 0:11] = 1  # all of cell 1 + 10 % of cell 2
    pred[0:10, 11:20] = 2  # 90 % of cell 2
    rec = error_analysis(truth, pred)
    assert (rec.tp, rec.merges, rec.splits) == (2, 0, 0)
    pred[0:10, 0:13] = 1  # now 30 % of cell 2 is in pred 1, 70 % in pred 2
    rec = error_analysis(truth, pred)
    assert (rec.merges, rec.splits) == (0, 1)  # 30 % and 70 % pieces: cell 2 is split


def test_size_bins():
    assert size_bin(np.array([1, 99, 100, 299, 300, 999, 1000, 10**6])).tolist() == \
        [0, 0, 1, 1, 2, 2, 3, 3]
    truth = np.zeros((100, 100), np.int32)
    truth[0:5, 0:10] = 1  # 50 px, missed
    truth[50:90, 50:80] = 2  # 1200 px, missed
    truth[20:30, 0:20] = 3  # 200 px, matched
    pred = np.zeros_like(truth)
    pred[20:30, 0:20] = 1
    pred[0:10, 40:55] = 2  # 150 px false positive
    pred[95:100, 90:100] = 3  # 50 px false positive
    by = error_analysis(truth, pred).by_size()
    assert [by[f"true_{b}"] for b in SIZE_BINS] == [1, 1, 0, 1]
    assert [by[f"fn_{b}"] for b in SIZE_BINS] == [1, 0, 0, 1]
    assert [by[f"pred_{b}"] for b in SIZE_BINS] == [1, 2, 0, 0]
    assert [by[f"fp_{b}"] for b in SIZE_BINS] == [1, 1, 0, 0]


def test_overlapping_truth_counts_shared_pixels_for_both_cells():
    """A = rows 0-3, B = rows 2-5 of an 8 x 10 image (rows 2-3 shared). Pred 1 = A, pred 2 =
    rows 4-5: IoU(pred 2, B) = 20/40 = 0.5, not > 0.5. So 1 TP, B missed (best IoU 0.5, not
    the 1.0 a label image giving B only rows 4-5 would claim), pred 2 a false positive."""
    rows = np.arange(80).reshape(8, 10)
    a, b = rows[0:4].ravel(), rows[2:6].ravel()
    pred = np.zeros((8, 10), np.int32)
    pred[0:4] = 1
    pred[4:6] = 2
    rec = error_analysis([a, b], pred)
    assert (rec.tp, rec.fn, rec.fp) == (1, 1, 1)
    assert rec.true_area.tolist() == [40, 40]
    np.testing.assert_allclose(rec.best_iou, [1.0, 0.5])
    # B: 20 px (50 %) in pred 1 and 20 px in pred 2, each >= 20 %: B is split; pred 1 holds
    # all of A and half of B (>= 50 %): by the rule it is also a merge, which explains B's miss.
    assert rec.true_split.tolist() == [False, True]
    assert rec.pred_merge.tolist() == [True, False] and rec.reasons()["fn_merge"] == 1


def test_overlapping_truth_one_prediction_two_candidates():
    """B lies inside A; the prediction equals A: IoU 1 with A and 50/60 with B. One match only,
    and it goes to the better pair (A); the prediction holds both cells, so it is a merge."""
    rows = np.arange(60).reshape(6, 10)
    a, b = rows.ravel(), rows[0:5].ravel()
    pred = np.ones((6, 10), np.int32)
    rec = error_analysis([a, b], pred)
    assert rec.true_match.tolist() == [0, -1] and rec.tp == 1 and rec.fn == 1
    assert rec.merges == 1 and rec.reasons()["fn_merge"] == 1
    assert rec.tp == match([a, b], pred).tp[0]


def random_labels(rng, shape, n):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        cy, cx, r = rng.integers(shape[0]), rng.integers(shape[1]), rng.integers(2, 8)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


@pytest.mark.parametrize("seed", range(8))
def test_tp_agrees_with_the_metric_and_counts_add_up(seed):
    """Random label images, and overlapping list truth (random disks that may overlap)."""
    rng = np.random.default_rng(seed)
    shape = (40, 50)
    truth = random_labels(rng, shape, 10)
    pred = np.roll(truth, int(rng.integers(-3, 4)), axis=int(rng.integers(2))) * 5
    pred = np.where(random_labels(rng, shape, 3) > 0, 99, pred)
    overlapping = [np.flatnonzero(random_labels(rng, shape, 1)) for _ in range(8)]
    overlapping = [c for c in overlapping if c.size]
    for t in (truth, overlapping):
        rec = error_analysis(t, pred)
        res = match(t, pred)
        assert rec.tp == res.tp[0] and rec.n_true == res.n_true and rec.n_pred == res.n_pred
        r = rec.reasons()
        assert r["fn_merge"] + r["fn_split"] + r["fn_other"] == rec.fn
        assert r["fp_merge"] + r["fp_split"] + r["fp_other"] == rec.fp
        assert (rec.best_iou >= np.nan_to_num(rec.matched_iou)).all()


def test_matched_pairs_resolves_conflicts_to_a_maximum_matching():
    # Row 0 could take column 0 or 1, row 1 only column 0: the maximum matching uses both rows.
    iou = np.array([[0.9, 0.6], [0.7, 0.0]])
    rows, cols = matched_pairs(iou)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    rows, cols = matched_pairs(np.zeros((0, 3)))
    assert rows.size == 0 and cols.size == 0


def test_empty_images():
    z = np.zeros((6, 6), np.int32)
    rec = error_analysis(z, z)
    assert (rec.tp, rec.fn, rec.fp, rec.merges, rec.splits) == (0, 0, 0, 0, 0)
    assert error_analysis([], z).n_true == 0


def markdown_rows(md: str) -> list[list[str]]:
    """The cells of every markdown table row in ``md`` (whitespace stripped)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.splitlines() if line.startswith("|")]


def test_table_and_summary_pool_counts_per_cell_type():
    truth, pred = scene()
    perfect = error_analysis(truth, truth)
    table = error_table([("a", "shsy5y", error_analysis(truth, pred)),
                         ("b", "shsy5y", perfect), ("c", "cort", perfect)])
    assert list(table.columns) == ["id", "cell_type", *TABLE_COLUMNS]
    summary = error_summary(table)
    assert list(summary.index) == ["cort", "shsy5y", "overall"]
    s = summary.loc["shsy5y"]
    assert (s["images"], s["tp"], s["fn"], s["fp"], s["merges"], s["splits"]) == \
        (2, 6, 4, 4, 1, 1)
    assert s["precision@0.5"] == pytest.approx(6 / 10) and s["recall@0.5"] == pytest.approx(0.6)
    assert s["mean_iou"] == pytest.approx(1.0)
    # Sizes in scene: 80, 64, 64, 240, 36 px -> 4 cells < 100 (3 missed), 1 in 100-300 (missed).
    assert s["miss_rate_lt100"] == pytest.approx(3 / 8) and s["true_lt100"] == 8
    assert s["miss_rate_100_300"] == pytest.approx(0.5)
    assert np.isnan(s["miss_rate_ge1000"])
    assert summary.loc["overall", "tp"] == 11 and summary.loc["cort", "fn"] == 0
    md = error_summary_markdown(summary)
    rows = markdown_rows(md)  # tabulate pads cells to the column width: compare the cells
    assert ["shsy5y", "2", "10", "10", "6", "4", "4", "1", "1", "0.600", "0.600", "1.000"] in rows
    assert ["cell type", "miss <100", "miss 100-300"] in [r[:3] for r in rows]
    assert ["shsy5y", "0.375 (8)", "0.500 (2)", "- (0)", "- (0)"] in [r[:5] for r in rows]
    with pytest.raises(ValueError, match="no images"):
        error_summary(table.iloc[:0])


def test_mean_iou_is_pooled_over_matched_cells():
    truth = np.zeros((10, 10), np.int32)
    truth[0:5, 0:4] = 1
    pred = np.zeros_like(truth)
    pred[0:4, 0:4] = 1  # IoU 0.8
    two = np.zeros((10, 20), np.int32)
    two[0:4, 0:4], two[0:4, 10:14] = 1, 2
    table = error_table([("a", "x", error_analysis(truth, pred)),
                         ("b", "x", error_analysis(two, two)),
                         ("c", "x", error_analysis(truth, np.zeros_like(truth)))])
    # (0.8 + 1 + 1) / 3 matched cells, not the mean of image means (0.8 + 1) / 2.
    assert error_summary(table).loc["x", "mean_iou"] == pytest.approx(2.8 / 3)


def _rgb_at(panel: np.ndarray, y: int, x: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in panel[y, x])


def test_error_overlay_colours_known_pixels(tmp_path):
    truth, pred = scene()
    rec = error_analysis(truth, pred)
    image = np.zeros(truth.shape, np.uint8)  # black: a filled interior is alpha * colour
    path = tmp_path / "overlay.png"
    save_error_overlay(path, image, truth, pred, rec)
    bgr = cv2.imread(str(path))
    panel = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(panel, error_overlay(image, truth, pred, rec))
    h, w = truth.shape
    assert panel.shape[1] == 3 * w + 8 and panel.shape[0] > h  # legend strip underneath
    tx, px = w + 4, 2 * w + 8  # x offsets of the truth and prediction panels
    c = ERROR_COLOURS
    # Outlines (solid colour), truth panel: matched, merged, split, missed.
    assert _rgb_at(panel, 2, tx + 5) == c["matched"]
    assert _rgb_at(panel, 2, tx + 24) == c["merge"]
    assert _rgb_at(panel, 14, tx + 10) == c["split"]
    assert _rgb_at(panel, 30, tx + 42) == c["missed"]
    # Prediction panel: matched, merge, split pieces, false positive.
    assert _rgb_at(panel, 2, px + 5) == c["matched"]
    assert _rgb_at(panel, 2, px + 30) == c["merge"]
    assert _rgb_at(panel, 14, px + 5) == c["split"] == _rgb_at(panel, 14, px + 25)
    assert _rgb_at(panel, 30, px + 5) == c["false positive"]
    # Interiors are blended; background and the image panel stay untouched (black).
    fill = tuple(int(FILL_ALPHA * v) for v in c["missed"])
    assert _rgb_at(panel, 32, tx + 42) == fill
    assert _rgb_at(panel, 32, px + 42) == (0, 0, 0)  # the missed cell has no prediction
    assert _rgb_at(panel, 5, 5) == (0, 0, 0) and _rgb_at(panel, 38, tx + 55) == (0, 0, 0)
    # The legend shows a square of every colour.
    strip = panel[h:].reshape(-1, 3)
    for name, colour in c.items():
        assert (strip == colour).all(axis=1).any(), name


def test_iou_histogram_writes_png(tmp_path):
    truth, pred = scene()
    recs = {"shsy5y": [error_analysis(truth, pred)], "cort": [error_analysis(truth, truth)],
            "empty": [error_analysis(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32))]}
    plot_iou_hist(recs, tmp_path / "iou_hist.png")
    assert cv2.imread(str(tmp_path / "iou_hist.png")) is not None


def test_real_sample_truth_against_itself(real_sample):
    """The real image (395 overlapping annotations): its label image against itself is all TP
    and no error of any kind; the full overlapping masks against that label image still match
    every cell (contested pixels lower the IoU, not below 0.5)."""
    from cellseg.data.data_root import TrainData

    data = TrainData(real_sample)
    inst = data.load_instances(data.ids[0])
    rec = error_analysis(inst.labels, inst.labels)
    assert rec.n_true == rec.n_pred == rec.tp == 395
    assert (rec.fn, rec.fp, rec.merges, rec.splits) == (0, 0, 0, 0)
    assert rec.mean_iou == pytest.approx(1.0)
    assert sum(rec.by_size()[f"true_{b}"] for b in SIZE_BINS) == 395
    rec = error_analysis(inst.pixels, inst.labels)
    assert (rec.tp, rec.fn, rec.fp, rec.merges) == (395, 0, 0, 0)
    assert 0.9 < rec.mean_iou < 1.0
    table = error_table([(data.ids[0], "shsy5y", rec)])
    assert isinstance(error_summary(table), pd.DataFrame)


# --- where the points are lost (what-if scores) ----------------------------------------------


def test_what_if_scores_on_the_scene():
    """One merge (2 true cells), one split, one miss, one FP, one exact match: each what-if
    removes its own kind of error and nothing else."""
    truth, pred = scene()
    rec = error_analysis(truth, pred)
    res = match(truth, pred)
    w = rec.what_if
    assert w["score"] == pytest.approx(res.score)
    # Perfect outlines: every matched cell matches at every threshold -> p@0.5 at each.
    assert w["score_outlines"] == pytest.approx(res.precision[0])
    # FP removed: the merge, both split pieces and pred 40 are unmatched (4 FPs of 5 preds).
    tp50 = int(res.tp[0])
    expected = np.mean([tp / (tp50 + rec.n_true - tp) for tp in res.tp])
    assert w["score_no_fp"] == pytest.approx(expected)
    # Merges split: pred 20 becomes true cells 2 and 3 (two more TPs, one FP fewer).
    after = match_result_counts(tp=tp50 + 2, n_true=rec.n_true, n_pred=rec.n_pred - 1 + 2)
    assert w["score_merges_split"] == pytest.approx(after)
    assert w["score_merges_split"] > w["score"] and w["score_no_fp"] > w["score"]


def match_result_counts(tp: int, n_true: int, n_pred: int) -> float:
    """Score when every match holds at every threshold (exact cells)."""
    return tp / (tp + (n_pred - tp) + (n_true - tp))


def _rect_image(shape, rects) -> np.ndarray:
    img = np.zeros(shape, np.int32)
    for k, (r, c, h, w) in enumerate(rects, start=1):
        img[r:r + h, c:c + w] = k
    return img


rects = st.lists(st.tuples(st.integers(0, 25), st.integers(0, 25), st.integers(2, 12),
                           st.integers(2, 12)), min_size=0, max_size=8)


@settings(max_examples=60, deadline=None)
@given(rects, rects)
def test_what_if_properties(true_rects, pred_rects):
    """Non-overlapping truth (a label image): perfect outlines score exactly the precision at
    IoU 0.5; removing false positives or splitting merges never lowers the score."""
    truth = _rect_image((32, 32), true_rects)
    pred = _rect_image((32, 32), pred_rects)
    w = error_analysis(truth, pred).what_if
    res = match(truth, pred)
    assert w["score"] == pytest.approx(res.score)
    assert w["score_outlines"] == pytest.approx(res.precision[0])
    assert w["score_outlines"] >= w["score"] - 1e-12
    assert w["score_no_fp"] >= w["score"] - 1e-12
    assert w["score_merges_split"] >= w["score"] - 1e-12


def test_what_if_in_summary_and_markdown():
    truth, pred = scene()
    table = error_table([("a", "shsy5y", error_analysis(truth, pred)),
                         ("b", "shsy5y", error_analysis(truth, truth))])
    summary = error_summary(table)
    one = error_analysis(truth, pred).what_if
    assert summary.loc["shsy5y", "score_no_fp"] == pytest.approx((one["score_no_fp"] + 1) / 2)
    assert "Where the points are lost" in error_summary_markdown(summary)
