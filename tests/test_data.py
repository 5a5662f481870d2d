import cv2
import numpy as np
import pandas as pd
import pytest

from cellseg.constants import TRAIN_COLUMNS
from cellseg.data import rle
from cellseg.data.data_root import (
    DataError,
    TrainData,
    decode_annotations,
    read_image,
    read_train_csv,
)


def write_root(tmp_path, masks_by_id, cell_type="cort", shape=(20, 30)):
    """A tiny data root in the competition layout."""
    (tmp_path / "train").mkdir()
    rows = []
    h, w = shape
    for k, (image_id, masks) in enumerate(masks_by_id.items()):
        cv2.imwrite(str(tmp_path / "train" / f"{image_id}.png"),
                    np.full(shape, 120 + k, np.uint8))
        for m in masks:
            rows.append({"id": image_id, "annotation": rle.encode(m), "width": w, "height": h,
                         "cell_type": cell_type, "plate_time": "11h30m00s",
                         "sample_date": "2020-09-14", "sample_id": f"{cell_type}[x]_A{k}-1",
                         "elapsed_timedelta": "0 days 11:30:00"})
    pd.DataFrame(rows, columns=list(TRAIN_COLUMNS)).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


def box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_loads_instances_and_images(tmp_path):
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5), box(s, 10, 15, 10, 20)],
                                 "bbb": [box(s, 2, 4, 2, 4)]})
    data = TrainData(root)
    assert data.ids == ["aaa", "bbb"]
    assert data.cell_type("aaa") == "cort" and data.shape("aaa") == (20, 30)
    inst = data.load_instances("aaa")
    assert inst.n_cells == 2 and inst.labels.max() == 2 and not inst.overlap.any()
    assert (inst.labels == 2).sum() == 50
    img = data.load_image("bbb")
    assert img.dtype == np.uint8 and img.shape == s and img[0, 0] == 121
    assert data.images.set_index("id").loc["aaa", "n_cells"] == 2
    data.check_images()


def test_overlap_goes_to_smallest_cell():
    s = (10, 10)
    big = box(s, 0, 6, 0, 6)  # 36 px
    small = box(s, 4, 8, 4, 8)  # 16 px, overlaps big on 2x2
    inst = decode_annotations([rle.encode(big), rle.encode(small)], s)
    assert inst.overlap.sum() == 4
    assert (inst.labels[4:6, 4:6] == 2).all()  # contested pixels belong to the small cell
    assert (inst.labels == 1).sum() == 32 and (inst.labels == 2).sum() == 16
    assert [p.size for p in inst.pixels] == [36, 16]  # full masks kept for the metric


def test_real_sample_loads(real_sample):
    data = TrainData(real_sample)
    assert data.ids == ["0030fd0e6378"]
    inst = data.load_instances("0030fd0e6378")
    assert inst.n_cells == 395
    assert inst.overlap.sum() == 3354  # the real sample's README figure
    sizes = np.array([p.size for p in inst.pixels])
    assert sizes.min() == 46 and np.median(sizes) == 268 and sizes.max() == 757
    img = data.load_image("0030fd0e6378")
    assert img.shape == (520, 704) and img.dtype == np.uint8
    assert 100 < img.mean() < 160


@pytest.mark.parametrize("column, value, message", [
    ("width", "abc", "width must be a positive integer"),
    ("height", "0", "height must be a positive integer"),
    ("cell_type", "neuron", "cell_type must be one of"),
    ("id", "", "empty id"),
    ("annotation", "", "empty annotation"),
])
def test_bad_csv_values_name_the_row(tmp_path, column, value, message):
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5), box(s, 6, 9, 6, 9)]})
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[1, column] = value
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=f"row 3.*{message}"):
        read_train_csv(root / "train.csv")


def test_missing_column(tmp_path):
    (tmp_path / "train.csv").write_text("id,annotation,width\nx,1 2,3\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['height', 'cell_type'\]"):
        read_train_csv(tmp_path / "train.csv")


