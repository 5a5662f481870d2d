"""A bioimage.io model package (format 0.5) of an export: ``export.py --bioimageio``.

Why: Fiji (deepImageJ), ilastik, QuPath and the BioImage.IO tools load models described by an
``rdf.yaml`` with named tensors, pre-processing, test tensors and weights, not a bare
SavedModel. The package holds the export's network as a zipped SavedModel (the format asks
for folder weights as a zip) and as ONNX.

What the package can and cannot carry:

* input ``image`` ``(batch, y, x, channel=1)``: the raw image; the format's
  ``zero_mean_unit_variance`` over ``y, x`` per image is the kit's
  :func:`cellseg.model.predict.normalize_image` (eps only matters for flat images);
* one output, ``probs`` (body, border): the weights are re-written for that output alone
  (:func:`_write_weights` says why the cell-type head is left out) and checked against Keras;
* the format has no instance decoding step: the marker watershed stays outside, as for
  StarDist, and the package README's "Validation" section gives the tuned parameters per cell
  type and the exact steps (with ``cellseg`` or scikit-image).

The package is written as a folder and as a zip (``rdf.yaml`` at the zip's root), and checked
with ``bioimageio.core``'s ``test_model`` when that is installed (:func:`validate_package`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellseg import fileio
from cellseg.exceptions import ExportError

PACKAGE_DIR = "bioimageio"
PACKAGE_ZIP = "bioimageio.zip"
RDF_FILE = "rdf.yaml"
FORMAT_VERSION = "0.5.4"
#: Size of the synthetic test image: multiples of 32 (the smallest tile the declared input
#: sizes allow), small enough to keep the validator's runs short.
TEST_SHAPE = (256, 320)
#: Smallest input and size step: the network pads to a multiple of ``2**depth`` inside the
#: graph, but tools that tile an image should use tiles on that grid (shift-equivariance).
MIN_SIZE = 64
#: Normalisation epsilon: the kit returns zeros for std <= 1e-6; for any real image the two
#: formulas differ by far less than the test tolerance.
ZMUV_EPS = 1e-6
#: SPDX id in rdf.yaml: the repository has no LICENSE file; CC0-1.0 is what package.py already
#: declares for the same weights in the Kaggle dataset (its --license default).
DEFAULT_LICENSE = "CC0-1.0"
CITATIONS: tuple[dict[str, str], ...] = (
    {"text": "Zhou Z, Rahman Siddiquee MM, Tajbakhsh N, Liang J. UNet++: A Nested U-Net "
             "Architecture for Medical Image Segmentation. DLMIA 2018.",
     "url": "https://arxiv.org/abs/1807.10165"},
    {"text": "Oktay O et al. Attention U-Net: Learning Where to Look for the Pancreas. "
             "MIDL 2018.",
     "url": "https://arxiv.org/abs/1804.03999"},
    {"text": "Sartorius - Cell Instance Segmentation (Kaggle competition, 2021): the data "
             "format and the metric this kit is built for.",
     "url": "https://www.kaggle.com/competitions/sartorius-cell-instance-segmentation"},
)


def _test_tensors(ens: Any, shape: tuple[int, int], seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw synthetic test input ``(1, H, W, 1)`` and Keras' ``probs`` / ``cell_type`` on it
    (the fold mean without TTA, as the exported graph computes it)."""
    from cellseg.data.synthetic import make_image
    from cellseg.model.predict import normalize_image, predict_images

    img, _ = make_image("shsy5y", np.random.default_rng(seed), shape[0], shape[1])
    raw = np.asarray(img, np.float32)[None, ..., None]
    probs, types = predict_images(ens.models, normalize_image(img)[None, ..., None],
                                  heads=ens.heads, tta=["identity"], batch_size=1)
    return raw, np.asarray(probs, np.float32), np.asarray(types, np.float32)


def _write_weights(ens: Any, multiple: int, pkg: Path) -> None:
    """``pkg/saved_model.zip`` (SavedModel, zipped as the format asks for folder weights) and
    ``pkg/model.onnx`` of the export's graph with the ``probs`` output only.

    Why one output: bioimage.io's TensorFlow runner (bioimageio.core 0.11) maps a SavedModel's
    outputs to the rdf's by dict order, not by name, and that order changed between runs
    (``cell_type`` and ``probs`` came back swapped in 2 of 7 validator runs), so a
    second output cannot be described reliably. The cell-type head stays in the main export.
    """
    from cellseg.deploy.graphs import write_onnx, write_saved_model

    sm = pkg / ".saved_model"
    write_saved_model(sm, ens.models, ens.heads, multiple, cell_type=False)
    _zip_folder(sm, pkg / "saved_model.zip")
    shutil.rmtree(sm)
    write_onnx(pkg / "model.onnx", ens.models, ens.heads, multiple, cell_type=False)


