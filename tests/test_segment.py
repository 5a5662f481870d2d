"""segment.py: any images, any size, tiles that agree with the whole image, outputs that
Fiji / napari / QuPath read, failures that name the file, shards that split the work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from cellseg.data.images import read_image_any
from cellseg.exceptions import ImageReadError, SegmentError
from cellseg.infer import segment_images as seg
from cellseg.infer import segment_outputs, tiling

REPO = Path(__file__).resolve().parents[1]


def blob_model():
    """A stand-in for a trained network on synthetic cells (dark bodies): body = sigmoid of
    the negated local mean at two scales, one of them through 4x average pooling and
    upsampling, so, like a U-Net, it sees context and is shift-equivariant only by multiples
    of its down-sampling (what tile alignment must respect). Stock Keras layers, fixed
    weights: it saves and reloads in safe mode like a real model and gives the same cells on
    every run, which a model trained for seconds on 2 cores would not."""
    import keras

    inp = keras.Input((None, None, 1), name="image")
    fine = keras.layers.Conv2D(1, 5, padding="same", use_bias=False, name="fine")
    coarse_conv = keras.layers.Conv2D(1, 3, padding="same", use_bias=False, name="coarse")
    up = keras.layers.Conv2DTranspose(1, 4, strides=4, use_bias=False, name="up")
    coarse = up(coarse_conv(keras.layers.AveragePooling2D(4)(inp)))
    feats = keras.layers.Concatenate()([fine(inp), coarse])
    seg_layer = keras.layers.Conv2D(2, 1, activation="sigmoid", name="seg1")
    ct_layer = keras.layers.Dense(3, activation="softmax", name="cell_type")
    model = keras.Model(inp, {"seg1": seg_layer(feats), "cell_type": ct_layer(
        keras.layers.GlobalAveragePooling2D()(inp))}, name="blobs")
    fine.set_weights([np.full((5, 5, 1, 1), 1 / 25, np.float32)])
    coarse_conv.set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32)])
    up.set_weights([np.ones((4, 4, 1, 1), np.float32)])  # nearest-neighbour upsampling
    seg_layer.set_weights([np.array([[[[-4.0, 0.0], [-2.0, 0.0]]]], np.float32),
                           np.array([-2.4, -10.0], np.float32)])
    ct_layer.set_weights([np.zeros((1, 3), np.float32), np.array([0, 0, 5.0], np.float32)])
    return model


def make_experiment(root: Path) -> Path:
    """``root/blobs.yaml`` -> experiment ``root/output/blobs`` (one fold of
    :func:`blob_model`, tuned cort parameters) with a data root holding a train.csv."""
    from tiny_data import make_tiny_root

    from cellseg.config import load_config, save_config

    data = make_tiny_root(root / "data", n_images=9, n_test=0)
    cfg_path = root / "blobs.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "blobs", "output_dir": str(root / "output"), "data": {"root": str(data)},
        "infer": {"tta": ["identity"], "batch_size": 2}}))
    fold = root / "output" / "blobs" / "fold0"
    fold.mkdir(parents=True)
    blob_model().save(fold / "best.keras")
    save_config(load_config(cfg_path), fold / "config.yaml")
    (fold / "result.json").write_text("{}")
    (root / "output" / "blobs" / "postprocess.yaml").write_text(yaml.safe_dump({
        "method": "deep", "cell_types": {t: {"params": {
            "seed_threshold": 0.7, "mask_threshold": 0.5, "min_seed_area": 4, "min_area": 8,
            "keep_unseeded": False}} for t in ("shsy5y", "astro", "cort")}}))
    return cfg_path


def synthetic_image(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 synthetic cort image (cells at half the training scale) and its labels."""
    from cellseg.data.synthetic import make_image

    img, inst = make_image("cort", np.random.default_rng(seed), height, width, scale=0.5)
    return img, inst.labels


