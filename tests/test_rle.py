import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cellseg.data import rle


def test_canonical_kaggle_convention_row_major_one_indexed():
    # "1 3 10 2" on a 3x4 image: pixels 1..3 and 10..11 (1-indexed, row-major).
    expected = np.zeros((3, 4), bool)
    expected[0, 0:3] = True  # pixels 1, 2, 3
    expected[2, 1:3] = True  # pixels 10, 11 -> flat 9, 10 -> row 2, cols 1, 2
    mask = rle.decode("1 3 10 2", (3, 4))
    np.testing.assert_array_equal(mask, expected)
    assert rle.encode(expected) == "1 3 10 2"


def test_runs_wrap_across_rows_in_row_major_order():
    mask = np.zeros((2, 3), bool)
    mask[0, 2] = mask[1, 0] = True  # consecutive in row-major order -> one run
    assert rle.encode(mask) == "3 2"
    assert rle.encode(mask.T) != "3 2"  # a transposing encoder would differ


def test_empty_mask_and_empty_string():
    assert rle.encode(np.zeros((4, 5), bool)) == ""
    assert not rle.decode("", (4, 5)).any()
    assert not rle.decode("   ", (4, 5)).any()


def test_full_mask():
    assert rle.encode(np.ones((3, 3), bool)) == "1 9"


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_roundtrip_property(mask):
    text = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(text, mask.shape), mask)
    idx = rle.decode_indices(text, mask.shape)
    np.testing.assert_array_equal(idx, np.flatnonzero(mask))


@settings(max_examples=100, deadline=None)
@given(arrays(np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.integers(0, 4)))
def test_encode_labels_matches_per_label_encode(labels):
    expected = [rle.encode(labels == k) for k in np.unique(labels) if k != 0]
    assert rle.encode_labels(labels) == expected


@pytest.mark.parametrize("text, message", [
    ("1 2 3", "odd number of tokens"),
    ("1 x", "not an integer"),
    ("1.5 2", "not an integer"),
    ("0 2", "start 0 < 1"),
    ("-1 2", "start -1 < 1"),
    ("1 0", "length 0 < 1"),
    ("5 2 1 2", "not sorted"),
    ("1 5 3 2", "overlaps"),
    ("11 3", "past the image end"),
])
def test_malformed_rle_raises_clear_error(text, message):
    with pytest.raises(rle.RLEError, match=message) as info:
        rle.decode(text, (3, 4), where="train.csv row 7 (id abc)")
    assert "train.csv row 7 (id abc)" in str(info.value)


def test_non_string_rejected():
    with pytest.raises(rle.RLEError, match="must be a string"):
        rle.decode(float("nan"), (3, 4))


def test_real_rows_roundtrip(real_sample):
    df = pd.read_csv(real_sample / "train.csv")
    assert len(df) == 395
    for text, h, w in zip(df.annotation, df.height, df.width):
        assert rle.encode(rle.decode(text, (h, w))) == text


@pytest.mark.parametrize("text, message", [
    ("99999999999999999999 1", "'99999999999999999999' is too large"),  # was StopIteration
    ("9223372036854775000 10000", "past the image end"),  # start + length wrapped int64
    ("1 9223372036854775807", "past the image end"),
    ("1_0 2", "'1_0' is not an integer"),  # int() would read 10
    ("\u0661 2", "is not an integer"),  # numpy would read an Arabic-Indic digit
])
def test_out_of_range_and_odd_tokens_are_rle_errors(text, message):
    with pytest.raises(rle.RLEError, match=message):
        rle.decode(text, (3, 4), where="train.csv row 7 (id abc)")


def test_rle_error_is_a_data_error():
    # Every CLI reports a DataError as one `error:` line; a malformed RLE is bad data too.
    from cellseg.data.data_root import DataError

    assert issubclass(rle.RLEError, DataError) and issubclass(rle.RLEError, ValueError)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="0123456789 -x", max_size=14), min_size=1, max_size=6),
       st.integers(1, 40))
def test_first_invalid_agrees_with_parse(texts, n_pixels):
    expected = None
    for i, text in enumerate(texts):
        try:
            rle.parse(text, n_pixels)
        except rle.RLEError:
            expected = i
            break
    assert rle.first_invalid(texts, n_pixels, chunk=2) == expected


def test_check_all_names_the_row():
    with pytest.raises(rle.RLEError, match="f.csv: row 3: RLE has an odd number"):
        rle.check_all(["1 2", "1 2 3"], [12, 12], lambda i: f"f.csv: row {i + 2}")
