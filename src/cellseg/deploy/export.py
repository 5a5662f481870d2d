"""Export a trained experiment's network for other tools: TF SavedModel and ONNX.

Why: DeepImageJ, TF Serving and ONNX runtimes (QuPath extensions, C++ / C# / JavaScript
apps) cannot load ``best.keras`` with this project's custom layers. The export is *one*
network: the fold ensemble's probability maps, averaged over folds exactly as
:func:`cellseg.model.predict.predict_images` does (head mode from the infer config; no TTA, which is
a way of calling a network, not part of it), with the reflect padding to a multiple of
``2**depth`` and the crop back inside the graph, so any image size works.

Contract of both files (also in ``export.json`` and the ``README.md`` written beside them):

* input ``image``: float32 ``(N, H, W, 1)``, each image standardised over the whole image
  (``(x - mean) / std``; :func:`cellseg.model.predict.normalize_image`);
* output ``probs``: float32 ``(N, H, W, 2)``: channel 0 cell body, channel 1 touching border;
  ``cell_type`` ``(N, 3)`` (shsy5y, astro, cort) when the network has that head;
* instances: :func:`cellseg.postprocess.decode.decode_instances` with the per-type parameters in
  ``postprocess.yaml`` (the same format ``tune.py`` writes).

Each file is checked against Keras on a test image; :func:`export_experiment` reports the
maximum absolute difference and fails if it exceeds :data:`TOLERANCE`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from cellseg import fileio
from cellseg.exceptions import ExportError
from cellseg.experiment import CLASSIFIER_FILE, POSTPROCESS_FILE
from cellseg.postprocess.tuned import TunedCellType, TunedPostprocess
from cellseg.deploy.graphs import (
    ONNX_FILE,
    ONNX_OPSET,
    SAVED_MODEL_DIR,
    TOLERANCE,
    run_onnx,
    run_saved_model,
    write_onnx,
    write_saved_model,
)
from cellseg.readout import INPUT_NAME

def _max_diff(ref_probs: np.ndarray, ref_types: np.ndarray, out: dict[str, np.ndarray]
              ) -> float:
    probs = next((v for k, v in out.items() if "probs" in k), None)
    if probs is None or probs.shape != ref_probs.shape:
        raise ExportError(f"exported model gives {({k: v.shape for k, v in out.items()})}, "
                          f"expected probs of shape {ref_probs.shape}")
    diff = float(np.abs(probs - ref_probs).max())
    types = next((v for k, v in out.items() if "cell_type" in k), None)
    if ref_types.size and types is not None:
        diff = max(diff, float(np.abs(types - ref_types).max()))
    return diff


def test_image(shape: tuple[int, int] = (520, 704), seed: int = 0) -> np.ndarray:
    """A normalised synthetic image ``(1, H, W, 1)`` (no real pixels leave the data root);
    the default size is not a multiple of 32, so the padding inside the graph is checked."""
    from cellseg.data.synthetic import make_image
    from cellseg.model.predict import normalize_image

    img, _ = make_image("shsy5y", np.random.default_rng(seed), shape[0], shape[1])
    return normalize_image(img)[None, ..., None]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("tensorflow", "keras", "numpy", "tf2onnx", "onnx", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: say so
            out[mod] = "not installed"
    return out


def _readme(meta: dict[str, Any]) -> str:
    checks = "\n".join(f"| {k} | {v['max_abs_diff']:.2e} | {v['ok']} |"
                       if "max_abs_diff" in v else f"| {k} | - | {v.get('error', '')} |"
                       for k, v in meta["checks"].items())
    return f"""# Exported network: experiment `{meta['experiment']}`

Fold ensemble of folds {meta['folds']} (mean of the fold outputs), heads `{meta['heads']}`,
written {meta['date']} by `python src/export.py`.