@pytest.fixture(scope="module")
def exp(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("segment")
    cfg = make_experiment(root)
    images = root / "images"
    images.mkdir()
    img, _ = synthetic_image(200, 264, seed=1)
    cv2.imwrite(str(images / "gray.png"), img)
    cv2.imwrite(str(images / "rgb.png"), np.dstack([img, img, img]))
    cv2.imwrite(str(images / "deep.png"), img.astype(np.uint16) * 257)
    return {"root": root, "config": cfg, "images": images}


@pytest.fixture(scope="module")
def ensemble(exp):
    from cellseg.experiment import resolve_config
    from cellseg.infer.ensemble import FoldEnsemble

    cfg, exp_dir, _ = resolve_config(exp["config"])
    return FoldEnsemble.load(cfg, exp_dir)


def run_cli(exp: dict, *args: str) -> int:
    from cellseg.commands import segment

    return segment.main([*args, "--config", str(exp["config"]), "--no-progress"])


# ------------------------------------------------------------------------------- pure parts
def test_tile_spans_cover_align_and_keep_the_overlap():
    for length in (100, 777, 1025, 2000, 3000, 8000):
        for tile, overlap in ((1024, 192), (512, 128), (256, 64)):
            spans = tiling.tile_spans(length, tile, overlap)
            assert spans[0].start == 0 and spans[-1].stop == length
            assert spans[0].core_lo == 0 and spans[-1].core_hi == length
            for a, b in zip(spans, spans[1:]):
                assert b.start % 32 == 0 and a.stop - b.start >= overlap
                assert a.core_hi == b.core_lo
                assert b.core_lo - b.start >= overlap // 2 and a.stop - a.core_hi >= overlap // 2
            assert max(s.stop - s.start for s in spans) < tile + 32
    assert tiling.tile_spans(3000, 0, 192) == [tiling.Span(0, 3000, 0, 3000)]


def test_inputs_names_and_shards(tmp_path):
    for rel in ("a/x.png", "b/x.tif", "a/y.jpg", "a/y.png", "a/z.tiff", "a/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files = seg.collect_inputs([tmp_path / "a", str(tmp_path / "b" / "*.tif"),
                                tmp_path / "a" / "z.tiff"])
    assert [p.name for p in files] == ["x.png", "y.jpg", "y.png", "z.tiff", "x.tif"]
    names = seg.unique_output_stems(files)
    assert sorted(names.values()) == ["a__x", "a__y_jpg", "a__y_png", "b__x", "z"]
    parts = [seg.shard(files, k, 3) for k in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(files)  # cover
    assert sum(len(part) for part in parts) == len(files)  # disjoint
    assert seg.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(SegmentError, match="--shard"):
            seg.parse_shard(bad)
    with pytest.raises(SegmentError, match="no such file"):
        seg.collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(SegmentError, match="matches no image"):
        seg.collect_inputs([str(tmp_path / "*.bmp")])


def test_reading_bit_depths_and_channels(tmp_path):
    import tifffile

    img, _ = synthetic_image(64, 80)
    tifffile.imwrite(tmp_path / "cyx.tif", np.stack([img, 255 - img]).astype(np.uint16))
    assert read_image_any(tmp_path / "cyx.tif", channel=1).tolist() == (255 - img).tolist()
    with pytest.raises(ImageReadError, match=r"cyx.tif: 2 channels \(or planes\); choose one"):
        read_image_any(tmp_path / "cyx.tif")
    with pytest.raises(ImageReadError, match=r"--channel 5 out of range"):
        read_image_any(tmp_path / "cyx.tif", channel=5)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([img, img, img]))
    assert np.array_equal(read_image_any(tmp_path / "rgb.png"), img)
    cv2.imwrite(str(tmp_path / "d16.png"), img.astype(np.uint16) * 257)
    assert read_image_any(tmp_path / "d16.png").dtype == np.uint16
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageReadError, match="bad.tif"):
        read_image_any(tmp_path / "bad.tif")


def test_labels_back_to_the_original_size():
    small = np.array([[1, 2], [3, 0]], np.int32)
    assert segment_outputs.labels_to_shape(small, (4, 4)).tolist() == [
        [1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]]
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:20] = 1
    labels[20:30, 30:55] = 2
    up = segment_outputs.labels_to_shape(labels, (80, 120))
    assert np.array_equal(segment_outputs.labels_to_shape(up, (40, 60)), labels)


@pytest.mark.parametrize("cell_type", ["shsy5y", "cort", "astro"])
@pytest.mark.parametrize("scale", [0.75, 1.4, 1.7])
def test_scale_round_trip_keeps_every_cell(cell_type, scale):
    """Cells of real size (synthetic 704 x 520 images) resized by the factors a per-type scale
    uses, then mapped back (``scaled_shape`` + ``labels_to_shape``, as ``segment.py --scale``
    does): the labels come back at the input size. Enlarging is lossless (every cell's IoU
    with its twin is 1); shrinking by 0.75 costs outline precision (measured: mean IoU 0.90 /
    0.93 / 0.93 for shsy5y / cort / astro, worst cells 0.73-0.85), so every cell stays above
    0.7 and their mean above 0.9."""
    from cellseg.data.synthetic import make_image

    _, inst = make_image(cell_type, np.random.default_rng(1), 520, 704)
    labels = inst.labels
    small = segment_outputs.labels_to_shape(labels, seg.scaled_shape(labels.shape, scale))
    back = segment_outputs.labels_to_shape(small, labels.shape)
    assert back.shape == labels.shape
    ids = np.unique(labels)[1:]
    n = int(labels.max()) + 1
    areas = np.bincount(labels.ravel(), minlength=n)
    inter = np.bincount(labels[labels == back], minlength=n)
    iou = inter / np.maximum(areas + np.bincount(back.ravel(), minlength=n) - inter, 1)
    big = ids[areas[ids] >= 60]  # a cell of a few pixels cannot survive 0.75x at 0.7 IoU
    assert big.size > 10
    if scale > 1:
        assert iou[ids].min() == 1.0, (cell_type, scale, float(iou[ids].min()))
    else:
        assert iou[big].min() > 0.7 and iou[big].mean() > 0.9, (cell_type, scale,
                                                                float(iou[big].min()))


