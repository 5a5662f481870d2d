"""Losses and metrics for the segmentation heads and the cell-type head.

Segmentation loss per head = sum over channels ``c`` of
``w_c * (bce_weight * BCE_c + dice_weight * (1 - softDice_c))`` where channel 0 is the cell body
and channel 1 the touching border (``w = (body_weight, border_weight)``; extra channels get 1).
BCE drives every pixel; Dice counters the class imbalance (borders are ~1 % of pixels) — the
combination used by the 2018 DSB winners. With ``outline_weight`` > 0 the BCE is a weighted
mean whose pixels within ``outline_width`` px of a true body outline weigh ``1 +
outline_weight`` (U-Net's border weights, here for every outline): real cells are found but
drawn loosely, and plain BCE spends almost all of its weight on easy interior and background.
With ``lovasz_weight`` > 0 the body channel also gets the Lovász extension of the Jaccard loss
(Berman et al. 2018, the probability form of their Lovász-Softmax), per image: a convex
surrogate of ``1 - IoU`` that equals it exactly on binary predictions, so the loss pays for
each outline pixel in proportion to what it costs that crop's IoU.

Soft Dice is computed over the whole batch per channel (sums over B, H, W), not per image:
a crop with no touching cells has an empty border target, and per-image Dice would then be a
noisy, near-arbitrary term. The loss is therefore a scalar per batch (``sample_weight`` is not
supported).

Every class here is registered with Keras (package ``cellseg``), so a model saved *compiled*
reloads with ``keras.saving.load_model(path)`` in safe mode with no ``custom_objects``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import keras
from keras import ops

from cellseg.model.network import CELL_TYPE_OUTPUT, model_info, output_names
from cellseg.readout import seg_names


class LossWeights(Protocol):
    """The fields of :class:`cellseg.config.TrainConfig` that the losses read."""

    body_weight: float
    border_weight: float
    bce_weight: float
    dice_weight: float
    cell_type_weight: float
    outline_weight: float
    lovasz_weight: float
    outline_width: int


def _check_channels(y_pred: Any, channel_weights: Sequence[float]) -> None:
    n = y_pred.shape[-1]
    if n is not None and n != len(channel_weights):
        raise ValueError(
            f"segmentation loss: prediction has {n} channels but {len(channel_weights)} "
            f"channel weights were given ({list(channel_weights)})"
        )


def bce_per_channel(y_true: Any, y_pred: Any) -> Any:
    """Mean binary cross-entropy per channel, shape ``(C,)`` (inputs are probabilities)."""
    bce = ops.binary_crossentropy(y_true, y_pred, from_logits=False)
    return ops.mean(ops.reshape(bce, (-1, ops.shape(bce)[-1])), axis=0)


def outline_weights(y_true: Any, weight: float, width: int) -> Any:
    """Per-pixel BCE weights ``(B, H, W, 1)``: ``1 + weight`` within ``width`` px of the body
    channel's outline (a morphological gradient by max pooling), else 1."""
    body = y_true[..., :1]
    size = 2 * int(width) + 1
    dilated = ops.max_pool(body, pool_size=size, strides=1, padding="same")
    eroded = -ops.max_pool(-body, pool_size=size, strides=1, padding="same")
    return 1.0 + weight * (dilated - eroded)


def weighted_bce_per_channel(y_true: Any, y_pred: Any, weights: Any) -> Any:
    """BCE per channel as a weighted mean over pixels, shape ``(C,)``."""
    bce = ops.binary_crossentropy(y_true, y_pred, from_logits=False)
    c = ops.shape(y_pred)[-1]
    bce = ops.reshape(bce, (-1, c))
    w = ops.reshape(weights, (-1, 1))
    return ops.sum(bce * w, axis=0) / ops.sum(w)


