"""Architecture, attention gate, pruning, saving, and losses/metrics of the Attention UNet++."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import keras
import numpy as np
import pytest

from cellseg.config import ModelConfig, TrainConfig
from cellseg.model.losses import (
    bce_per_channel,
    outline_weights,
    weighted_bce_per_channel,
    BceDiceLoss,
    BodyAccuracy,
    BodyIoU,
    build_losses,
    build_metrics,
    compile_kwargs,
    lovasz_jaccard_per_image,
)
from cellseg.model.network import AttentionGate, build_model, model_depth, model_info, prune_model

WIDTHS = [4, 8, 16]  # depth 2: tiny, CPU-cheap


def tiny_cfg(**kw) -> ModelConfig:
    kw.setdefault("widths", list(WIDTHS))
    return ModelConfig(**kw)


def rand_images(n: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, size, size, 1)).astype("float32")


@pytest.mark.parametrize(
    "nested,attention,deep_supervision", list(itertools.product([True, False], repeat=3))
)
def test_every_ablation_variant_builds_and_runs(nested, attention, deep_supervision):
    cfg = tiny_cfg(nested=nested, attention=attention, deep_supervision=deep_supervision)
    model = build_model(cfg)
    assert model.input.name == "image" or model.layers[0].name == "image"
    out = model(rand_images(), training=False)
    depth = len(WIDTHS) - 1
    seg = [f"seg{j}" for j in range(1, depth + 1)] if deep_supervision else [f"seg{depth}"]
    assert set(out) == {*seg, "cell_type"}
    for name in seg:
        assert tuple(out[name].shape) == (2, 32, 32, 2)
        assert out[name].dtype == "float32"
        v = np.asarray(out[name])
        assert np.all((v >= 0) & (v <= 1))
    assert tuple(out["cell_type"].shape) == (2, 3)
    np.testing.assert_allclose(np.asarray(out["cell_type"]).sum(axis=1), 1.0, rtol=1e-5)

    info = model_info(model)
    assert info.to_model_config() == cfg
    assert model_depth(model) == depth
    n_gates = sum(isinstance(la, AttentionGate) for la in model.layers)
    if not attention:
        assert n_gates == 0
    elif nested:  # X^{i,j} gates its j skips, for i + j <= D, j >= 1
        assert n_gates == sum(j * (depth - j + 1) for j in range(1, depth + 1))
    else:
        assert n_gates == depth


def test_nested_decoder_concatenates_all_same_level_nodes():
    model = build_model(tiny_cfg(widths=[4, 8, 16, 32], nested=True, attention=False))
    # X^{0,3} concat: X^{0,0}, X^{0,1}, X^{0,2} and up(X^{1,2})
    concat = model.get_layer("X0_3_concat")
    assert len(concat.input) == 4
    plain = build_model(tiny_cfg(widths=[4, 8, 16, 32], nested=False, attention=False))
    assert len(plain.get_layer("X0_3_concat").input) == 2
    assert "X0_1_conv1" not in [la.name for la in plain.layers]


def test_no_cell_type_head_norm_none_and_dropout():
    cfg = tiny_cfg(cell_type_head=False, norm="none", dropout=0.3, n_targets=3)
    model = build_model(cfg)
    out = model(rand_images(1), training=False)
    assert set(out) == {"seg1", "seg2"}
    assert tuple(out["seg2"].shape) == (1, 32, 32, 3)
    assert model_info(model).to_model_config() == cfg


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"widths": [8]}, "at least 2"),
        ({"norm": "group"}, "norm"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_targets": 0}, "n_targets"),
    ],
)
def test_bad_config_raises_clear_error(kw, msg):
    with pytest.raises(ValueError, match=msg):
        build_model(tiny_cfg(**kw))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_attention_gate_matches_numpy_equations():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 6, 4)).astype("float32")
    g = rng.normal(size=(2, 4, 3, 6)).astype("float32")
    gate = AttentionGate(inter_channels=3)
    gate([x, g])  # build
    for var in gate.weights:  # non-zero biases too, so every term is exercised
        var.assign(rng.normal(size=var.shape).astype("float32"))
    out = np.asarray(gate([x, g]))

    w_x, w_g = np.asarray(gate.w_x), np.asarray(gate.w_g)
    b_g, psi, b_psi = np.asarray(gate.b_g), np.asarray(gate.psi), np.asarray(gate.b_psi)
    phi = g @ w_g + b_g
    phi_up = phi.repeat(2, axis=1).repeat(2, axis=2)  # g resampled to x's grid
    q = np.maximum(x @ w_x + phi_up, 0.0) @ psi + b_psi  # eq. 1
    alpha = _sigmoid(q)  # eq. 2
    np.testing.assert_allclose(out, alpha * x, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gate.compute_alpha(x, g)), alpha, atol=1e-5)


def test_attention_gate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="inter_channels"):
        AttentionGate(inter_channels=0)
    with pytest.raises(ValueError, match=r"\[x, g\]"):
        AttentionGate()(np.zeros((1, 4, 4, 2), "float32"))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_prune_model_is_smaller_and_matches_full_head(level):
    model = build_model(tiny_cfg(widths=[4, 8, 16, 32]))
    small = prune_model(model, level)
    x = rand_images(2)
    out = small(x, training=False)
    assert set(out) == {f"seg{level}", "cell_type"}
    assert tuple(out[f"seg{level}"].shape) == (2, 32, 32, 2)
    full = model(x, training=False)
    np.testing.assert_allclose(
        np.asarray(out[f"seg{level}"]), np.asarray(full[f"seg{level}"]), atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(out["cell_type"]), np.asarray(full["cell_type"]), atol=1e-6
    )
    if level < 3:
        assert len(small.layers) < len(model.layers)
        assert small.count_params() < model.count_params()
        names = {la.name for la in small.layers}
        assert f"X0_{level + 1}_conv1" not in names


def test_prune_model_errors():
    with pytest.raises(ValueError, match="plain U-Net"):
        prune_model(build_model(tiny_cfg(nested=False)), 1)
    with pytest.raises(ValueError, match="deep-supervised"):
        prune_model(build_model(tiny_cfg(deep_supervision=False)), 1)
    model = build_model(tiny_cfg())
    for bad in (0, 3, 1.5):
        with pytest.raises(ValueError, match=r"level must be an integer in 1\.\.2"):
            prune_model(model, bad)
    toy_in = keras.Input((None, None, 1))
    toy = keras.Model(toy_in, keras.layers.Conv2D(1, 1)(toy_in))
    with pytest.raises(ValueError, match="not built by cellseg"):
        prune_model(toy, 1)


def test_save_and_load_compiled_model_same_predictions(tmp_path):
    model = build_model(tiny_cfg())
    model.compile(optimizer="adam", **compile_kwargs(model, TrainConfig()))
    x = rand_images(2)
    y = {
        "seg1": np.zeros((2, 32, 32, 2), "float32"),
        "seg2": np.zeros((2, 32, 32, 2), "float32"),
        "cell_type": np.array([0, 2]),
    }
    model.train_on_batch(x, y)  # builds the optimizer, so its state is saved too
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode on, no custom_objects
    a, b = model(x, training=False), loaded(x, training=False)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=1e-6)
    assert model_info(loaded) == model_info(model)
    # Pruning works on a loaded graph too.
    small = prune_model(loaded, 1)
    np.testing.assert_allclose(
        np.asarray(small(x)["seg1"]), np.asarray(a["seg1"]), atol=1e-6
    )
    # The compiled losses/metrics came back and still train.
    logs = loaded.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_mixed_precision_outputs_are_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(tiny_cfg())
        out = model(rand_images(1), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(v.dtype == "float32" for v in out.values())
    gates = [la for la in model.layers if isinstance(la, AttentionGate)]
    assert gates and all(la.compute_dtype == "float16" for la in gates)


# ---------------------------------------------------------------- losses and metrics


def _target(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((2, 16, 16, 2)) > 0.7).astype("float32")


def test_loss_perfect_vs_inverse_prediction():
    t = _target()
    dice_only = BceDiceLoss(bce_weight=0.0, dice_weight=1.0)
    bce_only = BceDiceLoss(bce_weight=1.0, dice_weight=0.0)
    both = BceDiceLoss()
    assert float(dice_only(t, t)) < 1e-3
    assert float(bce_only(t, t)) < 1e-3
    assert float(both(t, 1.0 - t)) > 5.0
    assert float(dice_only(t, 1.0 - t)) > 1.9  # ~1 per channel
    half = np.full_like(t, 0.5)
    assert float(both(t, t)) < float(both(t, half)) < float(both(t, 1.0 - t))


def test_loss_channel_weights_and_empty_channel():
    t = _target()
    p = np.clip(t + 0.3, 0, 1).astype("float32")
    body_only = float(BceDiceLoss(channel_weights=(1.0, 0.0))(t, p))
    border_only = float(BceDiceLoss(channel_weights=(0.0, 1.0))(t, p))
    np.testing.assert_allclose(body_only + border_only, float(BceDiceLoss()(t, p)), rtol=1e-5)
    empty = np.zeros_like(t)  # a crop with no touching cells: small loss for a small prediction
    assert float(BceDiceLoss(bce_weight=0.0)(empty, empty + 1e-4)) < 0.2
    with pytest.raises(ValueError, match="3 channel weights"):
        BceDiceLoss(channel_weights=(1, 1, 1))(t, p)
    with pytest.raises(ValueError, match="not both 0"):
        BceDiceLoss(bce_weight=0, dice_weight=0)


def test_outline_weights_mark_a_band_on_both_sides_of_the_outline():
    t = np.zeros((1, 12, 12, 2), np.float32)
    t[0, 3:9, 3:9, 0] = 1  # a 6 x 6 cell
    w = np.asarray(outline_weights(keras.ops.convert_to_tensor(t), 3.0, 1))[0, ..., 0]
    heavy = w == 4.0
    assert heavy.sum() == 8 * 8 - 4 * 4  # one pixel out (8 x 8 ring) and one in (to 4 x 4)
    assert heavy[2, 2] and heavy[3, 3] and not heavy[4, 4] and not heavy[1, 1]
    assert set(np.unique(w)) == {1.0, 4.0}


def test_outline_weighted_loss():
    """Unit weights give plain BCE; errors on the outline cost more than errors far from it;
    the knobs survive get_config."""
    t = np.zeros((2, 16, 16, 2), np.float32)
    t[:, 4:12, 4:12, 0] = 1  # one 8 x 8 cell, no touching border
    p = np.clip(t + 0.3, 0, 1).astype("float32")
    ones = np.ones(t.shape[:-1] + (1,), np.float32)
    np.testing.assert_allclose(np.asarray(weighted_bce_per_channel(t, p, ones)),
                               np.asarray(bce_per_channel(t, p)), rtol=1e-5)
    plain, outline = BceDiceLoss(dice_weight=0.0), BceDiceLoss(dice_weight=0.0,
                                                                outline_weight=5.0)
    # The same number of wrong pixels (8 per image): on the outline, or in a far corner.
    p_edge, p_far = t.copy(), t.copy()
    p_edge[:, 4, 4:12, 0] = 0.0
    p_far[:, 0, 0:8, 0] = 1.0
    p_edge, p_far = p_edge.clip(0.01, 0.99), p_far.clip(0.01, 0.99)
    assert float(plain(t, p_edge)) == pytest.approx(float(plain(t, p_far)), rel=1e-5)
    assert float(outline(t, p_edge)) > 2.0 * float(outline(t, p_far))
    again = BceDiceLoss.from_config(outline.get_config())
    assert again.outline_weight == 5.0 and again.outline_width == 2
    with pytest.raises(ValueError, match="outline_weight"):
        BceDiceLoss(outline_weight=-1.0)


def test_lovasz_equals_one_minus_iou_on_binary_predictions():
    """The Lovász extension is exact on 0/1 predictions, per image; on soft predictions it is
    finite, differentiable and zero only for a perfect map."""
    rng = np.random.default_rng(3)
    t = (rng.random((4, 20, 20)) > 0.6).astype(np.float32)
    p = (rng.random((4, 20, 20)) > 0.5).astype(np.float32)
    iou = (t * p).sum(axis=(1, 2)) / np.maximum(t, p).sum(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(lovasz_jaccard_per_image(t, p)), 1 - iou, rtol=1e-5)
    assert np.asarray(lovasz_jaccard_per_image(t, t)) == pytest.approx(np.zeros(4))
    soft = keras.Variable(rng.random((4, 20, 20)).astype(np.float32))
    import tensorflow as tf
    with tf.GradientTape() as tape:
        value = keras.ops.mean(lovasz_jaccard_per_image(t, soft))
    grad = tape.gradient(value, soft.value).numpy()
    assert 0 < float(value) < 1 and np.isfinite(grad).all() and np.abs(grad).sum() > 0
    # Moving a prediction toward its truth lowers the loss.
    assert float(keras.ops.mean(lovasz_jaccard_per_image(t, 0.5 * (soft.numpy() + t)))) < float(value)


def test_lovasz_term_adds_to_the_body_loss_and_survives_get_config():
    t = np.zeros((2, 16, 16, 2), np.float32)
    t[:, 4:12, 4:12, 0] = 1
    p = np.clip(t + 0.3, 0.01, 0.99).astype("float32")
    base, with_lovasz = BceDiceLoss(), BceDiceLoss(lovasz_weight=2.0)
    lov = float(keras.ops.mean(lovasz_jaccard_per_image(t[..., 0], p[..., 0])))
    assert float(keras.ops.mean(with_lovasz(t, p))) == pytest.approx(
        float(keras.ops.mean(base(t, p))) + 2.0 * lov, rel=1e-5)
    assert BceDiceLoss.from_config(with_lovasz.get_config()).lovasz_weight == 2.0
    with pytest.raises(ValueError, match="lovasz_weight"):
        BceDiceLoss(lovasz_weight=-0.5)


def test_body_metrics():
    t = np.zeros((1, 4, 4, 2), "float32")
    t[0, :2, :, 0] = 1  # 8 body pixels
    p = np.zeros_like(t)
    p[0, :1, :, 0] = 0.9  # 4 predicted, all correct
    acc, iou = BodyAccuracy(), BodyIoU()
    acc.update_state(t, p)
    iou.update_state(t, p)
    assert float(acc.result()) == pytest.approx(12 / 16)
    assert float(iou.result()) == pytest.approx(0.5)
    iou.reset_state()
    iou.update_state(np.zeros_like(t), np.zeros_like(t))
    assert float(iou.result()) == 1.0


def test_build_losses_weights_and_names():
    @dataclass
    class W:
        body_weight: float = 2.0
        border_weight: float = 0.5
        bce_weight: float = 1.0
        dice_weight: float = 1.0
        cell_type_weight: float = 0.3
        outline_weight: float = 2.0
        outline_width: int = 1
        lovasz_weight: float = 0.5

    loss, weights = build_losses(["seg1", "seg2", "seg3", "cell_type"], W())
    assert set(loss) == {"seg1", "seg2", "seg3", "cell_type"}
    assert weights["seg1"] == pytest.approx(1 / 3)
    assert weights["cell_type"] == pytest.approx(0.3)
    assert loss["seg1"].outline_weight == 2.0 and loss["seg1"].outline_width == 1
    assert loss["seg2"].lovasz_weight == 0.5
    assert loss["seg3"].channel_weights == [2.0, 0.5]
    assert isinstance(loss["cell_type"], keras.losses.SparseCategoricalCrossentropy)
    loss, weights = build_losses(["seg4"], W(), sparse_cell_type=False)
    assert weights == {"seg4": 1.0}
    metrics = build_metrics(["seg1", "seg2", "cell_type"])
    assert set(metrics) == {"seg2", "cell_type"}
    with pytest.raises(ValueError, match="unexpected outputs"):
        build_losses(["seg1", "mask"], W())


def test_tiny_model_loss_decreases():
    keras.utils.set_random_seed(0)
    model = build_model(tiny_cfg())
    model.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_kwargs(model, TrainConfig()))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 32, 1)).astype("float32")
    seg = (rng.random((2, 32, 32, 2)) > 0.6).astype("float32")
    y = {"seg1": seg, "seg2": seg, "cell_type": np.array([0, 1])}
    losses = [model.train_on_batch(x, y, return_dict=True)["loss"] for _ in range(8)]
    assert losses[-1] < losses[0]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert {"seg2_body_acc", "seg2_body_iou", "cell_type_acc"} <= set(logs)
