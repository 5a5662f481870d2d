"""The paper's network: Attention UNet++ (nested dense skips + attention gates + deep supervision).

One builder makes every row of the ablation (``nested`` x ``attention`` x ``deep_supervision``),
so a comparison changes one switch and nothing else.

Node naming follows the UNet++ paper (Zhou et al. 2018): ``X^{i,j}`` is the node at level ``i``
(resolution ``1 / 2**i``) and column ``j``; ``X^{i,0}`` is the encoder, ``X^{0,j}`` the
full-resolution decoder nodes that carry the deep-supervision heads. Keras layer names encode the
node (``X{i}_{j}_conv1`` ...), which is how :func:`model_info` recovers the architecture from a
saved model without its config, and how :func:`prune_model` finds the heads.

Attention gates (Oktay et al. 2018, eq. 1-2)::

    q     = psi^T ReLU(W_x^T x + W_g^T g + b_g) + b_psi
    alpha = sigmoid(q)
    out   = alpha * x

Resampling choice: ``W_g^T g + b_g`` is computed on the coarse grid of ``g`` and then upsampled
to ``x``'s grid by nearest-neighbour repetition (factor 2). A 1x1 projection commutes with
nearest upsampling, so this equals "upsample g, then project" at a quarter of the cost, and
``alpha`` stays at the full resolution of ``x`` (the paper's reference code instead applies
``W_x`` with stride 2 and upsamples ``alpha``; that loses half of the gate's resolution on the
thin borders between touching cells, which is what this project needs most).

Outputs are a dict: ``"seg1".."segD"`` (deep supervision) or only ``"seg{D}"``, each a float32
sigmoid map ``(B, H, W, n_targets)`` (channel 0 = cell body, 1 = touching border), and
``"cell_type"`` (float32 softmax over :data:`cellseg.constants.CELL_TYPES`) when enabled.
Heads are forced to float32 so the model trains under ``mixed_float16``.

Importing this module registers :class:`AttentionGate` with Keras, so
``keras.saving.load_model(path)`` works in safe mode with no ``custom_objects``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import keras
from keras import layers, ops

from cellseg.config import ModelConfig, check_model_config
from cellseg.constants import CELL_TYPES
from cellseg.readout import INPUT_NAME, seg_level, seg_name, seg_names

CELL_TYPE_OUTPUT = "cell_type"
_NODE_RE = re.compile(r"^X(\d+)_(\d+)_conv1$")


@keras.saving.register_keras_serializable(package="cellseg")
class AttentionGate(layers.Layer):
    """Additive attention gate (Oktay et al. 2018, eq. 1-2) on a skip connection.

    Called as ``gate([x, g])``: ``x`` is the skip feature map ``(B, H, W, C_x)``, ``g`` the
    gating signal from the coarser node ``(B, H/s, W/s, C_g)`` with ``s = scale``. Returns
    ``alpha * x`` with ``alpha = sigmoid(psi^T ReLU(W_x^T x + up_s(W_g^T g + b_g)) + b_psi)``
    of shape ``(B, H, W, 1)``, where ``up_s`` is nearest-neighbour upsampling.

    The weights are plain variables (``w_x``, ``w_g``, ``b_g``, ``psi``, ``b_psi``) rather
    than sub-layers so that the gate can be checked against a NumPy transcription of the
    equations and its coefficients inspected for figures (:meth:`compute_alpha`).

    Args:
        inter_channels: ``F_int``, width of the joint space; ``None`` = ``max(1, C_x // 2)``
            as in the paper's reference code.
        scale: integer ratio between the spatial sizes of ``x`` and ``g``.
    """

    def __init__(self, inter_channels: int | None = None, scale: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if inter_channels is not None and inter_channels < 1:
            raise ValueError(f"AttentionGate: inter_channels must be >= 1, got {inter_channels}")
        if scale < 1:
            raise ValueError(f"AttentionGate: scale must be >= 1, got {scale}")
        self.inter_channels = inter_channels
        self.scale = int(scale)

    def build(self, input_shape: list[tuple]) -> None:
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                f"AttentionGate {self.name}: expected inputs [x, g], got shape {input_shape}"
            )
        x_shape, g_shape = input_shape
        c_x, c_g = x_shape[-1], g_shape[-1]
        if c_x is None or c_g is None:
            raise ValueError(
                f"AttentionGate {self.name}: channel dims must be known, got {x_shape}, {g_shape}"
            )
        f_int = self.inter_channels or max(1, c_x // 2)
        self.w_x = self.add_weight(
            name="w_x", shape=(c_x, f_int), initializer="glorot_uniform", trainable=True
        )
        self.w_g = self.add_weight(
            name="w_g", shape=(c_g, f_int), initializer="glorot_uniform", trainable=True
        )
        self.b_g = self.add_weight(name="b_g", shape=(f_int,), initializer="zeros")
        self.psi = self.add_weight(
            name="psi", shape=(f_int, 1), initializer="glorot_uniform", trainable=True
        )
        self.b_psi = self.add_weight(name="b_psi", shape=(1,), initializer="zeros")

    def compute_alpha(self, x: Any, g: Any) -> Any:
        """Attention coefficients ``alpha`` in [0, 1], shape ``(B, H, W, 1)`` (eq. 1-2)."""
        theta_x = ops.matmul(x, self.w_x)
        phi_g = ops.matmul(g, self.w_g) + self.b_g
        if self.scale > 1:
            phi_g = ops.repeat(ops.repeat(phi_g, self.scale, axis=1), self.scale, axis=2)
        q = ops.matmul(ops.relu(theta_x + phi_g), self.psi) + self.b_psi
        return ops.sigmoid(q)

    def call(self, inputs: list[Any]) -> Any:
        x, g = inputs
        return x * self.compute_alpha(x, g)

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return tuple(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"inter_channels": self.inter_channels, "scale": self.scale})
        return config


def _conv_block(x: Any, filters: int, name: str, norm: str) -> Any:
    """Two 3x3 conv -> norm -> ReLU, as in U-Net / UNet++ (bias dropped when followed by BN)."""
    use_bn = norm == "batch"
    for k in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not use_bn,
            kernel_initializer="he_normal",
            name=f"{name}_conv{k}",
        )(x)
        if use_bn:
            x = layers.BatchNormalization(name=f"{name}_bn{k}")(x)
        x = layers.ReLU(name=f"{name}_relu{k}")(x)
    return x


def _up(x: Any, filters: int, name: str) -> Any:
    """2x learned upsampling (transposed conv 2x2 stride 2, as in the UNet++ reference code)."""
    return layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=name)(x)


def build_model(
    cfg: ModelConfig,
    n_cell_types: int = len(CELL_TYPES),
    name: str = "attention_unetpp",
) -> keras.Model:
    """Build the (Attention) UNet++ / U-Net described by ``cfg``.

    Args:
        cfg: architecture switches; depth ``D = len(cfg.widths) - 1``.
        n_cell_types: classes of the cell-type head (order of ``CELL_TYPES``).
        name: Keras model name.

    Returns:
        A functional Keras model. Input ``"image"`` of shape ``(None, None, 1)`` float32
        (H and W must be multiples of ``2**D``; :func:`cellseg.model.predict.pad_to_multiple` does
        that). Outputs: dict of ``"seg{j}"`` float32 ``(B, H, W, n_targets)`` sigmoid maps
        (``j = 1..D`` with deep supervision, else only ``j = D``) and ``"cell_type"`` float32
        ``(B, n_cell_types)`` softmax when ``cfg.cell_type_head``.

    Raises:
        ValueError: an invalid config (message names the field).
    """
    check_model_config(cfg, n_cell_types)
    widths = [int(w) for w in cfg.widths]
    depth = len(widths) - 1
    inputs = keras.Input(shape=(None, None, 1), dtype="float32", name=INPUT_NAME)

    # nodes[(i, j)] = X^{i,j}
    nodes: dict[tuple[int, int], Any] = {}
    x = inputs
    for i in range(depth + 1):
        if i > 0:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(nodes[(i - 1, 0)])
        x = _conv_block(x, widths[i], f"X{i}_0", cfg.norm)
        if i == depth and cfg.dropout > 0:
            # The original U-Net puts drop-out at the end of the contracting path.
            x = layers.Dropout(cfg.dropout, name="bottleneck_dropout")(x)
        nodes[(i, 0)] = x

    def decoder_node(i: int, j: int, skip_cols: list[int]) -> Any:
        """X^{i,j} from the skips X^{i,k} (k in skip_cols) and the upsampled X^{i+1,j-1}."""
        coarse = nodes[(i + 1, j - 1)]
        skips = []
        for k in skip_cols:
            skip = nodes[(i, k)]
            if cfg.attention:
                skip = AttentionGate(scale=2, name=f"att_X{i}_{k}_to_X{i}_{j}")([skip, coarse])
            skips.append(skip)
        up = _up(coarse, widths[i], f"X{i + 1}_{j - 1}_up_to_X{i}_{j}")
        merged = layers.Concatenate(name=f"X{i}_{j}_concat")([*skips, up])
        return _conv_block(merged, widths[i], f"X{i}_{j}", cfg.norm)

    outputs: dict[str, Any] = {}
    if cfg.nested:
        # Column by column, so that X^{0,j} (head j) depends only on nodes with i + j' <= j.
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                nodes[(i, j)] = decoder_node(i, j, list(range(j)))
        head_nodes = {j: (0, j) for j in range(1, depth + 1)}
    else:
        for i in range(depth - 1, -1, -1):
            j = depth - i
            nodes[(i, j)] = decoder_node(i, j, [0])
        # Plain U-Net deep supervision: the decoder node of each level, upsampled to full size.
        head_nodes = {j: (depth - j, j) for j in range(1, depth + 1)}

    head_levels = range(1, depth + 1) if cfg.deep_supervision else [depth]
    for j in head_levels:
        i, col = head_nodes[j]
        logits = layers.Conv2D(cfg.n_targets, 1, name=f"{seg_name(j)}_logits")(nodes[(i, col)])
        if i > 0:
            # Upsample logits (cheap: n_targets channels) rather than features.
            logits = layers.UpSampling2D(
                2**i, interpolation="bilinear", name=f"{seg_name(j)}_upsample"
            )(logits)
        outputs[seg_name(j)] = layers.Activation("sigmoid", dtype="float32", name=seg_name(j))(
            logits
        )

    if cfg.cell_type_head:
        pooled = layers.GlobalAveragePooling2D(name="cell_type_pool")(nodes[(depth, 0)])
        outputs[CELL_TYPE_OUTPUT] = layers.Dense(
            n_cell_types, activation="softmax", dtype="float32", name=CELL_TYPE_OUTPUT
        )(pooled)

    return keras.Model(inputs=inputs, outputs=outputs, name=name)


@dataclass
class ModelInfo:
    """Architecture facts recovered from a built or loaded model (no config needed)."""

    depth: int
    widths: list[int]
    nested: bool
    attention: bool
    deep_supervision: bool
    cell_type_head: bool
    n_targets: int
    n_cell_types: int
    norm: str
    dropout: float
    seg_outputs: list[str] = field(default_factory=list)

    def to_model_config(self) -> ModelConfig:
        """The :class:`ModelConfig` that rebuilds this architecture."""
        return ModelConfig(
            widths=list(self.widths),
            nested=self.nested,
            attention=self.attention,
            deep_supervision=self.deep_supervision,
            cell_type_head=self.cell_type_head,
            n_targets=self.n_targets,
            dropout=self.dropout,
            norm=self.norm,
        )


def output_names(model: keras.Model) -> list[str]:
    """Names of the model's outputs (the keys of the dict it returns)."""
    out = model.output
    if isinstance(out, dict):
        return list(out.keys())
    return list(model.output_names)


def seg_output_names(model: keras.Model) -> list[str]:
    """The ``seg{j}`` outputs, sorted by ``j`` (shallowest first, deepest last)."""
    return seg_names(output_names(model))


def _node_layers(model: keras.Model) -> dict[tuple[int, int], layers.Layer]:
    found = {}
    for layer in model.layers:
        m = _NODE_RE.match(layer.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = layer
    return found


def model_info(model: keras.Model) -> ModelInfo:
    """Recover the architecture of a model made by :func:`build_model` from its layers.

    Why: a loaded ``.keras`` file is a graph, not our config; inference, pruning and padding
    need depth, nesting and heads, and must not trust a YAML file that could disagree.

    Raises:
        ValueError: the model was not made by :func:`build_model` (no ``X{i}_0`` nodes).
    """
    nodes = _node_layers(model)
    depth = max((i for (i, j) in nodes if j == 0), default=-1)
    if depth < 1 or any((i, 0) not in nodes for i in range(depth + 1)):
        raise ValueError(
            f"model {model.name!r} was not built by cellseg.model.network.build_model: "
            f"no encoder layers named X{{i}}_0_conv1 (found {sorted(nodes)})"
        )
    widths = [int(nodes[(i, 0)].filters) for i in range(depth + 1)]
    names = output_names(model)
    seg = seg_output_names(model)
    if not seg:
        raise ValueError(f"model {model.name!r} has no seg{{j}} outputs (outputs: {names})")
    levels = [seg_level(n) for n in seg]
    n_targets = int(model.get_layer(f"{seg[-1]}_logits").filters)
    cell_type = CELL_TYPE_OUTPUT in names
    n_cell_types = int(model.get_layer(CELL_TYPE_OUTPUT).units) if cell_type else 0
    dropout_layers = [la for la in model.layers if isinstance(la, layers.Dropout)]
    return ModelInfo(
        depth=depth,
        widths=widths,
        # X^{0,1} exists only in UNet++ (for D == 1 the two architectures coincide).
        nested=(0, 1) in nodes,
        attention=any(isinstance(la, AttentionGate) for la in model.layers),
        deep_supervision=levels == list(range(1, depth + 1)),
        cell_type_head=cell_type,
        n_targets=n_targets,
        n_cell_types=n_cell_types,
        norm="batch" if any(isinstance(la, layers.BatchNormalization) for la in model.layers)
        else "none",
        dropout=float(dropout_layers[0].rate) if dropout_layers else 0.0,
        seg_outputs=seg,
    )


def model_depth(model: keras.Model) -> int:
    """Number of down-sampling steps ``D``; inputs must be multiples of ``2**D``."""
    return model_info(model).depth


def prune_model(model: keras.Model, level: int) -> keras.Model:
    """UNet++ pruning (Zhou et al.): the sub-network up to ``X^{0,level}``.

    Deep supervision trains every ``X^{0,j}`` to segment on its own, so at inference the
    columns right of ``level`` can be dropped for speed. The result shares weights with
    ``model`` (no copy) and contains only the layers needed for ``"seg{level}"`` (and
    ``"cell_type"``, which needs only the encoder).

    Args:
        model: a nested, deep-supervised model from :func:`build_model` (built or loaded).
        level: ``1 <= level <= D``.

    Returns:
        A functional model with outputs ``{"seg{level}": ..., ["cell_type": ...]}``.

    Raises:
        ValueError: the model is not nested + deep-supervised, or ``level`` is out of range.
    """
    info = model_info(model)
    if not info.nested:
        raise ValueError(
            f"prune_model: model {model.name!r} is a plain U-Net (nested=False); only UNet++ "
            "can be pruned, because only its X^{0,j} heads are independent sub-networks"
        )
    expected = [seg_name(j) for j in range(1, info.depth + 1)]
    if info.seg_outputs != expected:
        raise ValueError(
            f"prune_model: model {model.name!r} is not deep-supervised (outputs "
            f"{info.seg_outputs}, expected {expected}); pruned heads would be untrained"
        )
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= info.depth:
        raise ValueError(f"prune_model: level must be an integer in 1..{info.depth}, got {level!r}")
    outputs = {seg_name(level): model.get_layer(seg_name(level)).output}
    if info.cell_type_head:
        outputs[CELL_TYPE_OUTPUT] = model.get_layer(CELL_TYPE_OUTPUT).output
    return keras.Model(inputs=model.input, outputs=outputs, name=f"{model.name}_L{level}")


__all__ = [
    "CELL_TYPE_OUTPUT",
    "AttentionGate",
    "ModelInfo",
    "build_model",
    "model_depth",
    "model_info",
    "output_names",
    "prune_model",
    "seg_output_names",
]
