"""Loading trained models and running them on whole images: normalisation, padding, head
modes, TTA, ensembles.

One function, :func:`predict_images`, is used by validation scoring, out-of-fold prediction,
tuning and the Kaggle kernel, so every consumer sees the same probabilities.

* Images of any size are reflect-padded at the bottom/right to a multiple of ``2**D`` (the
  network's down-sampling factor) and the outputs cropped back; reflection avoids the dark
  band that zero padding would put next to cells at the image edge.
* ``heads``: ``"mean"`` averages every ``seg{j}`` head (a free ensemble from deep
  supervision), ``"last"`` takes the deepest, ``"prune=L"`` runs the UNet++ sub-network up to
  ``X^{0,L}`` (faster; :func:`cellseg.model.network.prune_model`).
* TTA: flips of the input, undone on the output. All variants of an image chunk go through the
  model in one call (the batch is ``batch_size * len(tta)`` images).
* Fold ensemble: probability maps and cell-type probabilities are averaged over models.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

# losses and schedules are imported for their side effect: they register the project's custom
# Keras objects, without which a saved model does not load (load_models).
from cellseg.exceptions import InferenceError
from cellseg.model import losses, schedules  # noqa: F401
from cellseg.model.network import CELL_TYPE_OUTPUT, model_info, prune_model
from cellseg.readout import TTA_FLIP_AXES, check_tta, parse_heads, seg_name, seg_names

# Pruned sub-models, built once per (model, level). Weak keys: a model that is dropped by
# its owner frees its pruned views too; this is a memo, not state anyone depends on.
_PRUNED: weakref.WeakKeyDictionary[keras.Model, dict[int, keras.Model]] = (
    weakref.WeakKeyDictionary()
)


def load_models(paths: Sequence[str | os.PathLike]) -> list[Any]:
    """Load Keras models in safe mode (untrusted files; docs/design.md section 8).

    The project's custom layers, losses and schedules are registered by importing their
    modules (this module imports them at the top). ``compile=False``: inference needs neither
    the optimizer nor the losses, and skipping them is faster and avoids optimizer warnings.

    Raises:
        InferenceError: a missing or damaged file, named.
    """

    out = []
    for path in paths:
        try:
            out.append(keras.saving.load_model(path, compile=False))
        except Exception as exc:  # Keras raises many types for a damaged file
            if Path(path).is_file():  # Keras says "File not found" for a truncated zip
                raise InferenceError(
                    f"{path}: cannot load the model: the file exists but is not a loadable "
                    f"Keras model (truncated or "
                    f"damaged: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                    f"retrain the fold or restore the file") from None
            raise InferenceError(f"{path}: cannot load the model ({type(exc).__name__}: "
                                 f"{exc})") from None
    return out


def normalize_image(img: np.ndarray) -> np.ndarray:
    """Per-image normalisation to zero mean and unit standard deviation (float32).

    Why per image: phase-contrast brightness and contrast vary between plates and
    microscopes; standardising each image removes that before the network sees it.
    A flat image (std ~ 0) gives all zeros instead of dividing by zero.

    Args:
        img: one image, any numeric dtype (uint8 PNG data in this project), any shape.

    Returns:
        float32 array of the same shape.
    """
    arr = np.asarray(img)
    if arr.size == 0:
        raise ValueError(f"normalize_image: empty image of shape {arr.shape}")
    x = arr.astype(np.float64)
    mean = x.mean()
    std = x.std()
    if not np.isfinite(mean) or not np.isfinite(std):
        raise ValueError("normalize_image: image contains NaN or infinite values")
    out = (x - mean) / std if std > 1e-6 else np.zeros_like(x)
    return out.astype(np.float32)


def pad_to_multiple(images: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad a batch at the bottom and right so H and W are multiples of ``multiple``.

    Args:
        images: ``(N, H, W)`` or ``(N, H, W, C)``.
        multiple: e.g. ``2**depth`` of the model.

    Returns:
        ``(padded, (pad_h, pad_w))``; crop back with ``out[:, :H, :W]`` (see :func:`crop`).
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"pad_to_multiple: expected (N, H, W[, C]), got shape {images.shape}")
    if multiple < 1:
        raise ValueError(f"pad_to_multiple: multiple must be >= 1, got {multiple}")
    h, w = images.shape[1:3]
    if h == 0 or w == 0:
        raise ValueError(f"pad_to_multiple: empty image size {h}x{w}")
    pad_h = -h % multiple
    pad_w = -w % multiple
    if pad_h == 0 and pad_w == 0:
        return images, (0, 0)
    widths = [(0, 0), (0, pad_h), (0, pad_w)] + [(0, 0)] * (images.ndim - 3)
    # numpy's reflect needs >= 2 pixels along an axis; a 1-pixel axis can only be repeated.
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(images, widths, mode=mode), (pad_h, pad_w)


def crop(outputs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Undo :func:`pad_to_multiple` on ``(N, H', W', ...)`` outputs."""
    return outputs[:, :height, :width]


def _flip(x: np.ndarray, name: str) -> np.ndarray:
    axes = TTA_FLIP_AXES[name]
    return np.flip(x, axis=axes) if axes else x


def pruned(model: keras.Model, level: int) -> keras.Model:
    """:func:`cellseg.model.network.prune_model`, built once per model and level and then reused."""
    per_model = _PRUNED.setdefault(model, {})
    if level not in per_model:
        per_model[level] = prune_model(model, level)
    return per_model[level]


def _required_multiple(model: keras.Model) -> int:
    """``2**depth`` for our models; 1 for any other model (e.g. a fully convolutional toy)."""
    try:
        return 2 ** model_info(model).depth
    except ValueError:
        return 1


