import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cellseg.data.data_root import DataError
from cellseg.data.folds import check_no_leakage, load_folds, make_folds

REPO = Path(__file__).resolve().parents[1]


def images_table(n_samples=24, per_sample=4):
    rows = []
    types = ["shsy5y", "astro", "cort"]
    for s in range(n_samples):
        for k in range(per_sample):
            rows.append({"id": f"{s:03d}{k}", "cell_type": types[s % 3], "sample_id": f"s{s}"})
    return pd.DataFrame(rows)


def test_grouped_stratified_and_deterministic():
    imgs = images_table()
    folds = make_folds(imgs, n_folds=4, seed=1)
    assert len(folds) == len(imgs) and set(folds.fold) == {0, 1, 2, 3}
    assert (folds.groupby("sample_id").fold.nunique() == 1).all()
    # Each fold gets every cell type.
    assert (folds.groupby("fold").cell_type.nunique() == 3).all()
    pd.testing.assert_frame_equal(folds, make_folds(imgs, n_folds=4, seed=1))
    assert not folds.fold.equals(make_folds(imgs, n_folds=4, seed=2).fold)


def test_leakage_detected():
    folds = make_folds(images_table(), n_folds=3, seed=0)
    folds.loc[0, "fold"] = (folds.loc[0, "fold"] + 1) % 3
    with pytest.raises(DataError, match="appears in 2 folds"):
        check_no_leakage(folds)


def test_too_few_groups():
    with pytest.raises(DataError, match="cannot fill 5 folds"):
        make_folds(images_table(n_samples=3), n_folds=5)


def test_load_folds_missing_ids(tmp_path):
    folds = make_folds(images_table(), n_folds=3)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(DataError, match="have no fold"):
        load_folds(tmp_path / "folds.csv", ids=list(folds.id) + ["zzz"])
    with pytest.raises(DataError, match="make_folds.py"):
        load_folds(tmp_path / "nope.csv")


def test_cli_on_real_sample_layout_errors_cleanly(real_sample, tmp_path):
    # One image = one sample: cannot make 5 folds; the CLI says why, no traceback.
    proc = subprocess.run([sys.executable, str(REPO / "src" / "make_folds.py"), "--data-dir",
                           str(real_sample), "--out", str(tmp_path / "f.csv")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "cannot fill 5 folds" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("id,fold\n", "no data rows"),
    ("id,fold\naaa,0\nbbb,x\n", r"row 3 \(id 'bbb'\): fold must be an integer >= 0, got 'x'"),
    ("id,fold\naaa,0\nbbb,1.5\n", "row 3 .*got '1.5'"),
    ("id,fold\naaa,0\nbbb,-1\n", "row 3 .*got '-1'"),
    ("id,fold\naaa,0\n../x,1\n", r"row 3: image id '../x' is not a safe file name"),
    ("id,fold\naaa,0\naaa,1\n", "row 2: image id 'aaa' is in 2 folds"),
])
def test_load_folds_bad_content_named(tmp_path, text, message):
    (tmp_path / "folds.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_folds(tmp_path / "folds.csv")


def test_make_folds_without_images_says_what_is_expected():
    with pytest.raises(DataError, match="no images") as info:
        make_folds(images_table().iloc[:0], n_folds=3)
    assert "--n-folds <=" not in str(info.value)