# ------------------------------------------------------------------------------- the model
def test_tiled_big_16bit_tiff_equals_whole_image(ensemble, tmp_path):
    """2,000 x 3,000 16-bit TIFF: tiles of 512 (24 of them) give the cells of one whole-image
    pass, and cells lying across tile edges come out whole."""
    import tifffile

    from cellseg.metrics.score import image_score

    img8, _ = synthetic_image(2000, 3000, seed=3)
    img = img8.astype(np.uint16) * 200 + 1000
    tifffile.imwrite(tmp_path / "big.tif", img)
    image = read_image_any(tmp_path / "big.tif")
    assert image.dtype == np.uint16 and image.shape == (2000, 3000)
    whole = seg.segment_array(ensemble, image, tile=0)
    tiled = seg.segment_array(ensemble, image, tile=512, overlap=128)
    assert whole.n_tiles == 1 and tiled.n_tiles >= 20
    assert whole.n_cells > 300 and tiled.cut_cells == 0
    score = image_score(whole.labels, tiled.labels)
    assert score >= 0.95, score
    assert 20 < np.median(np.bincount(whole.labels.ravel())[1:]) < 400  # cell-sized

    # Every whole-image cell crossing an inner tile edge has its twin in the tiled result.
    rows = tiling.tile_spans(2000, 512, 128)
    cols = tiling.tile_spans(3000, 512, 128)
    a, b = whole.labels.astype(np.int64), tiled.labels.astype(np.int64)
    inter = np.bincount(a.ravel() * (b.max() + 1) + b.ravel(),
                        minlength=(a.max() + 1) * (b.max() + 1)).reshape(a.max() + 1, -1)
    iou = inter / (inter.sum(1)[:, None] + inter.sum(0)[None] - inter)
    crossing = set()
    for s in rows[1:]:
        crossing |= set(np.unique(a[s.start - 1:s.start + 1][:, :].ravel()))
        crossing |= set(np.unique(a[s.core_lo - 1:s.core_lo + 1].ravel()))
    for s in cols[1:]:
        crossing |= set(np.unique(a[:, s.start - 1:s.start + 1].ravel()))
        crossing |= set(np.unique(a[:, s.core_lo - 1:s.core_lo + 1].ravel()))
    crossing.discard(0)
    assert len(crossing) > 20
    best = iou[1:, 1:].max(axis=1)
    # (not exactly 1: watershed ties on equal scores are broken in raster order, which a tile
    # sees from another origin; a cut cell would be near 0.5)
    assert all(best[i - 1] > 0.95 for i in crossing), sorted(best[i - 1] for i in crossing)[:5]


def test_scale_returns_labels_at_the_input_size(ensemble):
    """An image shown at twice the training scale (every pixel 2 x 2) with --scale 0.5 gives
    exactly the cells of the original, mapped back to the large size."""
    img, _ = synthetic_image(240, 320, seed=4)
    big = cv2.resize(img, (640, 480), interpolation=cv2.INTER_NEAREST)
    direct = seg.segment_array(ensemble, img, tile=0)
    scaled = seg.segment_array(ensemble, big, scale=0.5, tile=0)
    assert scaled.labels.shape == (480, 640) and scaled.model_shape == (240, 320)
    assert direct.n_cells > 10 and scaled.n_cells == direct.n_cells
    assert np.array_equal(scaled.labels, segment_outputs.labels_to_shape(direct.labels, (480, 640)))