def _check_weights(pkg: Path, x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max |difference| of each weight file's ``probs`` to Keras' on ``x``; ExportError above
    the export's tolerance."""
    from cellseg.deploy.graphs import TOLERANCE, run_onnx, run_saved_model

    diffs: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bioimageio_sm_") as tmp:
        with zipfile.ZipFile(pkg / "saved_model.zip") as zf:
            zf.extractall(tmp)
        runs = {"saved_model": run_saved_model(Path(tmp), x),
                "onnx": run_onnx(pkg / "model.onnx", x)}
    for name, out in runs.items():
        probs = next((v for k, v in out.items() if "probs" in k), None)
        if probs is None or probs.shape != ref.shape:
            raise ExportError(f"bioimage.io {name} weights give "
                              f"{ {k: v.shape for k, v in out.items()} }, expected probs "
                              f"of shape {ref.shape}")
        diffs[name] = float(np.abs(probs - ref).max())
        if diffs[name] > TOLERANCE:
            raise ExportError(f"bioimage.io {name} weights: max |difference| to Keras "
                              f"{diffs[name]:.3g} > {TOLERANCE:g}")
    return diffs


def _zip_folder(folder: Path, dest: Path) -> None:
    """``folder``'s files at the root of the zip ``dest`` (written atomically, fixed order)."""
    with fileio.atomic_path(dest, suffix=".tmp.zip") as tmp, \
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(folder).as_posix())


def _cover(raw: np.ndarray, probs: np.ndarray) -> bytes:
    """A 2:1 PNG: the test image left, its body (green) and border (magenta) maps right."""
    from PIL import Image

    img = raw[0, ..., 0]
    lo, hi = np.percentile(img, [1, 99])
    gray = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    left = np.stack([gray] * 3, -1)
    body = probs[0, ..., 0]
    border = probs[0, ..., 1] if probs.shape[-1] > 1 else np.zeros_like(body)
    right = np.stack([border, body, border], -1) * 0.8 + left * 0.2
    both = (np.concatenate([left, right], axis=1) * 255).astype(np.uint8)
    h = both.shape[0]
    pic = Image.fromarray(both).resize((2 * h, h))
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()


def _params_table(params: Mapping[str, Mapping[str, Any]]) -> str:
    keys = sorted({k for p in params.values() for k in p})
    head = "| cell type | " + " | ".join(f"`{k}`" for k in keys) + " |"
    rule = "|---|" + "---:|" * len(keys)
    rows = [f"| {t} | " + " | ".join(str(p.get(k, "")) for k in keys) + " |"
            for t, p in params.items()]
    return "\n".join([head, rule, *rows])


