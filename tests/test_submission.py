"""submission.csv: the validator's rules, atomic streaming writes, the real sample's format."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cellseg.data import rle
from cellseg.data.data_root import DataError
from cellseg.data.images import image_size
from cellseg.infer.submission import (
    SubmissionError,
    folder_image_shapes,
    image_rows,
    validate_submission,
    write_submission,
)

H, W = 20, 30


def box(r0: int, r1: int, c0: int, c1: int, shape=(H, W)) -> str:
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return rle.encode(mask)


@pytest.fixture
def test_dir(tmp_path: Path) -> Path:
    """Two gray PNGs: ``a`` (20 x 30) and ``b`` (12 x 16)."""
    folder = tmp_path / "test"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((H, W), 90, np.uint8))
    cv2.imwrite(str(folder / "b.png"), np.full((12, 16), 90, np.uint8))
    return folder


def good_rows() -> list[tuple[str, str]]:
    return [("a", box(0, 4, 0, 5)), ("a", box(5, 9, 10, 20)), ("b", "")]


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["id", "predicted"])


def test_shapes_from_png_headers(test_dir):
    assert folder_image_shapes(test_dir) == {"a": (H, W), "b": (12, 16)}
    assert image_size(test_dir / "b.png") == (12, 16)


def test_accepts_a_good_file(test_dir, tmp_path):
    path = tmp_path / "submission.csv"
    frame(good_rows()).to_csv(path, index=False)
    summary = validate_submission(path, test_dir)
    assert (summary.n_rows, summary.n_images, summary.n_masks, summary.n_empty_images) == \
        (3, 2, 2, 1)
    assert summary.n_pixels == 20 + 40
    # Same checks from a DataFrame and from ids + shapes.
    validate_submission(frame(good_rows()), ["a", "b"], shapes={"a": (H, W), "b": (12, 16)})


def test_rejects_overlapping_masks(test_dir):
    rows = [("a", box(0, 4, 0, 5)), ("a", box(3, 6, 4, 8)), ("b", "")]
    with pytest.raises(SubmissionError, match=r"line 3 \(id 'a'\).*overlaps.*line 2"):
        validate_file(rows, test_dir)


def test_rejects_missing_and_unknown_ids(test_dir):
    with pytest.raises(SubmissionError, match=r"1 id\(s\).*no row.*\['b'\]"):
        validate_file(good_rows()[:2], test_dir)
    with pytest.raises(SubmissionError, match=r"line 5 \(id 'zz'\): image id not among"):
        validate_file(good_rows() + [("zz", "")], test_dir)


@pytest.mark.parametrize(("predicted", "problem"), [
    ("5 2 1 2", "not sorted"),
    (f"{H * W - 1} 5", "past the image end"),
    ("1 2 3", "odd number of tokens"),
    ("0 3", "start 0 < 1"),
    ("1 0", "length 0 < 1"),
    ("1 x", "not an integer"),
    ("1 5 3 2", "overlaps run"),
])
def test_rejects_bad_rle(test_dir, predicted, problem):
    rows = [("a", predicted), ("b", "")]
    with pytest.raises(SubmissionError, match=rf"line 2 \(id 'a'\).*{problem}"):
        validate_file(rows, test_dir)


def test_mask_must_fit_its_own_image(test_dir):
    # Fits image a (600 px) but not image b (192 px).
    with pytest.raises(SubmissionError, match=r"id 'b'.*past the image end \(192 pixels\)"):
        validate_file([("a", ""), ("b", "190 5")], test_dir)


def test_rejects_duplicate_or_misplaced_empty_rows(test_dir):
    with pytest.raises(SubmissionError,
                       match=r"line 5 \(id 'b'\): duplicate empty.*also line 4\)"):
        validate_file(good_rows() + [("b", "")], test_dir)
    with pytest.raises(SubmissionError, match=r"line 4 \(id 'a'\): empty prediction.*2 mask"):
        validate_file(good_rows()[:2] + [("a", ""), ("b", "")], test_dir)


@pytest.mark.parametrize("header", ["ImageId,EncodedPixels", "predicted,id", "id,predicted,x"])
def test_rejects_wrong_columns(test_dir, tmp_path, header):
    path = tmp_path / "sub.csv"
    extra = ",1" if header.count(",") == 2 else ""
    path.write_text(f"{header}\na,{extra}\nb,{extra}\n")
    with pytest.raises(SubmissionError, match=r"columns are .*expected exactly \['id', 'pred"):
        validate_submission(path, test_dir)


def test_missing_test_dir_and_garbage_image(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        validate_submission(frame([("a", "")]), tmp_path / "nope")
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"not a png at all" * 10)
    with pytest.raises(DataError, match=r"x\.png: not a readable image"):
        validate_submission(frame([("x", "")]), folder)


def validate_file(rows, test_dir: Path):
    path = test_dir.parent / "check.csv"
    frame(rows).to_csv(path, index=False)
    return validate_submission(path, test_dir)


def test_image_rows_gives_one_empty_row_for_no_cell():
    assert list(image_rows("a", [])) == [("a", "")]
    assert list(image_rows("a", iter(["1 2", "5 1"]))) == [("a", "1 2"), ("a", "5 1")]


def test_write_submission_streams_validates_and_renames(test_dir, tmp_path):
    out = tmp_path / "submission.csv"
    summary = write_submission(iter(good_rows()), out, test_dir)
    assert summary.n_masks == 2
    assert out.read_text().splitlines()[0] == "id,predicted"
    assert validate_submission(out, test_dir).n_rows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv", "test"]


def test_write_submission_never_leaves_a_partial_file(test_dir, tmp_path):
    out = tmp_path / "submission.csv"
    out.write_text("id,predicted\nold,good\n")
    before = out.read_bytes()

    def interrupted():
        yield good_rows()[0]
        raise DataError("test/b.png: not a readable image")

    with pytest.raises(DataError, match="b.png"):
        write_submission(interrupted(), out, test_dir)
    assert out.read_bytes() == before
    # An invalid stream (overlap) is refused too, naming the target file.
    bad = [("a", box(0, 4, 0, 5)), ("a", box(0, 4, 0, 5)), ("b", "")]
    with pytest.raises(SubmissionError, match=r"not writing .*submission.csv.*overlaps"):
        write_submission(iter(bad), out, test_dir)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv", "test"]


def test_validate_scales_to_many_masks(tmp_path):
    """A full-size image with 600 masks validates quickly (vectorised per image)."""
    shape = (520, 704)
    labels = np.zeros(shape, np.int32)
    k = 0
    for r in range(0, 500, 20):
        for c in range(0, 704, 30):
            k += 1
            labels[r : r + 15, c : c + 25] = k
    masks = rle.encode_labels(labels)
    summary = validate_submission(frame([("big", m) for m in masks]), ["big"],
                                  shapes={"big": shape})
    assert summary.n_masks == k and summary.n_pixels == int((labels > 0).sum())


def test_real_sample_submission_format(real_sample):
    """The competition's own sample_submission.csv (three empty rows) is valid."""
    summary = validate_submission(real_sample / "sample_submission.csv", real_sample / "test")
    assert summary.n_images == 3 and summary.n_empty_images == 3 and summary.n_masks == 0
    assert set(folder_image_shapes(real_sample / "test").values()) == {(520, 704)}