| file | for |
|---|---|
| `{SAVED_MODEL_DIR}/` | TF SavedModel, signature `serving_default` (TF Serving, DeepImageJ) |
| `{ONNX_FILE}` | ONNX opset {ONNX_OPSET} (onnxruntime, OpenCV DNN, other runtimes) |
| `postprocess.yaml` | per-cell-type parameters of `cellseg.postprocess.decode.decode_instances` |
| `cell_type_classifier_fold*.json` | whole-image cell-type classifiers (if any) |
| `confidence-*.skops` + `.json` | per-cell confidence model that `postprocess.yaml` names (if any): drop a decoded cell whose confidence is below its type's `confidence_cutoff` (`cellseg.postprocess.confidence.CellConfidence.filter`; load it only with `CellConfidence.load`, which refuses pickles) |
| `export.json` | all of this as data, plus the checks below |

**Input** `{INPUT_NAME}`: float32 `(N, H, W, 1)`, any H and W; each image standardised over
the whole image: `(x - mean(x)) / std(x)` (for tiles of a large image, use the whole image's
mean and std, and start every tile at a multiple of {meta['size_multiple']} px: the network
is shift-equivariant only for such shifts). Cells should have the training scale: median
diameter about
{meta.get('reference_diameter_px') or 'unknown'} px.

**Outputs**: `probs` float32 `(N, H, W, 2)`: channel 0 = cell body, 1 = touching border;
`cell_type` `(N, 3)` = probabilities of {meta['cell_types']} (network head, present only when
the network has one). Instances: seeds = `body * (1 - border) > seed_threshold`, mask =
`body > mask_threshold`, marker watershed; see `postprocess.yaml` and
`cellseg.postprocess.decode.decode_instances`, then the confidence cut-off when
`postprocess.yaml` names a `confidence_model`. No test-time augmentation is inside the graph.

Checked against Keras on a {meta['test_image_shape']} synthetic image (tolerance
{TOLERANCE:g}):

| format | max abs difference | ok |
|---|---:|---|
{checks}

```python
import onnxruntime as ort, numpy as np
sess = ort.InferenceSession("{ONNX_FILE}")
x = (img - img.mean()) / img.std()
probs = sess.run(None, {{"{INPUT_NAME}": x[None, ..., None].astype(np.float32)}})
```
"""


def export_experiment(ens: Any, cfg: Any, exp_dir: str | Path, out_dir: str | Path,
                      onnx: bool = True, test_shape: tuple[int, int] = (520, 704),
                      overwrite: bool = False, log=print, bioimageio: bool = False
                      ) -> dict[str, Any]:
    """Write SavedModel (+ ONNX), check each against Keras, write parameters and notes.

    Args:
        ens: a loaded :class:`cellseg.infer.ensemble.FoldEnsemble` (models, heads, params, folds).
        cfg: its resolved config (for the data root: reference cell diameter).
        exp_dir: the experiment folder (classifier JSON files are copied from it).
        out_dir: where to write; must be empty or absent unless ``overwrite``.
        onnx: also write and check the ONNX file.
        test_shape: size of the synthetic check image.
        bioimageio: also write and validate a bioimage.io package
            (:func:`cellseg.deploy.bioimageio.write_package`).

    Returns:
        The ``export.json`` content.

    Raises:
        ExportError: ``out_dir`` not empty, a conversion that fails, or a difference above
            :data:`TOLERANCE` (the figures are in the message; ``out_dir`` is unchanged).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} is not empty; pass --overwrite to replace the export")
    # Built in a temporary sibling and swapped in only when every check passed: a failed
    # check or a kill leaves the earlier export as it was.
    with fileio.replace_folder(out_dir) as stage:
        meta = _write_export(ens, cfg, exp_dir, stage, onnx, test_shape, log)
        bad = {k: v for k, v in meta["checks"].items() if not v["ok"]}
        if bad:
            raise ExportError("; ".join(
                f"{k}: " + (v.get("error") or f"max |difference| {v['max_abs_diff']:.3g} > "
                            f"{TOLERANCE:g}") for k, v in bad.items())
                + f" ({out_dir} left as it was)")
        if bioimageio:
            from cellseg.deploy.bioimageio import write_package

            meta["bioimageio"] = write_package(
                ens, stage, meta, fileio.read_yaml(stage / POSTPROCESS_FILE), log=log)
            fileio.write_text(stage / "export.json", json.dumps(meta, indent=1))
    return meta


