"""Scoring a submission against a truth CSV (no TensorFlow: these tests are fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cellseg.constants import TRAIN_COLUMNS
from cellseg.data import rle
from cellseg.evaluate.submission_score import evaluate_submission, labels_from_rles
from cellseg.infer.submission import SubmissionError

REPO = Path(__file__).resolve().parents[1]


def make_disk_dataset(root: Path, n_images: int = 3, shape=(64, 96), seed: int = 0,
                      split: str = "test", cell_type: str = "cort") -> pd.DataFrame:
    """Tiny data root: ``root/<split>/<id>.png`` gray images of bright, non-touching disks and
    ``root/truth.csv`` in the train.csv format. Returns the truth table."""
    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    height, width = shape
    rows = []
    for n in range(n_images):
        image_id = f"img{n:02d}"
        taken = np.zeros(shape, bool)
        image = rng.normal(100, 3, size=shape)
        for _ in range(40):
            if sum(r["id"] == image_id for r in rows) >= 4:
                break
            radius = int(rng.integers(5, 9))
            cy = int(rng.integers(radius + 1, height - radius - 1))
            cx = int(rng.integers(radius + 1, width - radius - 1))
            disk = np.zeros(shape, np.uint8)
            cv2.circle(disk, (cx, cy), radius, 1, thickness=-1, lineType=cv2.LINE_8)
            disk = disk.astype(bool)
            grown = cv2.dilate(disk.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if (grown & taken).any():
                continue
            taken |= disk
            image[disk] = 200
            rows.append({"id": image_id, "annotation": rle.encode(disk), "width": width,
                         "height": height, "cell_type": cell_type, "plate_time": "11h30m00s",
                         "sample_date": "2020-09-14", "sample_id": f"cort[s{n}]",
                         "elapsed_timedelta": "0 days 11:30:00"})
        cv2.imwrite(str(folder / f"{image_id}.png"), np.clip(image, 0, 255).astype(np.uint8))
    truth = pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))
    truth.to_csv(root / "truth.csv", index=False)
    return truth


def perfect_submission(truth: pd.DataFrame) -> pd.DataFrame:
    return truth[["id", "annotation"]].rename(columns={"annotation": "predicted"})


def test_perfect_and_partial_predictions(tmp_path):
    truth = make_disk_dataset(tmp_path)
    result = evaluate_submission(perfect_submission(truth), tmp_path / "truth.csv")
    assert result.score == pytest.approx(1.0)
    assert list(result.summary.index) == ["cort", "overall"]
    assert [c for c in result.summary.columns if c.startswith("p@")][0] == "p@0.50"
    # Drop every prediction of one image: it still counts, as an empty prediction (score 0).
    dropped = truth["id"].iloc[0]
    partial = perfect_submission(truth[truth["id"] != dropped])
    result = evaluate_submission(partial, tmp_path / "truth.csv")
    row = result.table.set_index("id").loc[dropped]
    assert row["score"] == 0 and row["n_pred"] == 0 and row["n_true"] > 0
    assert result.score == pytest.approx(2 / 3)


def test_overlapping_truth_pixels_count_for_both_cells(tmp_path):
    """Truth A = rows 0-3, B = rows 2-5 (they share rows 2-3). Prediction 1 = A exactly,
    prediction 2 = rows 4-5. Counting shared pixels for both cells: IoU(p2, B) = 20/40 = 0.5,
    not > 0.5, so 1 TP, 1 FP, 1 FN at every threshold: score 1/3. A label image (one owner
    per pixel) would give B only rows 4-5 (score 1) or A only rows 0-1 (score 0)."""
    shape = (8, 10)

    def rows(r0, r1):
        m = np.zeros(shape, bool)
        m[r0:r1] = True
        return rle.encode(m)

    truth = pd.DataFrame({"id": "x", "annotation": [rows(0, 4), rows(2, 6)], "width": 10,
                          "height": 8, "cell_type": "shsy5y"})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    sub = pd.DataFrame({"id": "x", "predicted": [rows(0, 4), rows(4, 6)]})
    result = evaluate_submission(sub, tmp_path / "truth.csv", n_overlays=0)
    rec = result.table.iloc[0]
    assert rec["n_true"] == 2 and rec["n_pred"] == 2
    assert rec["score"] == pytest.approx(1 / 3)
    assert rec["tp@0.50"] == 1


def test_rejects_unknown_ids_and_bad_predictions(tmp_path):
    truth = make_disk_dataset(tmp_path, n_images=2)
    sub = pd.concat([perfect_submission(truth),
                     pd.DataFrame({"id": ["ghost"], "predicted": [""]})], ignore_index=True)
    with pytest.raises(SubmissionError, match=r"id 'ghost'.*not among the 2 images of truth"):
        evaluate_submission(sub, tmp_path / "truth.csv")
    overlapping = pd.concat([perfect_submission(truth).iloc[:1]] * 2, ignore_index=True)
    with pytest.raises(SubmissionError, match="overlaps"):
        evaluate_submission(overlapping, tmp_path / "truth.csv")


def test_writes_tables_and_overlays(tmp_path):
    truth = make_disk_dataset(tmp_path, n_images=4)
    sub = perfect_submission(truth.iloc[:-2])  # the last image loses two cells
    path = tmp_path / "submission.csv"
    sub.to_csv(path, index=False)
    out = tmp_path / "eval"
    result = evaluate_submission(path, tmp_path / "truth.csv", out_dir=out, n_overlays=1)
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 4 and {"id", "cell_type", "score", "p@0.95"} <= set(scores.columns)
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert summary.loc["overall", "score"] == pytest.approx(result.score, abs=1e-6)
    md = (out / "summary.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("|")]  # tabulate pads cells to the column width
    assert ["cell type", "images", "score", "p@0.50"] in [r[:4] for r in rows]
    assert ["overall", "4"] in [r[:2] for r in rows]
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == 2
    assert overlays[0].startswith("best_01_") and overlays[1] == "worst_01_img03.png"
    panel = cv2.imread(str(out / "overlays" / overlays[1]))
    assert panel.shape[0] > 64 and panel.shape[1:] == (3 * 96 + 8, 3)  # + legend strip
    # Error analysis: img03 lost its last two cells (2 misses), the rest is perfect.
    errors = pd.read_csv(out / "errors.csv").set_index("id")
    assert len(errors) == 4 and {"tp", "fn", "fp", "merges", "splits", "mean_iou",
                                 "fn_lt100", "fp_ge1000"} <= set(errors.columns)
    n_cells = truth.groupby("id").size()
    assert errors.loc["img03", "fn"] == 2 and errors.loc["img03", "fn_other"] == 2
    assert errors.loc["img03", "tp"] == n_cells["img03"] - 2
    assert (errors[["fp", "merges", "splits"]] == 0).all().all()
    assert errors["mean_iou"].tolist() == [1.0] * 4
    err_summary = pd.read_csv(out / "errors_summary.csv", index_col=0)
    assert err_summary.loc["overall", "fn"] == 2
    assert err_summary.loc["overall", "recall@0.5"] == pytest.approx(1 - 2 / len(truth))
    assert "## Counts at IoU > 0.5" in (out / "errors_summary.md").read_text()
    assert cv2.imread(str(out / "iou_hist.png")) is not None
    assert {out / n for n in ("errors.csv", "errors_summary.csv", "errors_summary.md",
                              "iou_hist.png")} <= set(result.files)
    assert result.errors.set_index("id").loc["img03", "fn"] == 2
    # The worst overlay draws the two missed true cells in red (the truth panel's outlines).
    from cellseg.viz import ERROR_COLOURS, outlines
    missed = np.zeros((64, 96), np.int32)
    for k, text in enumerate(truth[truth["id"] == "img03"]["annotation"].iloc[-2:]):
        missed[rle.decode(text, (64, 96))] = k + 1
    ys, xs = np.nonzero(outlines(missed))
    truth_panel = cv2.cvtColor(panel, cv2.COLOR_BGR2RGB)[:64, 96 + 4: 2 * 96 + 4]
    assert (truth_panel[ys, xs] == ERROR_COLOURS["missed"]).all()


def test_labels_from_rles_round_trip():
    labels = np.zeros((6, 7), np.int32)
    labels[1:3, 1:4] = 1
    labels[4:6, 2:7] = 2
    np.testing.assert_array_equal(labels_from_rles(rle.encode_labels(labels), labels.shape),
                                  labels)


def test_cli_error_exit_code(tmp_path):
    make_disk_dataset(tmp_path, n_images=1)
    (tmp_path / "sub.csv").write_text("ImageId,EncodedPixels\nimg00,\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "evaluate.py"), "--submission",
         str(tmp_path / "sub.csv"), "--truth", str(tmp_path / "truth.csv")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "expected exactly ['id', 'predicted']" in \
        proc.stderr and "Traceback" not in proc.stderr


def test_cli_rejects_negative_overlay_count(tmp_path):
    make_disk_dataset(tmp_path, n_images=1)
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "evaluate.py"), "--submission",
         str(tmp_path / "truth.csv"), "--truth", str(tmp_path / "truth.csv"),
         "--n-overlays", "-1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --n-overlays must be >= 0, got -1"]


def test_real_sample_truth_scores_its_own_label_image(real_sample, tmp_path):
    """The real image's 395 overlapping annotations, flattened to a label image (what a
    submission can hold), score high but below 1: the 3,354 contested pixels still count for
    every true cell. The overlay finds the image in <truth folder>/train."""
    from cellseg.data.data_root import TrainData

    data = TrainData(real_sample)
    image_id = data.ids[0]
    labels = data.load_instances(image_id).labels
    sub = pd.DataFrame({"id": image_id, "predicted": rle.encode_labels(labels)})
    result = evaluate_submission(sub, real_sample / "train.csv", out_dir=tmp_path, n_overlays=1)
    rec = result.table.iloc[0]
    assert rec["n_true"] == 395 and rec["n_pred"] == 395
    assert 0.9 < result.score < 1.0
    assert (tmp_path / "overlays" / f"worst_01_{image_id}.png").is_file()
    # Error analysis: every cell still matched at IoU 0.5; contested pixels lower the IoU.
    err = result.errors.iloc[0]
    assert (err["tp"], err["fn"], err["fp"], err["merges"]) == (395, 0, 0, 0)
    assert 0.9 < err["mean_iou"] < 1.0
    assert (tmp_path / "iou_hist.png").is_file() and (tmp_path / "errors_summary.md").is_file()