def lovasz_jaccard_per_image(y_true: Any, y_pred: Any) -> Any:
    """Lovász extension of ``1 - IoU`` for one channel, shape ``(B,)``.

    ``y_true`` and ``y_pred`` are ``(B, H, W)`` in [0, 1]. The pixel errors ``|y - p|`` are
    sorted in decreasing order and weighted by the IoU lost as each enters the error set (the
    Lovász gradient), which is why the value equals ``1 - IoU(y, p > 0.5)`` when ``p`` is 0/1.
    A crop with no foreground costs its largest error.
    """
    b = ops.shape(y_pred)[0]
    t = ops.reshape(ops.cast(y_true > 0.5, y_pred.dtype), (b, -1))
    p = ops.reshape(y_pred, (b, -1))
    errors = ops.abs(t - p)
    order = ops.argsort(-errors, axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    t_sorted = ops.stop_gradient(ops.take_along_axis(t, order, axis=-1))
    gts = ops.sum(t_sorted, axis=-1, keepdims=True)
    inter = gts - ops.cumsum(t_sorted, axis=-1)
    union = gts + ops.cumsum(1.0 - t_sorted, axis=-1)
    jaccard = 1.0 - inter / union  # union >= 1 from the first pixel on
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    return ops.sum(errors_sorted * ops.stop_gradient(grad), axis=-1)


def soft_dice_per_channel(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """Soft Dice coefficient per channel over the whole batch, shape ``(C,)``, in [0, 1].

    ``smooth`` keeps an empty target with an empty prediction at Dice 1 (loss 0).
    """
    c = ops.shape(y_pred)[-1]
    t = ops.reshape(y_true, (-1, c))
    p = ops.reshape(y_pred, (-1, c))
    inter = ops.sum(t * p, axis=0)
    denom = ops.sum(t, axis=0) + ops.sum(p, axis=0)
    return (2.0 * inter + smooth) / (denom + smooth)


@keras.saving.register_keras_serializable(package="cellseg")
class BceDiceLoss(keras.losses.Loss):
    """Channel-weighted BCE + soft Dice loss for one segmentation head (see module doc).

    Args:
        channel_weights: one weight per output channel, e.g. ``(body_weight, border_weight)``.
        bce_weight: multiplier of the BCE term.
        dice_weight: multiplier of the ``1 - Dice`` term.
        smooth: Dice smoothing constant (in pixels).
        outline_weight, outline_width: extra BCE weight near true outlines (module doc).
        lovasz_weight: multiplier of the body channel's per-image Lovász IoU loss (module doc).
    """

    def __init__(
        self,
        channel_weights: Sequence[float] = (1.0, 1.0),
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        outline_weight: float = 0.0,
        outline_width: int = 2,
        lovasz_weight: float = 0.0,
        name: str = "bce_dice",
        reduction: str | None = "sum_over_batch_size",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        weights = [float(w) for w in channel_weights]
        if not weights or any(w < 0 for w in weights):
            raise ValueError(f"BceDiceLoss: channel_weights must be >= 0, got {weights}")
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            raise ValueError(
                f"BceDiceLoss: bce_weight={bce_weight}, dice_weight={dice_weight}: both must be "
                ">= 0 and not both 0"
            )
        self.channel_weights = weights
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        if outline_weight < 0 or int(outline_width) < 1:
            raise ValueError(f"BceDiceLoss: outline_weight={outline_weight} must be >= 0 and "
                             f"outline_width={outline_width} >= 1")
        self.outline_weight = float(outline_weight)
        self.outline_width = int(outline_width)
        if lovasz_weight < 0:
            raise ValueError(f"BceDiceLoss: lovasz_weight={lovasz_weight} must be >= 0")
        self.lovasz_weight = float(lovasz_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        _check_channels(y_pred, self.channel_weights)
        y_true = ops.cast(y_true, y_pred.dtype)
        w = ops.convert_to_tensor(self.channel_weights, dtype=y_pred.dtype)
        total = ops.zeros((), dtype=y_pred.dtype)
        if self.bce_weight:
            if self.outline_weight:
                pixel_w = outline_weights(y_true, self.outline_weight, self.outline_width)
                bce = weighted_bce_per_channel(y_true, y_pred, pixel_w)
            else:
                bce = bce_per_channel(y_true, y_pred)
            total = total + self.bce_weight * ops.sum(w * bce)
        if self.dice_weight:
            dice = soft_dice_per_channel(y_true, y_pred, self.smooth)
            total = total + self.dice_weight * ops.sum(w * (1.0 - dice))
        if self.lovasz_weight:
            lovasz = ops.mean(lovasz_jaccard_per_image(y_true[..., 0], y_pred[..., 0]))
            total = total + self.lovasz_weight * w[0] * lovasz
        # One value per sample (all equal to the batch loss), not a scalar: Keras skips its
        # reduction for scalars, and with it the 1/num_replicas scaling that tf.distribute
        # needs, which doubled gradients and logged losses under MirroredStrategy.
        return total * ops.ones((ops.shape(y_pred)[0],), dtype=total.dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "channel_weights": list(self.channel_weights),
                "bce_weight": self.bce_weight,
                "dice_weight": self.dice_weight,
                "smooth": self.smooth,
                "outline_weight": self.outline_weight,
                "outline_width": self.outline_width,
                "lovasz_weight": self.lovasz_weight,
            }
        )
        return config


def _binarize(x: Any, threshold: float) -> Any:
    return ops.cast(ops.greater(x, threshold), "float32")


@keras.saving.register_keras_serializable(package="cellseg")
class BodyAccuracy(keras.metrics.Metric):
    """Pixel accuracy of one channel (default: the cell body) after thresholding at 0.5.

    Truth is binarised at 0.5 too, so soft targets work.
    """

    def __init__(
        self, channel: int = 0, threshold: float = 0.5, name: str = "body_acc", dtype: Any = None
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        self.channel = int(channel)
        self.threshold = float(threshold)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if sample_weight is not None:
            raise NotImplementedError(f"{self.name}: sample_weight is not supported")
        t = _binarize(y_true[..., self.channel], 0.5)
        p = _binarize(y_pred[..., self.channel], self.threshold)
        self.correct.assign_add(ops.sum(ops.cast(ops.equal(t, p), "float32")))
        self.total.assign_add(ops.cast(ops.size(t), "float32"))

    def result(self) -> Any:
        return ops.divide_no_nan(self.correct, self.total)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"channel": self.channel, "threshold": self.threshold})
        return config


@keras.saving.register_keras_serializable(package="cellseg")
class BodyIoU(keras.metrics.Metric):
    """IoU of one thresholded channel (default: the cell body), accumulated over batches.

    Intersection and union are summed over the whole epoch (a dataset IoU, not a mean of
    batch IoUs, which would over-weight nearly empty crops). Empty truth and empty prediction
    give 1.
    """

    def __init__(
        self, channel: int = 0, threshold: float = 0.5, name: str = "body_iou", dtype: Any = None
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        self.channel = int(channel)
        self.threshold = float(threshold)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.union = self.add_variable(shape=(), initializer="zeros", name="union")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if sample_weight is not None:
            raise NotImplementedError(f"{self.name}: sample_weight is not supported")
        t = _binarize(y_true[..., self.channel], 0.5)
        p = _binarize(y_pred[..., self.channel], self.threshold)
        inter = ops.sum(t * p)
        self.intersection.assign_add(inter)
        self.union.assign_add(ops.sum(t) + ops.sum(p) - inter)

    def result(self) -> Any:
        return ops.where(self.union > 0, ops.divide_no_nan(self.intersection, self.union), 1.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"channel": self.channel, "threshold": self.threshold})
        return config


def _names_and_targets(
    model_or_names: keras.Model | Iterable[str], n_targets: int | None
) -> tuple[list[str], int]:
    if isinstance(model_or_names, keras.Model):
        names = output_names(model_or_names)
        if n_targets is None:
            n_targets = model_info(model_or_names).n_targets
    else:
        names = list(model_or_names)
    return names, 2 if n_targets is None else int(n_targets)


def _seg_names(names: list[str]) -> list[str]:
    seg = seg_names(names)
    if not seg:
        raise ValueError(f"no seg{{j}} outputs among {names}")
    return seg


def channel_weights(weights: LossWeights, n_targets: int) -> list[float]:
    """``[body_weight, border_weight, 1, 1, ...]`` cut or padded to ``n_targets``."""
    base = [float(weights.body_weight), float(weights.border_weight)]
    return (base + [1.0] * max(0, n_targets - 2))[:n_targets]


def build_losses(
    model_or_names: keras.Model | Iterable[str],
    weights: LossWeights,
    n_targets: int | None = None,
    sparse_cell_type: bool = True,
) -> tuple[dict[str, keras.losses.Loss], dict[str, float]]:
    """The ``loss`` and ``loss_weights`` dicts for ``model.compile``.

    Each ``seg{j}`` head gets a :class:`BceDiceLoss` with weight ``1 / n_heads``, so the
    segmentation term has the same scale with or without deep supervision (the ablation
    compares like with like, and ``cell_type_weight`` means the same in both). The
    ``cell_type`` head gets cross-entropy with weight ``weights.cell_type_weight``.

    Args:
        model_or_names: the model (its outputs and ``n_targets`` are read) or output names.
        weights: a :class:`cellseg.config.TrainConfig` or anything with its loss fields.
        n_targets: channels per seg head; default: from the model, else 2.
        sparse_cell_type: targets for ``cell_type`` are integer indices into ``CELL_TYPES``
            (True) or one-hot vectors (False).

    Returns:
        ``(loss, loss_weights)`` keyed by output name.
    """
    names, n_targets = _names_and_targets(model_or_names, n_targets)
    seg = _seg_names(names)
    unknown = [n for n in names if n not in seg and n != CELL_TYPE_OUTPUT]
    if unknown:
        raise ValueError(f"build_losses: unexpected outputs {unknown} (known: seg{{j}}, cell_type)")
    cw = channel_weights(weights, n_targets)
    loss: dict[str, keras.losses.Loss] = {}
    loss_weights: dict[str, float] = {}
    for name in seg:
        loss[name] = BceDiceLoss(
            channel_weights=cw,
            bce_weight=weights.bce_weight,
            dice_weight=weights.dice_weight,
            outline_weight=weights.outline_weight,
            outline_width=weights.outline_width,
            lovasz_weight=weights.lovasz_weight,
            name=f"{name}_bce_dice",
        )
        loss_weights[name] = 1.0 / len(seg)
    if CELL_TYPE_OUTPUT in names:
        loss[CELL_TYPE_OUTPUT] = (
            keras.losses.SparseCategoricalCrossentropy(name="cell_type_ce")
            if sparse_cell_type
            else keras.losses.CategoricalCrossentropy(name="cell_type_ce")
        )
        loss_weights[CELL_TYPE_OUTPUT] = float(weights.cell_type_weight)
    return loss, loss_weights


def build_metrics(
    model_or_names: keras.Model | Iterable[str], sparse_cell_type: bool = True
) -> dict[str, list[keras.metrics.Metric]]:
    """Metrics dict for ``model.compile``: body accuracy + IoU on the deepest seg head,
    cell-type accuracy on ``cell_type``. Only the deepest head is scored because it is the
    one inference uses by default (``heads="last"``) and the closest to the ``"mean"``."""
    names, _ = _names_and_targets(model_or_names, 2)
    last = _seg_names(names)[-1]
    metrics: dict[str, list[keras.metrics.Metric]] = {last: [BodyAccuracy(), BodyIoU()]}
    if CELL_TYPE_OUTPUT in names:
        metrics[CELL_TYPE_OUTPUT] = [
            keras.metrics.SparseCategoricalAccuracy(name="acc")
            if sparse_cell_type
            else keras.metrics.CategoricalAccuracy(name="acc")
        ]
    return metrics


def compile_kwargs(
    model: keras.Model, weights: LossWeights, sparse_cell_type: bool = True
) -> dict[str, Any]:
    """``loss``, ``loss_weights`` and ``metrics`` for ``model.compile(optimizer, **kwargs)``."""
    loss, loss_weights = build_losses(model, weights, sparse_cell_type=sparse_cell_type)
    return {
        "loss": loss,
        "loss_weights": loss_weights,
        "metrics": build_metrics(model, sparse_cell_type=sparse_cell_type),
    }


__all__ = [
    "BceDiceLoss",
    "BodyAccuracy",
    "BodyIoU",
    "LossWeights",
    "bce_per_channel",
    "build_losses",
    "build_metrics",
    "channel_weights",
    "compile_kwargs",
    "outline_weights",
    "soft_dice_per_channel",
    "weighted_bce_per_channel",
]
