"""export.py: the SavedModel and the ONNX file give Keras' maps (within 1e-4) at any size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow  # two fold models converted twice: ~30-60 s on 2 cores


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Two folds of a tiny Attention UNet++ (project layers: attention gates, deep
    supervision, cell-type head) with fixed random weights, exported through the CLI."""
    from cellseg.commands import export as export_cli
    from tiny_data import make_tiny_experiment

    root = tmp_path_factory.mktemp("export")
    cfg_path = make_tiny_experiment(root, seed=20, infer={"tta": ["identity", "hflip"]})
    out = root / "export"
    rc = export_cli.main(["--config", str(cfg_path), "--out", str(out)])
    return {"root": root, "config": cfg_path, "out": out, "rc": rc}


def test_export_reproduces_keras(exported):
    assert exported["rc"] == 0
    out = exported["out"]
    meta = json.loads((out / "export.json").read_text())
    assert meta["folds"] == [0, 1] and meta["heads"] == "mean"
    for name in ("saved_model", "onnx"):
        assert meta["checks"][name]["ok"] and meta["checks"][name]["max_abs_diff"] <= 1e-4
    assert meta["outputs"]["probs"]["channels"] == ["body", "border"]
    params = yaml.safe_load((out / "postprocess.yaml").read_text())
    assert set(params["cell_types"]) == {"shsy5y", "astro", "cort"}
    assert "not tuned" in params["source"]
    assert (out / "README.md").is_file() and (out / "model.onnx").stat().st_size > 0


def test_exports_work_at_another_size(exported):
    """A size that is not a multiple of 2**depth: padding and crop are inside the graph."""
    from cellseg.deploy.export import test_image
    from cellseg.deploy.graphs import run_onnx, run_saved_model
    from cellseg.experiment import resolve_config
    from cellseg.infer.ensemble import FoldEnsemble
    from cellseg.model.predict import predict_images

    cfg, exp_dir, _ = resolve_config(exported["config"])
    ens = FoldEnsemble.load(cfg, exp_dir, warn_untuned=False)
    x = np.concatenate([test_image((99, 141), seed=1), test_image((99, 141), seed=2)])
    ref, ref_types = predict_images(ens.models, x, heads="mean", tta=["identity"])
    for out in (run_saved_model(exported["out"] / "saved_model", x),
                run_onnx(exported["out"] / "model.onnx", x)):
        probs = next(v for k, v in out.items() if "probs" in k)
        types = next(v for k, v in out.items() if "cell_type" in k)
        assert probs.shape == ref.shape == (2, 99, 141, 2)
        assert np.abs(probs - ref).max() <= 1e-4 and np.abs(types - ref_types).max() <= 1e-4


def test_export_refuses_a_non_empty_folder(exported, capsys):
    from cellseg.commands import export as export_cli

    assert export_cli.main(["--config", str(exported["config"]), "--out",
                            str(exported["out"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--overwrite" in err[0]