def _write_export(ens: Any, cfg: Any, exp_dir: str | Path, out_dir: Path, onnx: bool,
                  test_shape: tuple[int, int], log) -> dict[str, Any]:
    """Every file of the export into ``out_dir``; returns ``export.json``'s content."""
    from cellseg.constants import CELL_TYPES
    from cellseg.model.predict import predict_images
    from cellseg.infer.segment_images import SegmentError, model_multiple, reference_diameter

    multiple = model_multiple(ens.models, at_least=1)  # as predict_images pads
    x = test_image(test_shape)
    ref_probs, ref_types = predict_images(ens.models, x, heads=ens.heads, tta=["identity"],
                                          batch_size=1)
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, run) -> None:
        try:
            diff = _max_diff(ref_probs, ref_types, run())
        except ExportError as exc:
            checks[name] = {"ok": False, "error": str(exc)}
        else:
            checks[name] = {"max_abs_diff": diff, "ok": diff <= TOLERANCE}
            log(f"{name}: max |difference| to Keras = {diff:.3g} "
                f"({'ok' if diff <= TOLERANCE else 'ABOVE ' + str(TOLERANCE)})")

    sm = out_dir / SAVED_MODEL_DIR
    write_saved_model(sm, ens.models, ens.heads, multiple)
    check("saved_model", lambda: run_saved_model(sm, x))
    if onnx:
        path = out_dir / ONNX_FILE
        try:
            write_onnx(path, ens.models, ens.heads, multiple)
        except Exception as exc:  # tf2onnx raises many types on an unsupported graph
            checks["onnx"] = {"ok": False, "error": f"conversion failed: "
                              f"{type(exc).__name__}: {exc}"[:2000]}
            log(f"onnx: conversion failed ({type(exc).__name__}: {exc})"[:500])
        else:
            check("onnx", lambda: run_onnx(path, x))

    # The tuned file's provenance travels with the export; every type's params are complete
    # (the ensemble's, defaults filled in), so the package decodes without the config.
    tuned = TunedPostprocess.find(exp_dir) or TunedPostprocess(experiment=Path(exp_dir).name)
    tuned.source = (f"tuned ({POSTPROCESS_FILE})" if tuned.cell_types
                    else "config defaults (not tuned)")
    tuned.cell_types = {t: dataclasses.replace(tuned.cell_types[t], params=dict(ens.params[t]))
                        if t in tuned.cell_types else TunedCellType(params=dict(ens.params[t]))
                        for t in CELL_TYPES}
    tuned.write(out_dir / POSTPROCESS_FILE)
    tuned.copy_confidence(exp_dir, out_dir)
    for fold, model_path in ens.model_files:
        clf = Path(model_path).parent / CLASSIFIER_FILE
        if clf.is_file():
            fileio.write_text(out_dir / f"cell_type_classifier_fold{fold}.json",
                              clf.read_text())
    try:
        ref_diam: float | None = round(reference_diameter(cfg.data.root), 2)
    except SegmentError:
        ref_diam = None
    meta = {
        "experiment": Path(exp_dir).name, "folds": list(ens.folds), "heads": ens.heads,
        "tta": "none inside the graph (infer config: " + ",".join(ens.tta) + ")",
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", "H", "W", 1],
                  "preprocessing": "per image: (x - mean) / std over the whole image"},
        "outputs": {"probs": {"shape": ["N", "H", "W", int(ref_probs.shape[-1])],
                              "channels": ["body", "border"][: int(ref_probs.shape[-1])]},
                    **({"cell_type": {"shape": ["N", len(CELL_TYPES)]}}
                       if ref_types.size else {})},
        "cell_types": list(CELL_TYPES), "size_multiple": multiple,
        "reference_diameter_px": ref_diam,
        "test_image_shape": list(test_shape), "tolerance": TOLERANCE, "checks": checks,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    fileio.write_text(out_dir / "export.json", json.dumps(meta, indent=1))
    fileio.write_text(out_dir / "README.md", _readme(meta))
    return meta


__all__ = ["ExportError", "export_experiment", "test_image"]