def _readme(meta: Mapping[str, Any], params: Mapping[str, Mapping[str, Any]], source: str,
            with_type: bool) -> str:
    types = ", ".join(meta["cell_types"])
    pick = ("Pick the parameters of the image's cell type. This package gives the maps only "
            "(see 'Inputs and outputs'); "
            + (f"the network's cell-type head ({types} probabilities) is the `cell_type` "
               f"output of the full export's `model.onnx` / `saved_model/`, and "
               f"`cellseg-infer` / `cellseg-segment` choose the type automatically."
               if with_type else "choose the type by hand."))
    return f"""# cellseg Attention UNet++: cell body and touching-border maps

Fold ensemble of experiment `{meta['experiment']}` (folds {meta['folds']}, heads
`{meta['heads']}`), exported {meta['date']} by `python src/export.py --bioimageio`. Trained for
phase-contrast images of neuronal cells (Sartorius format: shsy5y, astro, cort); cells should
have about the training scale (median diameter
{meta.get('reference_diameter_px') or 'unknown'} px).

## Inputs and outputs

* `image`: one grey-level image `(batch, y, x, channel=1)`, any size from {MIN_SIZE} px in steps
  of {meta['size_multiple']} (the graph pads and crops itself, so other sizes also run). Its
  pre-processing is `zero_mean_unit_variance` over `y, x` of each image, i.e. the kit's
  `(x - mean) / std`. When tiling a large image, use tiles that start on multiples of
  {meta['size_multiple']} px with a generous overlap.
* `probs`: `(batch, y, x, channel=2)` float32 probabilities: channel 0 = cell body, channel 1
  = band where two cells touch.

The package has one output: bioimage.io's TensorFlow runner matches a SavedModel's outputs to
the description by position, and a second output (the cell-type head) came back in either
order, so it is left to the full export.

The package holds the same network as TF SavedModel (`saved_model.zip`) and ONNX
(`model.onnx`), written for the `probs` output alone; both were checked against Keras on the
test image (max |difference| <= {meta['tolerance']:g}).
No test-time augmentation is inside the graph.

## Validation

The network gives probability maps, not cells: instances come from a marker-controlled
watershed outside the model (as for StarDist). The parameters below were {source}.

{_params_table(params)}

Steps to turn the two outputs into a label image (`body = probs[..., 0]`,
`border = probs[..., 1]`, one image, float in [0, 1]):

1. {pick}
2. If `smooth_sigma` > 0, Gaussian-smooth `body` and `border` with that sigma
   (`scipy.ndimage.gaussian_filter`, `mode="nearest"`).
3. `score = body * (1 - border)`; `mask = body > mask_threshold`.
4. Seeds: connected components (4-neighbour for `connectivity` 1, 8 for 2) of
   `(score > seed_threshold) & mask`; drop seeds smaller than `min_seed_area` px.
   If `split_height` > 0, `cellseg` also splits seed regions at their necks (h-maxima of the
   distance transform); step 4 with plain scikit-image skips that.
5. `labels = skimage.segmentation.watershed(-score, seeds, mask=mask,
   connectivity=connectivity, compactness=compactness)`.
6. If `keep_unseeded`, each connected part of `mask` left unlabelled becomes one more cell.
   If `merge_border` > 0, neighbouring cells whose shared boundary has a mean `border` below
   it are merged (`cellseg.postprocess.decode.merge_unbordered`; off unless set).
7. If `fill_holes`, fill background holes enclosed by one cell; finally remove cells smaller
   than `min_area` px.

With the kit installed (`pip install cellseg` from the repository) steps 2-7 are one call:

```python
from cellseg.postprocess.decode import decode_instances
labels = decode_instances(probs[0], **params[cell_type])  # int32, 0 = background
```

`postprocess.yaml` in this package holds the same parameters as data.

## Test tensors

`test_input.npy` is a raw synthetic image (not real data), `test_output_*.npy` the Keras
network's outputs on it; `bioimageio test rdf.yaml` reproduces them with both weight formats.
"""


def build_rdf(meta: Mapping[str, Any], outputs: Sequence[str], tf_version: str,
              opset: int, authors: Sequence[str], license_id: str) -> dict[str, Any]:
    """The ``rdf.yaml`` content (bioimage.io model format 0.5) for the files
    :func:`write_package` writes; ``outputs``: the output ids in the weights' order."""
    space_in = [{"type": "space", "id": a, "size": {"min": MIN_SIZE,
                                                    "step": int(meta["size_multiple"])}}
                for a in ("y", "x")]
    out_descr = {
        "probs": {
            "id": "probs",
            "description": "probabilities: channel 0 cell body, 1 touching border",
            "axes": [{"type": "batch"},
                     *({"type": "space", "id": a,
                        "size": {"tensor_id": "image", "axis_id": a}} for a in ("y", "x")),
                     {"type": "channel", "channel_names": ["body", "border"]}],
            "test_tensor": {"source": "test_output_probs.npy"},
        },
    }
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": f"cellseg Attention UNet++ ({meta['experiment']})",
        "description": "Cell body and touching-border probability maps for phase-contrast "
                       "images of neuronal cells (Sartorius format); instances by a marker "
                       "watershed, see README",
        "authors": [{"name": a} for a in authors],
        "cite": [dict(c) for c in CITATIONS],
        "license": license_id,
        "tags": ["cell-segmentation", "instance-segmentation", "2d", "phase-contrast",
                 "neurons", "unet++", "attention", "tensorflow", "onnx", "semantic-segmentation"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "attachments": [{"source": "postprocess.yaml"}],
        "inputs": [{
            "id": "image",
            "description": "raw grey-level image",
            "axes": [{"type": "batch"}, *space_in,
                     {"type": "channel", "channel_names": ["gray"]}],
            "test_tensor": {"source": "test_input.npy"},
            "preprocessing": [{"id": "zero_mean_unit_variance",
                               "kwargs": {"axes": ["y", "x"], "eps": ZMUV_EPS}}],
        }],
        "outputs": [out_descr[o] for o in outputs],
        "weights": {
            "tensorflow_saved_model_bundle": {"source": "saved_model.zip",
                                              "tensorflow_version": tf_version},
            "onnx": {"source": "model.onnx", "opset_version": int(opset),
                     "parent": "tensorflow_saved_model_bundle"},
        },
        "timestamp": meta["date"],
        "config": {"cellseg": {"experiment": meta["experiment"], "folds": list(meta["folds"]),
                               "heads": meta["heads"],
                               "reference_diameter_px": meta.get("reference_diameter_px")}},
    }


