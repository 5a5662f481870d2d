"""export.py --bioimageio: a bioimage.io model package that the official validator
(``bioimageio.core``'s ``test_model``, i.e. ``bioimageio test``) passes, and fails once broken."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow  # export + two validator runs (ONNX and SavedModel each): ~1 min

pytest.importorskip("bioimageio.core")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> dict:
    """Two folds of the tiny Attention UNet++ of tests/test_export.py, exported through the
    CLI with --bioimageio (which runs the validator and fails the export if it fails)."""
    from cellseg.commands import export as export_cli
    from tiny_data import make_tiny_experiment

    root = tmp_path_factory.mktemp("bioimageio")
    cfg_path = make_tiny_experiment(root, seed=30)
    out = root / "export"
    rc = export_cli.main(["--config", str(cfg_path), "--out", str(out), "--bioimageio"])
    return {"root": root, "config": cfg_path, "out": out, "rc": rc}


def test_package_passes_the_validator(packaged):
    assert packaged["rc"] == 0
    out = packaged["out"]
    meta = json.loads((out / "export.json").read_text())
    assert meta["bioimageio"]["validation"]["status"] == "passed"
    assert max(meta["bioimageio"]["checks"].values()) <= 1e-4  # its own weights vs Keras
    pkg = out / "bioimageio"
    for name in ("rdf.yaml", "README.md", "cover.png", "model.onnx", "saved_model.zip",
                 "test_input.npy", "test_output_probs.npy", "postprocess.yaml"):
        assert (pkg / name).is_file() and (pkg / name).stat().st_size > 0, name
    with zipfile.ZipFile(out / "bioimageio.zip") as zf:
        names = set(zf.namelist())
    assert "rdf.yaml" in names and "saved_model.zip" in names and "model.onnx" in names
    with zipfile.ZipFile(pkg / "saved_model.zip") as zf:
        assert "saved_model.pb" in zf.namelist()  # at the root, as the TF runner loads it


def test_rdf_describes_the_kit(packaged):
    pkg = packaged["out"] / "bioimageio"
    rdf = yaml.safe_load((pkg / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert rdf["license"] and rdf["authors"] and rdf["tags"] and rdf["covers"] == ["cover.png"]
    assert any("1807.10165" in c.get("url", "") for c in rdf["cite"])  # UNet++
    (inp,) = rdf["inputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "space", "space", "channel"]
    assert inp["preprocessing"] == [{"id": "zero_mean_unit_variance",
                                     "kwargs": {"axes": ["y", "x"], "eps": 1e-6}}]
    # one output: bioimageio.core's TF runner maps outputs by position (see _write_weights)
    (out,) = rdf["outputs"]
    assert out["id"] == "probs" and out["axes"][-1]["channel_names"] == ["body", "border"]
    assert [a.get("size") for a in out["axes"][1:3]] == [
        {"tensor_id": "image", "axis_id": "y"}, {"tensor_id": "image", "axis_id": "x"}]
    assert set(rdf["weights"]) == {"onnx", "tensorflow_saved_model_bundle"}
    readme = (pkg / "README.md").read_text()
    assert "## Validation" in readme and "decode_instances" in readme
    for cell_type in ("shsy5y", "astro", "cort"):
        assert f"| {cell_type} |" in readme
    assert "seed_threshold" in readme and "skimage.segmentation.watershed" in readme


def test_preprocessing_is_the_kits_normalisation(packaged):
    """The raw test input, standardised as the kit does, gives the stored test output: so
    the format's zero_mean_unit_variance stands for cellseg.model.predict.normalize_image."""
    from cellseg.deploy.graphs import run_onnx
    from cellseg.model.predict import normalize_image

    pkg = packaged["out"] / "bioimageio"
    raw = np.load(pkg / "test_input.npy")
    assert raw.dtype == np.float32 and raw.shape[0] == 1 and raw.shape[-1] == 1
    assert raw.max() > 10  # raw intensities, not already normalised
    out = run_onnx(pkg / "model.onnx", normalize_image(raw[0, ..., 0])[None, ..., None])
    assert len(out) == 1
    probs = next(v for k, v in out.items() if "probs" in k)
    assert np.abs(probs - np.load(pkg / "test_output_probs.npy")).max() <= 1e-4


def test_a_wrong_test_output_fails_the_validator(packaged, tmp_path):
    from cellseg.deploy.bioimageio import validate_package

    broken = tmp_path / "broken"
    shutil.copytree(packaged["out"] / "bioimageio", broken)
    probs = np.load(broken / "test_output_probs.npy")
    np.save(broken / "test_output_probs.npy", (1.0 - probs).astype(np.float32))
    status, summary = validate_package(broken / "rdf.yaml")
    assert status == "failed"
    assert "test" in summary.lower() or "output" in summary.lower()


def test_bioimageio_needs_onnx(tmp_path, capsys):
    import export as export_cli

    rc = export_cli.main(["--out", str(tmp_path / "x"), "--bioimageio", "--no-onnx"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--no-onnx" in err[0]
