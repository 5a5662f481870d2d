"""The fold ensemble as one TensorFlow graph, written as a SavedModel or an ONNX file, and run
back for the check against Keras.

Shared by :mod:`cellseg.deploy.export` (SavedModel + ONNX of the ensemble, with its cell-type
head) and :mod:`cellseg.deploy.bioimageio` (the probability maps only): one place builds the
graph (:func:`ensemble_fn`: padding, heads, fold average, crop) and one place runs the files.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellseg import fileio
from cellseg.readout import INPUT_NAME, parse_heads, seg_name, seg_names

TOLERANCE = 1e-4
SAVED_MODEL_DIR = "saved_model"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17


def head_runners(models: Sequence[Any], heads: str) -> tuple[list[Any], str]:
    """The per-model callables for a head mode: each model itself, or its UNet++ sub-network
    pruned at level L (``prune=L``); returns ``(runners, mode)``."""
    from cellseg.model.predict import pruned

    mode, level = parse_heads(heads)
    if mode == "prune":
        return [pruned(m, int(level)) for m in models], mode
    return list(models), mode


def ensemble_fn(models: Sequence[Any], heads: str = "mean", multiple: int = 32,
                cell_type: bool = True):
    """A graph function ``image -> {"probs", ["cell_type"]}``: fold mean of the selected
    heads, reflect-padded to ``multiple`` and cropped back (as ``predict_images``).
    ``cell_type=False`` leaves the cell-type output out even when the models have one (the
    bioimage.io package describes one output only)."""
    import tensorflow as tf

    runners, mode = head_runners(models, heads)
    with_type = (cell_type and all("cell_type" in r.output_names for r in runners)
                 if runners else False)

    def fn(image):
        h, w = tf.shape(image)[1], tf.shape(image)[2]
        # (m - h % m) % m, not (-h) % m: tf2onnx turns FloorMod of a negative number into
        # a negative pad (measured: 520 rows came back as 512).
        ph = (multiple - h % multiple) % multiple
        pw = (multiple - w % multiple) % multiple
        x = tf.pad(image, [[0, 0], [0, ph], [0, pw], [0, 0]], mode="REFLECT")
        probs, types = [], []
        for r in runners:
            out = r(x, training=False)
            if not isinstance(out, dict):
                out = ({seg_name(1): out} if not isinstance(out, (list, tuple))
                       else dict(zip(r.output_names, out)))
            seg = seg_names(out)
            if mode == "mean" and len(seg) > 1:
                probs.append(tf.add_n([tf.cast(out[k], tf.float32) for k in seg])
                             / float(len(seg)))
            else:
                probs.append(tf.cast(out[seg[-1]], tf.float32))
            if with_type:
                types.append(tf.cast(out["cell_type"], tf.float32))
        result = {"probs": (tf.add_n(probs) / float(len(probs)))[:, :h, :w, :]}
        if with_type:
            result["cell_type"] = tf.add_n(types) / float(len(types))
        return result

    return fn, with_type


def _spec():
    import tensorflow as tf

    return tf.TensorSpec([None, None, None, 1], tf.float32, name=INPUT_NAME)


def write_saved_model(path: Path, models: Sequence[Any], heads: str, multiple: int,
                      cell_type: bool = True) -> None:
    """TF SavedModel with a ``serving_default`` signature (Keras' ExportArchive) of
    :func:`ensemble_fn`."""
    import keras

    fn, _ = ensemble_fn(models, heads, multiple, cell_type)
    archive = keras.export.ExportArchive()
    runners, _ = head_runners(models, heads)
    for r in runners:
        archive.track(r)
    archive.add_endpoint(name="serve", fn=fn, input_signature=[_spec()])
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(str(tmp), verbose=False)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def write_onnx(path: Path, models: Sequence[Any], heads: str, multiple: int,
               cell_type: bool = True) -> None:
    """ONNX file of :func:`ensemble_fn` through tf2onnx (opset :data:`ONNX_OPSET`)."""
    import tensorflow as tf
    import tf2onnx

    fn, _ = ensemble_fn(models, heads, multiple, cell_type)
    graph_fn = tf.function(fn, input_signature=[_spec()])
    with fileio.atomic_path(path, suffix=".tmp.onnx") as tmp:
        tf2onnx.convert.from_function(graph_fn, input_signature=[_spec()], opset=ONNX_OPSET,
                                      output_path=str(tmp))


def run_saved_model(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of an exported SavedModel's ``serving_default`` on ``x``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_default"](**{INPUT_NAME: tf.constant(x)})
    return {k: np.asarray(v) for k, v in out.items()}


def run_onnx(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the ONNX file on ``x`` with onnxruntime (CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    vals = sess.run(None, {sess.get_inputs()[0].name: x})
    return {n.split(":")[0]: np.asarray(v) for n, v in zip(names, vals)}


__all__ = ["ONNX_FILE", "ONNX_OPSET", "SAVED_MODEL_DIR", "TOLERANCE", "ensemble_fn", "head_runners",
           "run_onnx", "run_saved_model", "write_onnx", "write_saved_model"]