def test_cli_outputs_open_in_the_viewers(exp, tmp_path):
    import roifile
    import tifffile

    out = tmp_path / "out"
    assert run_cli(exp, str(exp["images"]), "--out", str(out), "--roi", "--tile", "0") == 0
    gray = tifffile.imread(out / "gray_labels.tif")
    assert gray.dtype == np.uint16 and gray.shape == (200, 264) and gray.max() > 5
    # RGB (luminance) and 16-bit copies of one image give its cells exactly.
    assert np.array_equal(tifffile.imread(out / "rgb_labels.tif"), gray)
    assert np.array_equal(tifffile.imread(out / "deep_labels.tif"), gray)
    cells = pd.read_csv(out / "gray_cells.csv")
    assert list(cells.columns) == list(segment_outputs.CSV_COLUMNS)
    assert cells["id"].tolist() == list(range(1, int(gray.max()) + 1))
    assert (cells["area"] == np.bincount(gray.ravel())[1:]).all()
    assert set(cells["cell_type"]) == {"cort"} and cells["confidence"].between(0, 1).all()
    rois = roifile.roiread(out / "gray_rois.zip")
    assert len(rois) == len(cells) and rois[0].name == "000001"
    for roi, (_, row) in zip(rois[:10], cells.iterrows()):
        x, y = roi.coordinates().mean(axis=0)
        assert row.bbox_min_x - 1 <= x <= row.bbox_max_x and row.bbox_min_y - 1 <= y \
            <= row.bbox_max_y
    assert cv2.imread(str(out / "gray_overlay.png")).shape[:2] == (200, 2 * 264 + 4)
    summary = pd.read_csv(out / "segment_summary.csv")
    assert set(summary["status"]) == {"done"}

    # A re-run skips finished images; --overwrite redoes them.
    before = (out / "gray_labels.tif").stat().st_mtime_ns
    assert run_cli(exp, str(exp["images"]), "--out", str(out), "--roi", "--tile", "0") == 0
    assert set(pd.read_csv(out / "segment_summary.csv")["status"]) == {"skipped"}
    assert (out / "gray_labels.tif").stat().st_mtime_ns == before
    (out / "rgb_overlay.png").unlink()  # an unfinished image is redone
    assert run_cli(exp, str(exp["images"]), "--out", str(out), "--roi", "--tile", "0") == 0
    status = pd.read_csv(out / "segment_summary.csv").set_index("name")["status"]
    assert status.to_dict() == {"deep": "skipped", "gray": "skipped", "rgb": "done"}


def test_corrupt_file_is_named_and_the_others_are_done(exp, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        (folder / name).write_bytes((exp["images"] / "gray.png").read_bytes())
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "d.tif").write_bytes(b"II*\x00 not a tiff")
    out = tmp_path / "out"
    assert run_cli(exp, str(folder), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"error: {folder / 'b.png'}" in err and f"error: {folder / 'd.tif'}" in err
    assert (out / "a_labels.tif").is_file() and (out / "c_labels.tif").is_file()
    assert not (out / "b_labels.tif").exists()


def test_shards_split_the_outputs(exp, tmp_path):
    out = tmp_path / "out"
    for k in range(2):
        assert run_cli(exp, str(exp["images"] / "*.png"), "--out", str(out),
                       "--shard", f"{k}/2", "--tile", "0") == 0
    parts = [set(pd.read_csv(out / f"segment_summary_shard{k}of2.csv")["name"])
             for k in range(2)]
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == {"deep", "gray", "rgb"}
    assert len(list(out.glob("*_labels.tif"))) == 3


def test_cell_diameter_uses_the_training_median(exp, tmp_path, capsys):
    from cellseg.config import load_config

    ref = seg.reference_diameter(load_config(exp["config"]).data.root)
    assert 5 < ref < 20  # tiny_data disks of radius 5-9
    out = tmp_path / "out"
    assert run_cli(exp, str(exp["images"] / "gray.png"), "--out", str(out),
                   "--cell-diameter", str(2 * ref), "--tile", "0") == 0
    assert "scale 0.5 = training median" in capsys.readouterr().out
    assert read_image_any(out / "gray_labels.tif").shape == (200, 264)


@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2"], "--shard"),
    (["--tile", "256", "--tile-overlap", "300"], "--tile-overlap"),
    (["--scale", "0"], "--scale"),
    (["--scale", "0.5", "--cell-diameter", "9"], "not allowed with"),
    (["--channel", "x"], "--channel"),
])
def test_bad_arguments_one_error_line_exit_2(exp, tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "segment.py"), str(exp["images"]), "--out",
         str(tmp_path / "o"), "--config", str(exp["config"]), *args],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_missing_input_exit_2(exp, tmp_path, capsys):
    assert run_cli(exp, str(tmp_path / "nothing.tif"), "--out", str(tmp_path / "o")) == 2
    assert "nothing.tif: no such file" in capsys.readouterr().err