_FORWARD: "weakref.WeakKeyDictionary[keras.Model, Any]" = weakref.WeakKeyDictionary()


def _forward(model: keras.Model):
    """A compiled inference call of ``model``, made once per model.

    Not ``predict_on_batch``: that routes through the model's ``tf.distribute`` strategy,
    which splits (or, multi-worker, gathers) the batch across replicas; inference and
    validation want one plain local forward pass. The open input signature traces one graph
    for every batch and image size.
    """
    fn = _FORWARD.get(model)
    if fn is None:
        import tensorflow as tf

        spec = tf.TensorSpec([None, None, None, 1], tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        _FORWARD[model] = fn
    return fn


def _run(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """One forward pass; always a dict (a bare tensor output is treated as ``seg1``)."""
    out = _forward(model)(x)
    out = keras.tree.map_structure(keras.ops.convert_to_numpy, out)
    if isinstance(out, dict):
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        names = list(model.output_names)
        return {k: np.asarray(v, dtype=np.float32) for k, v in zip(names, out, strict=True)}
    return {seg_name(1): np.asarray(out, dtype=np.float32)}


def _select_seg(out: dict[str, np.ndarray], mode: str, model_name: str) -> np.ndarray:
    seg = seg_names(out)
    if not seg:
        raise ValueError(f"model {model_name!r} has no seg{{j}} output (outputs: {list(out)})")
    if mode == "mean" and len(seg) > 1:
        return np.mean([out[k] for k in seg], axis=0)
    return out[seg[-1]]


def predict_images(
    models: keras.Model | Sequence[keras.Model],
    images: np.ndarray,
    heads: str = "mean",
    tta: Sequence[str] = ("identity",),
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Probability maps and cell-type probabilities for a batch of normalised images.

    Args:
        models: one model or several (fold ensemble; averaged).
        images: ``(N, H, W)`` or ``(N, H, W, 1)`` float32, already normalised
            (:func:`normalize_image`); any H, W.
        heads: ``"mean"`` | ``"last"`` | ``"prune=L"`` (see module doc).
        tta: subset of ``"identity"``, ``"hflip"``, ``"vflip"``, ``"hvflip"``; averaged.
        batch_size: images per forward pass (each carries ``len(tta)`` variants).

    Returns:
        ``(probs, cell_type)``: ``probs`` float32 ``(N, H, W, C)``; ``cell_type`` float32
        ``(N, n_types)`` averaged over models that have a cell-type head, or ``(N, 0)`` when
        none has one.

    Raises:
        ValueError: bad shapes, unknown TTA or head mode, or models that disagree on channels.
    """
    model_list = [models] if isinstance(models, keras.Model) else list(models)
    if not model_list:
        raise ValueError("predict_images: no models given")
    mode, level = parse_heads(heads)
    tta = check_tta(tta)
    if batch_size < 1:
        raise ValueError(f"predict_images: batch_size must be >= 1, got {batch_size}")
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(
            f"predict_images: images must be (N, H, W) or (N, H, W, 1), got {np.shape(images)}"
        )
    n, h, w = x.shape[:3]
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"predict_images: empty input of shape {x.shape}")

    if mode == "prune":
        assert level is not None
        runners = [pruned(m, level) for m in model_list]
    else:
        runners = model_list
    multiple = max(_required_multiple(m) for m in model_list)
    padded, _ = pad_to_multiple(x, multiple)

    prob_sum: np.ndarray | None = None
    type_sum: np.ndarray | None = None
    n_type_models = 0
    for model, runner in zip(model_list, runners, strict=True):
        probs_m: np.ndarray | None = None
        types_m: np.ndarray | None = None
        for start in range(0, n, batch_size):
            chunk = padded[start : start + batch_size]
            k = len(chunk)
            batch = np.concatenate([_flip(chunk, t) for t in tta], axis=0)
            out = _run(runner, batch)
            seg = _select_seg(out, mode, model.name)
            seg_mean = np.mean(
                [_flip(seg[i * k : (i + 1) * k], t) for i, t in enumerate(tta)], axis=0
            )
            seg_mean = crop(seg_mean, h, w)
            if probs_m is None:
                probs_m = np.empty((n, h, w, seg_mean.shape[-1]), dtype=np.float32)
            probs_m[start : start + k] = seg_mean
            if CELL_TYPE_OUTPUT in out:
                ct = out[CELL_TYPE_OUTPUT].reshape(len(tta), k, -1).mean(axis=0)
                if types_m is None:
                    types_m = np.empty((n, ct.shape[-1]), dtype=np.float32)
                types_m[start : start + k] = ct
        assert probs_m is not None
        if prob_sum is None:
            prob_sum = probs_m.astype(np.float64)
        elif prob_sum.shape != probs_m.shape:
            raise ValueError(
                f"predict_images: model {model.name!r} gives {probs_m.shape[-1]} channels, "
                f"earlier models {prob_sum.shape[-1]}"
            )
        else:
            prob_sum += probs_m
        if types_m is not None:
            if type_sum is not None and type_sum.shape != types_m.shape:
                raise ValueError(
                    f"predict_images: model {model.name!r} has {types_m.shape[-1]} cell types, "
                    f"earlier models {type_sum.shape[-1]}"
                )
            type_sum = types_m.astype(np.float64) if type_sum is None else type_sum + types_m
            n_type_models += 1

    assert prob_sum is not None
    probs = (prob_sum / len(model_list)).astype(np.float32)
    if type_sum is None:
        cell_type = np.zeros((n, 0), dtype=np.float32)
    else:
        cell_type = (type_sum / n_type_models).astype(np.float32)
    return probs, cell_type


__all__ = [
    "crop",
    "normalize_image",
    "pad_to_multiple",
    "predict_images",
    "pruned",
]