def write_package(ens: Any, export_dir: Path, meta: Mapping[str, Any],
                  params_doc: Mapping[str, Any], *,
                  authors: Sequence[str] = ("cellseg contributors",),
                  license_id: str = DEFAULT_LICENSE, validate: bool = True, seed: int = 0,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``export_dir/bioimageio/`` and ``export_dir/bioimageio.zip`` for ``ens`` (its own
    single-output SavedModel and ONNX, checked against Keras); validate the zip when
    ``validate``.

    Returns:
        ``{"folder", "zip", "outputs", "validation"}`` for ``export.json``; ``validation`` is
        ``{"status": "passed"|"failed"|"not run", ...}``.

    Raises:
        ExportError: a weight file that differs from Keras, or the validator fails.
    """
    import tensorflow as tf

    from cellseg.deploy.graphs import ONNX_OPSET
    from cellseg.model.predict import normalize_image
    from cellseg.infer.segment_images import model_multiple

    export_dir = Path(export_dir)
    pkg = export_dir / PACKAGE_DIR
    shutil.rmtree(pkg, ignore_errors=True)
    pkg.mkdir()
    raw, probs, _ = _test_tensors(ens, TEST_SHAPE, seed)
    _write_weights(ens, model_multiple(ens.models, at_least=1), pkg)
    diffs = _check_weights(pkg, normalize_image(raw[0, ..., 0])[None, ..., None], probs)
    log("bioimage.io weights: max |difference| to Keras = "
        + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    outputs = ["probs"]
    np.save(pkg / "test_input.npy", raw)
    np.save(pkg / "test_output_probs.npy", probs)
    (pkg / "cover.png").write_bytes(_cover(raw, probs))
    params = {t: dict(v["params"]) for t, v in params_doc["cell_types"].items()}
    fileio.write_yaml(pkg / "postprocess.yaml", dict(params_doc))
    fileio.write_text(pkg / "README.md",
                      _readme(meta, params, params_doc.get("source", "unknown"),
                              with_type="cell_type" in meta.get("outputs", {})))
    fileio.write_yaml(pkg / RDF_FILE, build_rdf(meta, outputs, tf.__version__, ONNX_OPSET,
                                                authors, license_id))
    _zip_folder(pkg, export_dir / PACKAGE_ZIP)
    info: dict[str, Any] = {"folder": PACKAGE_DIR, "zip": PACKAGE_ZIP, "outputs": outputs,
                            "format_version": FORMAT_VERSION, "checks": diffs}
    if not validate:
        info["validation"] = {"status": "not run"}
        return info
    ok, text = validate_package(export_dir / PACKAGE_ZIP)
    info["validation"] = {"status": ok, "validator": _validator_version(), "summary": text}
    log(f"bioimageio test: {ok}")
    if ok == "failed":
        raise ExportError(f"bioimage.io package fails `bioimageio test`: {text[-1500:]}")
    return info


def _validator_version() -> str:
    try:
        import bioimageio.core
        import bioimageio.spec
    except ImportError:
        return "not installed"
    return f"bioimageio.core {bioimageio.core.__version__}, " \
           f"bioimageio.spec {bioimageio.spec.__version__}"


def validate_package(source: str | os.PathLike) -> tuple[str, str]:
    """``bioimageio test`` (``bioimageio.core.test_model``) on an ``rdf.yaml`` or zip.

    Returns:
        ``(status, summary)``: status ``"passed"``, ``"failed"``, or ``"not run"`` when
        bioimageio.core is not installed (the package is still written).
    """
    try:
        from bioimageio.core import test_model
    except ImportError:
        return "not run", "bioimageio.core not installed (pip install bioimageio.core)"
    # The TF runner unpacks weights into ./bioimageio_unzipped_tf_weights: keep that out of
    # the caller's working folder.
    with tempfile.TemporaryDirectory(prefix="bioimageio_test_") as tmp, \
            contextlib.chdir(tmp):
        summary = test_model(Path(source).absolute())
    text = summary.format() if hasattr(summary, "format") else str(summary)
    failed = [f"{d.name}: {e.msg}" for d in summary.details if d.status == "failed"
              for e in (d.errors or [])] or [d.name for d in summary.details
                                             if d.status == "failed"]
    status = "passed" if summary.status == "passed" else "failed"
    return status, ("; ".join(failed) if failed else text[-3000:])




__all__ = ["PACKAGE_DIR", "PACKAGE_ZIP", "RDF_FILE", "build_rdf", "validate_package",
           "write_package"]
