"""COCO <-> data root: codecs, a LIVECell-like dataset built here, errors, real round trip."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cellseg.data import coco_masks, rle
from cellseg.data.data_root import TrainData, read_train_csv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from cellseg.commands import convert_coco

REAL_SUBSET = REPO.parent / "shared" / "real_subset"


def _mask_from(indices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], bool)
    flat[indices] = True
    return flat.reshape(shape)


# --------------------------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, counts, text", [
    # 3x3, centre pixel only: column-major index 4 -> runs 4 zeros, 1 one, 4 zeros -> "414".
    ((3, 3), [4, 1, 4], "414"),
    # 10x10, columns 0-3 set: [0, 40, 60]. 40 = 0b1_01000: low group 8 with the "more" bit
    # (8 + 32 + 48 = 'X'), then 1 ('1'); 60: low group 28 has bit 4 set, so "more" although
    # 60 >> 5 = 1 ('l' = 28 + 32 + 48), then '1'.
    ((10, 10), [0, 40, 60], "0X1l1"),
    # 4x4: [1, 5, 2, 1, 7]; the 4th count is stored as 1 - 5 = -4 -> group 28 ('L'), the 5th
    # as 7 - 2 = 5 ('5'). pycocotools 2.0.11 gives the same three strings.
    ((4, 4), [1, 5, 2, 1, 7], "152L5"),
])
def test_compressed_rle_hand_known(shape, counts, text):
    assert coco_masks.encode_rle_string(counts) == text
    assert coco_masks.decode_rle_string(text).tolist() == counts
    idx = coco_masks.counts_to_indices(counts, shape)
    assert coco_masks.indices_to_counts(idx, shape) == counts


def test_rle_codecs_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        idx = np.flatnonzero(mask.ravel())
        counts = coco_masks.indices_to_counts(idx, (h, w))
        assert sum(counts) == h * w
        # Column-major: the counts agree with a Fortran-order ravel.
        col = mask.ravel(order="F")
        assert col[:counts[0]].sum() == 0
        text = coco_masks.encode_rle_string(counts)
        back = coco_masks.counts_to_indices(coco_masks.decode_rle_string(text), (h, w))
        assert np.array_equal(back, idx)
        assert coco_masks.indices_to_rle(idx) == rle.encode(mask)


def test_matches_pycocotools_when_installed():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        mask = rng.random((h, w)) < rng.random()
        ref = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        idx = np.flatnonzero(mask.ravel())
        assert coco_masks.encode_rle_string(coco_masks.indices_to_counts(idx, (h, w))) == ref
    poly = [2.5, 1.5, 7.5, 1.5, 7.5, 6.5, 2.5, 6.5]
    ref = mask_api.decode(mask_api.merge(mask_api.frPyObjects([poly], 12, 12))).astype(bool)
    assert np.array_equal(_mask_from(coco_masks.polygon_indices([poly], (12, 12)), (12, 12)), ref)


def test_polygon_rasterisation():
    # Integer square: pixels 0..9 x 0..9 exactly.
    idx = coco_masks.polygon_indices([[0, 0, 10, 0, 10, 10, 0, 10]], (20, 20))
    expect = np.zeros((20, 20), bool)
    expect[:10, :10] = True
    assert np.array_equal(_mask_from(idx, (20, 20)), expect)
    # Two polygons of one cell are united; one leaving the image is clipped.
    idx = coco_masks.polygon_indices([[0, 0, 2, 0, 2, 2, 0, 2], [8, 8, 30, 8, 30, 30, 8, 30]],
                               (10, 12))
    m = _mask_from(idx, (10, 12))
    assert m[:2, :2].all() and m[8:, 8:].all() and m.sum() == 4 + 2 * 4
    # A bare polygon (flat list) is accepted.
    assert coco_masks.segmentation_indices([0, 0, 3, 0, 3, 3, 0, 3], (5, 5)).size == 9


# --------------------------------------------------------------------------------------------
# A LIVECell-like dataset: nested folders, TIFF + PNG, odd sizes, all three encodings
# --------------------------------------------------------------------------------------------


def _write_dataset(tmp: Path, annotations_as_dict: bool = True) -> tuple[Path, Path, dict]:
    import tifffile

    images = tmp / "images"
    (images / "SHSY5Y").mkdir(parents=True)
    (images / "A172").mkdir(parents=True)
    rng = np.random.default_rng(0)
    # 16-bit TIFF, 37 wide x 23 high.
    im16 = (rng.integers(0, 4000, (23, 37)) + 1000).astype(np.uint16)
    tifffile.imwrite(images / "SHSY5Y" / "SHSY5Y_Phase_A10_1_00d04h00m_1.tif", im16)
    # 8-bit PNG 50 x 31, name with spaces and a semicolon (sanitised into the id).
    im8 = rng.integers(0, 255, (31, 50), dtype=np.uint8)
    cv2.imwrite(str(images / "A172" / "A172_Phase x;1.png"), im8)
    # An image with no annotation, and an RGB image whose channels are equal.
    cv2.imwrite(str(images / "SHSY5Y" / "SHSY5Y_empty.png"), im8[:10, :10])

    sq = np.zeros((31, 50), bool)
    sq[5:15, 20:30] = True
    overlap = np.zeros((31, 50), bool)
    overlap[10:20, 25:35] = True  # overlaps sq on a 5x5 patch
    sq_counts = coco_masks.indices_to_counts(np.flatnonzero(sq.ravel()), (31, 50))
    ov_counts = coco_masks.indices_to_counts(np.flatnonzero(overlap.ravel()), (31, 50))
    anns = [
        {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},                          # polygon
        {"id": 2, "image_id": 10, "category_id": 1, "iscrowd": 0,
         "segmentation": [[30, 10, 36, 10, 33, 20]]},                            # triangle
        {"id": 3, "image_id": 10, "category_id": 1, "iscrowd": 0,
         "segmentation": [[0.1, 0.1, 0.2, 0.1, 0.2, 0.2]]},                      # empty: dropped
        {"id": 4, "image_id": 11, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [31, 50], "counts": sq_counts}},              # uncompressed
        {"id": 5, "image_id": 11, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [31, 50], "counts": coco_masks.encode_rle_string(ov_counts)}},
        {"id": 6, "image_id": 11, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [31, 50], "counts": [0, 31 * 50]}},          # crowd: dropped
    ]
    doc = {
        "images": [
            {"id": 10, "file_name": "SHSY5Y_Phase_A10_1_00d04h00m_1.tif", "width": 37,
             "height": 23},
            {"id": 11, "file_name": "A172_Phase x;1.png", "width": 50, "height": 31},
            {"id": 12, "file_name": "SHSY5Y_empty.png", "width": 10, "height": 10},
        ],
        # LIVECell stores annotations as a dict keyed by id.
        "annotations": {str(a["id"]): a for a in anns} if annotations_as_dict else anns,
        "categories": [{"id": 1, "name": "cell"}],
    }
    path = tmp / "ann.json"
    path.write_text(json.dumps(doc))
    return images, path, {"sq": sq, "overlap": overlap, "im8": im8, "im16": im16}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = convert_coco.main([*map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_livecell_like(tmp_path, capsys):
    images, ann, truth = _write_dataset(tmp_path)
    out = tmp_path / "root"
    rc, stdout, err = _run(capsys, "--images", images, "--annotations", ann, "--out", out,
                           "--cell-type-from-filename", "--map", "A172=astro")
    assert rc == 0, err
    data = TrainData(out)
    data.check_images()
    assert set(data.ids) == {"SHSY5Y_Phase_A10_1_00d04h00m_1", "A172_Phase_x_1"}
    sh, a172 = "SHSY5Y_Phase_A10_1_00d04h00m_1", "A172_Phase_x_1"
    assert data.cell_type(sh) == "shsy5y" and data.cell_type(a172) == "astro"
    assert data.shape(sh) == (23, 37) and data.shape(a172) == (50, 31)[::-1]
    # 16-bit image scaled to 8 bits by percentiles; the PNG keeps the 8-bit one exactly.
    im = data.load_image(sh)
    assert im.dtype == np.uint8 and im.min() == 0 and im.max() == 255
    assert np.corrcoef(im.ravel(), truth["im16"].ravel())[0, 1] > 0.99
    assert np.array_equal(data.load_image(a172), truth["im8"])
    # Polygon: pixel centres inside [2, 12) x [3, 8) -> 10 x 5 pixels; the empty one dropped.
    inst = data.load_instances(sh)
    assert inst.n_cells == 2
    first = _mask_from(inst.pixels[0], (23, 37))
    assert first[3:8, 2:12].all() and first.sum() == 50
    # RLE cells, uncompressed and compressed, overlapping: each keeps its own full mask.
    inst = data.load_instances(a172)
    assert inst.n_cells == 2
    assert np.array_equal(_mask_from(inst.pixels[0], (31, 50)), truth["sq"])
    assert np.array_equal(_mask_from(inst.pixels[1], (31, 50)), truth["overlap"])
    assert inst.overlap.sum() == 25
    table = read_train_csv(out / "train.csv")
    assert (table["sample_id"] == table["id"]).all()
    source = json.loads((out / "source.json").read_text())
    assert source["counts"]["skipped_crowd_annotations"] == 1
    assert source["counts"]["dropped_empty_masks"] == 1
    assert source["counts"]["skipped_images_without_annotations"] == 1
    assert source["counts"]["rescaled_to_uint8"] == 1
    assert source["cell_type_mode"] == "filename" and source["command"][0].endswith(".py")
    assert "--map" in source["command"]
    assert "2 images" in stdout
    # Rerun without --overwrite refuses; with it, the same root comes out.
    rc, _, err = _run(capsys, "--images", images, "--annotations", ann, "--out", out,
                      "--cell-type", "cort")
    assert rc == 2 and "--overwrite" in err
    rc, _, err = _run(capsys, "--images", images, "--annotations", ann, "--out", out,
                      "--cell-type", "cort", "--overwrite", "--keep-crowd")
    assert rc == 0, err
    t2 = read_train_csv(out / "train.csv")
    assert set(t2["cell_type"]) == {"cort"} and len(t2) == len(table) + 1


def test_unmapped_cell_line_is_an_error_or_skipped(tmp_path, capsys):
    images, ann, _ = _write_dataset(tmp_path, annotations_as_dict=False)
    out = tmp_path / "root"
    rc, _, err = _run(capsys, "--images", images, "--annotations", ann, "--out", out,
                      "--cell-type-from-filename")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:")
    assert "A172" in lines[0] and "--map" in lines[0]
    assert not out.exists()
    rc, _, err = _run(capsys, "--images", images, "--annotations", ann, "--out", out,
                      "--cell-type-from-filename", "--skip-unmapped")
    assert rc == 0, err
    assert TrainData(out).ids == ["SHSY5Y_Phase_A10_1_00d04h00m_1"]
    source = json.loads((out / "source.json").read_text())
    assert source["unmapped_skipped"] == {"A172": 1}
    rc, _, err = _run(capsys, "--images", images, "--annotations", ann, "--out", out,
                      "--cell-type-from-filename", "--map", "A172=neuron", "--overwrite")
    assert rc == 2 and "neuron" in err


def _broken(doc: dict, which: str) -> dict:
    anns = list(doc["annotations"].values())
    if which == "size":
        doc["images"][1]["width"] = 51
    elif which == "polygon":
        anns[0]["segmentation"] = [[1, 2, 3, 4, 5]]
    elif which == "rle_sum":
        anns[3]["segmentation"]["counts"] = anns[3]["segmentation"]["counts"][:-1]
    elif which == "rle_size":
        anns[4]["segmentation"]["size"] = [30, 50]
    elif which == "rle_char":
        anns[4]["segmentation"]["counts"] = "0X1~"
    elif which == "rle_huge":
        anns[3]["segmentation"]["counts"] = [2**70, 1]
    elif which == "image_id":
        anns[1]["image_id"] = 99
    elif which == "file":
        doc["images"][0]["file_name"] = "../../etc/passwd"
    doc["annotations"] = anns
    return doc


@pytest.mark.parametrize("which, named", [
    ("size", "image id 11"),
    ("polygon", "annotation id 1 "),
    ("rle_sum", "annotation id 4 "),
    ("rle_size", "annotation id 5 "),
    ("rle_char", "annotation id 5 "),
    ("rle_huge", "annotation id 4 "),
    ("image_id", "annotation id 2 "),
    ("file", "image id 10"),
])
def test_bad_input_exit_2_one_error_line(tmp_path, capsys, which, named):
    images, ann, _ = _write_dataset(tmp_path)
    doc = _broken(json.loads(ann.read_text()), which)
    ann.write_text(json.dumps(doc))
    out = tmp_path / "root"
    rc, _, err = _run(capsys, "--images", images, "--annotations", ann, "--out", out,
                      "--cell-type", "shsy5y")
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert named in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (out / "train.csv").exists()


def test_input_inside_output_is_refused(tmp_path, capsys):
    images, ann, _ = _write_dataset(tmp_path)
    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    shutil.copytree(images, root / "train" / "images")
    rc, _, err = _run(capsys, "--images", root / "train" / "images", "--annotations", ann,
                      "--out", root, "--cell-type", "cort", "--overwrite")
    assert rc == 2 and "inside the output" in err
    assert (root / "train" / "images").is_dir()


# --------------------------------------------------------------------------------------------
# Round trip: data root -> COCO -> data root
# --------------------------------------------------------------------------------------------


def _round_trip(tmp_path: Path, capsys, root: Path, uncompressed: bool = False) -> Path:
    ann = tmp_path / "coco.json"
    rc, _, err = _run(capsys, "--to-coco", root, "--annotations", ann,
                      *(["--uncompressed"] if uncompressed else []))
    assert rc == 0, err
    back = tmp_path / "back"
    rc, _, err = _run(capsys, "--images", root / "train", "--annotations", ann, "--out", back,
                      "--cell-type-from-category")
    assert rc == 0, err
    return back


def _assert_same_root(a: Path, b: Path) -> None:
    ta, tb = read_train_csv(a / "train.csv"), read_train_csv(b / "train.csv")
    pd.testing.assert_frame_equal(ta, tb)
    da, db = TrainData(a), TrainData(b)
    for image_id in da.ids:
        assert np.array_equal(da.load_image(image_id), db.load_image(image_id))


@pytest.mark.parametrize("uncompressed", [False, True])
def test_round_trip_synthetic(tmp_path, capsys, uncompressed):
    from tiny_data import make_tiny_root

    root = make_tiny_root(tmp_path / "tiny", n_images=6, shape=(41, 57), n_test=0, folds=2)
    back = _round_trip(tmp_path, capsys, root, uncompressed)
    _assert_same_root(root, back)


def test_round_trip_real_subset(tmp_path, capsys):
    if not (REAL_SUBSET / "train.csv").is_file():
        pytest.skip(f"real subset not present at {REAL_SUBSET}")
    full = read_train_csv(REAL_SUBSET / "train.csv")
    # A few images, one per cell type, kept in a temporary root (never in the repository).
    picks = full.groupby("cell_type")["id"].first().tolist()
    root = tmp_path / "real"
    (root / "train").mkdir(parents=True)
    raw = pd.read_csv(REAL_SUBSET / "train.csv", dtype=str, keep_default_na=False)
    raw = raw[raw["id"].isin(picks)]
    raw.to_csv(root / "train.csv", index=False, lineterminator="\n")
    for image_id in picks:
        shutil.copy(REAL_SUBSET / "train" / f"{image_id}.png", root / "train")
    back = _round_trip(tmp_path, capsys, root)
    assert (back / "train.csv").read_bytes() == (root / "train.csv").read_bytes()
    _assert_same_root(root, back)
    # Overlapping real cells survive: the same pixel sets, overlaps included.
    da, db = TrainData(root), TrainData(back)
    for image_id in picks:
        ia, ib = da.load_instances(image_id), db.load_instances(image_id)
        assert all(np.array_equal(p, q) for p, q in zip(ia.pixels, ib.pixels))
        assert np.array_equal(ia.overlap, ib.overlap)
