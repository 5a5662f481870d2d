"""Smoke runs of the benchmark scripts at tiny sizes, so they keep working as the code moves.

No timing is asserted (timings depend on the machine); what is checked is that each script
runs, its correctness checks hold, and its results have the shape ``run_all.py`` reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"
REPO = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import ablation  # noqa: E402
import bench_metric  # noqa: E402
import bench_rle  # noqa: E402
import common  # noqa: E402
import run_all  # noqa: E402

from cellseg.constants import CELL_TYPES  # noqa: E402


# ------------------------------------------------------------------------------ common
def test_common_tables_timing_and_results(tmp_path: Path) -> None:
    import time

    t, out = common.time_call(lambda: time.sleep(0.02) or 42, repeats=3, warmup=1)
    assert out == 42 and len(t.times) == 3 and t.median >= 0.019  # it measures the call
    md = common.markdown_table(["a", "b"], [["x", 1234.5], ["y", None]])
    assert md.splitlines()[0] == "| a | b |" and "1,234" in md and "–" in md
    assert "x" in common.text_table(["a"], [["x"]])
    report = common.make_report("demo", {"n": 1}, {"value": np.float64(1.5)}, ["a note"])
    assert report["machine"]["cpu_count"] >= 1 and "python" in report["versions"]
    jpath, mpath = common.write_results("demo", report, "body", tmp_path)
    assert json.loads(jpath.read_text())["results"]["value"] == 1.5
    assert "a note" in mpath.read_text() and "body" in mpath.read_text()
    assert list(tmp_path.glob(".*tmp*")) == []  # atomic writes leave no temporaries


def test_draw_labels_and_real_counts() -> None:
    rng = np.random.default_rng(0)
    labels = common.draw_labels(rng, (120, 160), 20, 60, (1.0, 2.0))
    assert labels.dtype == np.int32 and labels.max() == 20
    assert set(np.unique(labels)) == set(range(21))
    spec = common.REAL_TYPES["cort"]
    counts = common.real_counts(rng, spec)
    assert counts.size == spec.images
    assert abs(int(counts.sum()) - spec.cells) < 0.02 * spec.cells


# ------------------------------------------------------------------------------ rle / metric
def test_bench_rle_tiny(tmp_path: Path) -> None:
    r = bench_rle.run(fraction=0.01, compare_images=2, seed=0)
    assert r["images"] == 6 and r["rows"] > 100
    assert r["roundtrip_equal"] and r["compare"]["ours_equal_drawn_masks"]
    if r["pycocotools"]:
        assert r["compare"]["coco_equal_drawn_masks"]
    doc = common.make_report("rle", {}, r)
    figures = run_all.key_figures("rle", doc)
    assert figures and not figures[0][0].startswith("(could not")


def test_bench_metric_tiny_agrees_with_stardist_when_installed() -> None:
    r = bench_metric.run(n_images=2, n_cells=25, repeats=1, seed=1, shape=(96, 128))
    assert r["equal"]  # TP per threshold and scores agree (or only ours ran)
    assert r["max_abs_score_difference"] < 1e-12
    figures = run_all.key_figures("metric", common.make_report("metric", {}, r))
    assert not figures[0][0].startswith("(could not")


def test_untie_moves_ious_off_thresholds() -> None:
    truth = np.zeros((10, 10), np.int32)
    truth[0, 0:10] = 1  # 10 pixels
    pred = np.zeros_like(truth)
    pred[0, 0:5] = 1  # IoU exactly 0.5
    pred[0, 5:10] = 2
    assert bench_metric.touches_threshold(truth, pred) == 2
    removed = bench_metric.untie(truth, pred)
    assert removed >= 1 and bench_metric.touches_threshold(truth, pred) == 0


# ------------------------------------------------------------------------------ ablation table
def _fake_variant(output: Path, name: str, score: float) -> None:
    fold = output / name / "fold0"
    fold.mkdir(parents=True)
    metrics = {"val_score": score, "val_body_accuracy": 0.9, "val_body_iou": 0.8,
               **{f"val_score_{t}": score for t in CELL_TYPES}}
    (fold / "result.json").write_text(json.dumps({
        "oof_metrics": metrics, "params": 1000, "train_seconds": 120, "epochs_run": 4,
        "best_epoch": 4, "n_val_images": 6}))
    tuned = {"cell_types": {t: {"oof_score": score + 0.1, "default_score": score,
                                "n_images": n, "n_trials": 3}
                            for t, n in zip(CELL_TYPES, (1, 2, 3))}}
    (output / name / "postprocess.yaml").write_text(yaml.safe_dump(tuned))


def test_ablation_collects_a_table_from_finished_runs(tmp_path: Path) -> None:
    _fake_variant(tmp_path, "ablation_unet", 0.2)
    _fake_variant(tmp_path, "ablation_att_unetpp_ds", 0.3)
    (tmp_path / "ablation_unet" / "postprocess_classical.yaml").write_text(yaml.safe_dump(
        {"cell_types": {"cort": {"oof_score": 0.1, "default_score": 0.05, "n_images": 3}}}))
    r = ablation.collect(["unet", "unetpp_ds", "att_unetpp_ds"], tmp_path, "ablation_", {},
                         {"unet": 12.0})
    rows = {v["variant"]: v for v in r["variants"]}
    assert rows["unet"]["oof_score_tuned"] == pytest.approx(0.3)  # image-weighted mean
    assert rows["unet"]["forward_ms"] == 12.0 and rows["unet"]["params"] == 1000
    assert not rows["unetpp_ds"]["finished"] and rows["unetpp_ds"]["oof_score_tuned"] is None
    assert r["classical"]["oof_score_tuned"] == pytest.approx(0.1)
    headers, table = ablation.table(r)
    assert len(table) == 4 and len(headers) == len(table[0])
    md = common.markdown_table(headers, table)
    assert "Attention UNet++ (DS)" in md and "Classical" in md


def test_ablation_collect_only_writes_results(tmp_path: Path) -> None:
    _fake_variant(tmp_path / "output", "ablation_unet", 0.2)
    out = tmp_path / "results" / "ablation"
    rc = ablation.main(["--collect-only", "--variants", "unet", "--output-dir",
                        str(tmp_path / "output"), "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["results"]["variants"][0]["oof_score_tuned"] == pytest.approx(0.3)
    assert "U-Net" in out.with_suffix(".md").read_text()


# ------------------------------------------------------------------------------ run_all
def test_run_all_summary_survives_missing_and_malformed_results(tmp_path: Path) -> None:
    (tmp_path / "rle.json").write_text(json.dumps({"results": {"unexpected": 1}}))
    results, body = run_all.summarize(["rle", "metric"], {"metric": {"returncode": 1,
                                                                     "seconds": 1.0,
                                                                     "log": "x.log"}},
                                      tmp_path)
    assert results["rle"]["key_figures"][0][0] == "(could not read key figures)"
    assert results["metric"]["key_figures"][0][0] == "(failed)"
    assert "## rle" in body and "## metric" in body


def test_run_all_commands_name_existing_scripts(tmp_path: Path) -> None:
    cmds = run_all.commands(tmp_path)
    assert set(cmds) == set(run_all.EXTRACT)
    for cmd in cmds.values():
        assert (REPO / cmd[1]).is_file()


# ------------------------------------------------------------------------------ TensorFlow
@pytest.mark.slow
def test_bench_model_tiny() -> None:
    import bench_model

    r = bench_model.run([4, 8, 16], height=32, width=32, repeats=1, train_repeats=1,
                        crop=32, variants=["unet", "unetpp_ds"], kuc=False, matmul_n=64)
    rows = {v["variant"]: v for v in r["variants"]}
    assert rows["unetpp_ds"]["params"] > 0 and rows["unet"]["gflops"] > 0
    assert "pruned" not in rows["unet"]  # a plain U-Net cannot be pruned
    (pruned,) = rows["unetpp_ds"]["pruned"]  # depth 2: prune=1 only
    assert pruned["level"] == 1 and pruned["gflops"] < rows["unetpp_ds"]["gflops"]
    figures = run_all.key_figures("model", common.make_report("model", {}, r))
    assert not figures[0][0].startswith("(could not")


@pytest.mark.slow
def test_graph_flops_counts_a_convolution_exactly() -> None:
    import bench_model
    import keras

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Conv2D(4, 3, padding="same")(inp)
    model = keras.Model(inp, out)
    # 2 FLOPs x 3x3 kernel x 1 input channel x 4 outputs x 8x8 positions
    assert bench_model.graph_flops(lambda x: model(x), (1, 8, 8, 1)) == 2 * 9 * 1 * 4 * 64


@pytest.mark.slow
def test_bench_inference_with_random_weights(tmp_path: Path) -> None:
    import bench_inference
    from tiny_data import make_tiny_root

    root = make_tiny_root(tmp_path / "data", n_images=9, shape=(64, 96), n_test=2)
    r = bench_inference.run(tmp_path / "no_experiment", root, n_images=1,
                            config=str(REPO / "configs" / "demo.yaml"),
                            settings=[("mean", ["identity"]), ("prune=2", ["identity"])])
    assert r["random_weights"]
    assert [s["heads"] for s in r["settings"]] == ["mean", "prune=2"]
    assert all(s["images"] == 1 and s["total_s_per_image"] > 0 for s in r["settings"])
    figures = run_all.key_figures("inference", common.make_report("inference", {}, r))
    assert not figures[0][0].startswith("(could not")