def test_inconsistent_size_per_image(tmp_path):
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5), box(s, 6, 9, 6, 9)]})
    df = pd.read_csv(root / "train.csv")
    df.loc[1, "width"] = 31
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match="image 'aaa' has 2 different width"):
        read_train_csv(root / "train.csv")


def test_bad_rle_names_file_row_and_id_when_read(tmp_path):
    # Checked when train.csv is read (a DataError, so every CLI reports it), naming the line.
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5)]})
    df = pd.read_csv(root / "train.csv")
    df.loc[0, "annotation"] = "1 5 3 2"
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train\.csv: row 2 \(id 'aaa'\): .*overlaps"):
        TrainData(root)


def test_decode_annotations_names_csv_lines():
    with pytest.raises(DataError, match="train.csv, id aaa, row 7: .*past the image end"):
        decode_annotations(["1 2", "5 100"], (4, 5), where="train.csv, id aaa", lines=[6, 7])


def test_image_size_mismatch_and_missing(tmp_path):
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5)]})
    cv2.imwrite(str(root / "train" / "aaa.png"), np.zeros((21, 30), np.uint8))
    with pytest.raises(DataError, match="aaa.png: image is 30x21.*says 30x20"):
        TrainData(root).load_image("aaa")
    (root / "train" / "aaa.png").unlink()
    with pytest.raises(DataError, match="aaa.png: image file not found"):
        TrainData(root).check_images()


def test_corrupt_and_color_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        read_image(bad)
    color = tmp_path / "color.png"
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 2] = 255
    cv2.imwrite(str(color), img)
    with pytest.raises(DataError, match="grayscale"):
        read_image(color)
    gray3 = tmp_path / "gray3.png"
    cv2.imwrite(str(gray3), np.full((4, 4, 3), 7, np.uint8))
    assert read_image(gray3).shape == (4, 4)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.zeros((4, 4), np.uint16))
    with pytest.raises(DataError, match="8-bit"):
        read_image(deep)


@pytest.mark.parametrize("image_id", ["../../../outside/x", "/tmp/x", "a/b", "..", ".", ".hidden",
                                      "-rf", "a b", "x" * 201, "a\\b"])
def test_unsafe_ids_rejected_when_read(tmp_path, image_id):
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5)], "bbb": [box(s, 0, 5, 0, 5)]})
    df = pd.read_csv(root / "train.csv", dtype=str)
    df.loc[1, "id"] = image_id
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train\.csv: row 3: image id .* is not a safe file name"):
        read_train_csv(root / "train.csv")


@pytest.mark.parametrize("image_id", ["0030fd0e6378", "a_b.c-d", "_1_img", "A" * 200])
def test_safe_ids_accepted(image_id):
    from cellseg.ids import check_image_id, is_safe_id

    assert is_safe_id(image_id) and check_image_id(image_id, "f.csv: row 2") == image_id


def test_empty_and_header_only_train_csv_named(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(DataError, match=r"train\.csv: empty file"):
        read_train_csv(tmp_path / "train.csv")
    (tmp_path / "train.csv").write_text(",".join(TRAIN_COLUMNS) + "\n")
    with pytest.raises(DataError, match=r"train\.csv: no data rows \(header only\)"):
        read_train_csv(tmp_path / "train.csv")


def test_messages_hold_python_values_not_numpy_reprs(tmp_path):
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5)]})
    df = pd.read_csv(root / "train.csv")
    df["width"] = df["width"].astype(float)
    df.loc[0, "width"] = 192.5
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match="got 192.5") as info:
        read_train_csv(root / "train.csv")
    assert "np." not in str(info.value)


def test_duplicated_rows_warn(tmp_path):
    s = (20, 30)
    root = write_root(tmp_path, {"aaa": [box(s, 0, 5, 0, 5), box(s, 6, 9, 6, 9)]})
    df = pd.read_csv(root / "train.csv")
    pd.concat([df, df.iloc[[1]]]).to_csv(root / "train.csv", index=False)
    with pytest.warns(UserWarning, match=r"1 duplicated row\(s\) .* row 4 \(id 'aaa'\)"):
        assert len(read_train_csv(root / "train.csv")) == 3
