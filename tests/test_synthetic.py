"""Tests of the synthetic Sartorius-format data generator (small images, a few seconds)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cellseg.constants import CELL_TYPES, TRAIN_COLUMNS
from cellseg.data import rle, synthetic

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real_sample"
SMALL = dict(height=160, width=224, count_scale=0.3)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.make_dataset(out, n_train=12, n_test=4, seed=3, **SMALL)
    return out


@pytest.fixture(scope="module")
def full_size() -> dict[str, list[tuple[np.ndarray, synthetic.SyntheticCells]]]:
    """Three 704x520 images per cell type."""
    rng = np.random.default_rng(11)
    return {t: [synthetic.make_image(t, rng) for _ in range(3)] for t in CELL_TYPES}


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        m = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
        pairs |= set(zip(lo.tolist(), hi.tolist()))
    return pairs


def test_csv_columns_and_dtypes(root: Path) -> None:
    for name in ("train.csv", "test_truth.csv"):
        df = pd.read_csv(root / name)
        assert list(df.columns) == list(TRAIN_COLUMNS)
        assert df["width"].dtype == np.int64 and df["height"].dtype == np.int64
        for col in ("id", "annotation", "cell_type", "plate_time", "sample_date", "sample_id",
                    "elapsed_timedelta"):
            assert pd.api.types.is_string_dtype(df[col]), (name, col, df[col].dtype)
        assert (df["width"] == SMALL["width"]).all() and (df["height"] == SMALL["height"]).all()
        assert set(df["cell_type"]) <= set(CELL_TYPES)
        assert df["id"].str.fullmatch(r"[0-9a-f]{12}").all()
        assert df["plate_time"].str.fullmatch(r"\d\dh[0-5]\dm00s").all()
        assert df["elapsed_timedelta"].str.fullmatch(r"0 days \d\d:[0-5]\d:00").all()
        assert df["sample_date"].str.fullmatch(r"20\d\d-\d\d-\d\d").all()
        assert df["sample_id"].str.fullmatch(
            r"(shsy5y\[diff\]|astros\[hippo\]|cort\[[a-z-]+\])_[A-H]\d+-\d_Vessel-\d+_Ph_\d"
        ).all()
        # elapsed_timedelta says the same time as plate_time.
        hm = df["plate_time"].str.extract(r"(\d\d)h(\d\d)m")
        assert (df["elapsed_timedelta"] == "0 days " + hm[0] + ":" + hm[1] + ":00").all()
        # One cell type per image.
        assert (df.groupby("id")["cell_type"].nunique() == 1).all()


def test_files_and_submission(root: Path) -> None:
    train = pd.read_csv(root / "train.csv", dtype=str)
    truth = pd.read_csv(root / "test_truth.csv", dtype=str)
    sub = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "predicted"]
    assert (sub["predicted"] == "").all()
    train_png = {p.stem for p in (root / "train").glob("*.png")}
    test_png = {p.stem for p in (root / "test").glob("*.png")}
    assert len(train_png) == 12 and len(test_png) == 4
    assert set(train["id"]) == train_png
    assert set(sub["id"]) == test_png == set(truth["id"]) and len(sub) == 4
    assert not train_png & test_png
    img = cv2.imread(str(root / "train" / f"{sorted(train_png)[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape == (SMALL["height"], SMALL["width"])
    assert not list(root.rglob(".*"))  # no temporary files left behind


def test_rle_rows_decode_inside_image_with_some_overlap(root: Path) -> None:
    df = pd.read_csv(root / "train.csv", dtype=str)
    shape = (SMALL["height"], SMALL["width"])
    overlap = 0
    for image_id, rows in df.groupby("id"):
        count = np.zeros(shape, np.int32)
        for k, code in enumerate(rows["annotation"]):
            m = rle.decode(code, shape, where=f"{image_id} row {k}")  # validates the runs
            assert m.sum() >= 5
            count += m
        overlap += int((count > 1).sum())
    assert overlap > 0  # a few annotations share pixels with a neighbour


def test_instances_match_rles_and_labels() -> None:
    image, inst = synthetic.make_image("shsy5y", np.random.default_rng(4), 260, 352,
                                       count_scale=0.5)
    assert image.dtype == np.uint8 and image.shape == (260, 352) == inst.shape
    codes = inst.rles()
    assert len(codes) == inst.n == int(inst.labels.max()) > 30
    masks = np.stack([rle.decode(c, inst.shape) for c in codes])
    np.testing.assert_array_equal(masks, np.stack(inst.masks()))
    # The label image that was drawn is the union of the rows; rows only add overlap pixels.
    np.testing.assert_array_equal(masks.any(0), inst.labels > 0)
    np.testing.assert_array_equal(masks.sum((1, 2)), inst.areas())
    assert int((masks.sum(0) > 1).sum()) == inst.overlap_pixels() > 0
    own = inst.labels[None] == np.arange(1, inst.n + 1)[:, None, None]
    assert (masks >= own).all()


def test_per_type_statistics(full_size) -> None:
    n = {t: np.median([inst.n for _, inst in v]) for t, v in full_size.items()}
    area = {t: np.median(np.concatenate([inst.areas() for _, inst in v]))
            for t, v in full_size.items()}
    assert n["shsy5y"] > 3 * n["cort"] and n["shsy5y"] >= 75
    assert 4 <= n["cort"] <= 108 and 5 <= n["astro"] <= 200
    # Real medians (real subset, docs/design.md): shsy5y ~150-270 px, cort ~200-225,
    # astro ~560-800.
    assert 100 <= area["shsy5y"] <= 300 and 150 <= area["cort"] <= 300
    assert area["astro"] > 3 * area["shsy5y"] and 500 <= area["astro"] <= 1200


def test_shsy5y_cells_touch(full_size) -> None:
    for _, inst in full_size["shsy5y"]:
        pairs = _touching_pairs(inst.labels)
        touching_cells = {c for p in pairs for c in p}
        assert len(touching_cells) > 0.5 * inst.n  # crowded clusters, not isolated cells


def test_sizes_scale_with_image() -> None:
    rng = np.random.default_rng(5)
    small = [synthetic.make_image("cort", rng, 260, 352)[1] for _ in range(3)]
    med = np.median(np.concatenate([i.areas() for i in small]))
    assert 30 <= med <= 80  # ~205 px / 4 at half the linear size
    crop = synthetic.make_image("cort", rng, 260, 352, scale=1.0)[1]
    assert np.median(crop.areas()) > 120  # real-size cells on a small canvas


def test_sample_ids_group_images(root: Path) -> None:
    df = pd.read_csv(root / "train.csv", dtype=str).drop_duplicates("id")
    per_sample = df.groupby("sample_id")
    assert (per_sample["id"].nunique() >= 2).any()
    assert per_sample["id"].nunique().max() <= 6
    assert (per_sample["cell_type"].nunique() == 1).all()
    assert (per_sample["sample_date"].nunique() == 1).all()
    assert (per_sample["plate_time"].nunique() == per_sample["id"].nunique()).all()
    test = pd.read_csv(root / "test_truth.csv", dtype=str)
    assert not set(test["sample_id"]) & set(df["sample_id"])  # no leakage between splits
    assert set(df["cell_type"]) == set(CELL_TYPES)


def test_deterministic(tmp_path: Path) -> None:
    kw = dict(n_train=3, n_test=1, height=96, width=128, count_scale=0.3)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthetic.make_dataset(a, seed=7, **kw)
    synthetic.make_dataset(b, seed=7, **kw)
    synthetic.make_dataset(c, seed=8, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()


def test_refuses_non_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    kw = dict(n_train=3, n_test=1, height=64, width=96, count_scale=0.2)
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        synthetic.make_dataset(out, **kw)
    assert not (out / "train.csv").exists()
    (out / "train").mkdir()
    (out / "train" / "stale.png").write_bytes(b"x")
    synthetic.make_dataset(out, overwrite=True, **kw)
    assert not (out / "train" / "stale.png").exists()
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(list((out / "train").glob("*.png"))) == 3


def test_bad_arguments(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cell_type"):
        synthetic.make_image("neuron", rng)
    with pytest.raises(ValueError, match="32x32"):
        synthetic.make_image("cort", rng, 16, 16)
    with pytest.raises(ValueError, match="n_train"):
        synthetic.make_dataset(tmp_path / "x", n_train=0)
    with pytest.raises(ValueError, match="type_fractions"):
        synthetic.make_dataset(tmp_path / "y", type_fractions={"hela": 1.0})


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cellseg.commands import make_synthetic

    out = tmp_path / "cli"
    args = ["--out", str(out), "--n-train", "3", "--n-test", "1", "--height", "64",
            "--width", "96", "--count-scale", "0.2"]
    assert make_synthetic.main(args) == 0
    printed = capsys.readouterr().out
    assert "3 train, 1 test images" in printed and "area_median" in printed
    assert make_synthetic.main(args) == 2  # refuses the now non-empty directory
    assert "not empty" in capsys.readouterr().err


def test_look_close_to_real_sample() -> None:
    if not (REAL_SAMPLE / "train.csv").is_file():
        pytest.skip(f"real sample not present at {REAL_SAMPLE}")
    df = pd.read_csv(REAL_SAMPLE / "train.csv", dtype=str)
    image_id = df["id"].iloc[0]
    real = cv2.imread(str(REAL_SAMPLE / "train" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
    union = np.zeros(real.shape, np.int32)
    for i, code in enumerate(df["annotation"], start=1):
        union[rle.decode(code, real.shape)] = i
    r = synthetic.image_stats(real, union)
    image, inst = synthetic.make_image("shsy5y", np.random.default_rng(0), *real.shape)
    s = synthetic.image_stats(image, inst.labels)
    assert abs(s["mean"] - r["mean"]) < 1.0  # both ~128
    assert abs(s["bg_mean"] - r["bg_mean"]) < 5
    # Dark cell bodies, brighter halo around them, as in the real image.
    for st in (r, s):
        assert st["cell_mean"] < st["bg_mean"] - 4 and st["ring_mean"] > st["cell_mean"] + 4
    assert 0.5 * r["std"] < s["std"] < 1.5 * r["std"]
    assert 0.15 < s["coverage"] < 0.45
