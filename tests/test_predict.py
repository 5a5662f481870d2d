"""Whole-image prediction: normalisation, padding, head modes, TTA and fold ensembles."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cellseg.config import ModelConfig
from cellseg.model.predict import crop, normalize_image, pad_to_multiple, predict_images, pruned
from cellseg.model.network import build_model, prune_model


def fake_model(seed: int, n_targets: int = 2, cell_types: bool = False) -> keras.Model:
    """A 1x1 conv + sigmoid: it commutes with flips, so TTA must not change its output."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 1), name="image")
    seg = keras.layers.Conv2D(n_targets, 1, activation="sigmoid", name="seg1")(inp)
    outputs = {"seg1": seg}
    if cell_types:
        pooled = keras.layers.GlobalAveragePooling2D()(inp)
        outputs["cell_type"] = keras.layers.Dense(3, activation="softmax", name="cell_type")(
            pooled
        )
    return keras.Model(inp, outputs)


def direct(model: keras.Model, x: np.ndarray, key: str = "seg1") -> np.ndarray:
    return np.asarray(model(x[..., None] if x.ndim == 3 else x, training=False)[key])


@pytest.fixture(scope="module")
def unetpp() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_model(ModelConfig(widths=[4, 8, 16]))


def images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, h, w)).astype("float32")


def test_normalize_image():
    img = np.random.default_rng(0).integers(0, 256, size=(20, 30), dtype=np.uint8)
    out = normalize_image(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
    flat = normalize_image(np.full((5, 5), 128, np.uint8))
    assert np.all(flat == 0)
    with pytest.raises(ValueError, match="NaN"):
        normalize_image(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize("shape", [(2, 37, 53), (1, 37, 53, 3), (1, 32, 64), (1, 1, 5)])
def test_pad_to_multiple_and_crop_back(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    padded, (ph, pw) = pad_to_multiple(x, 16)
    assert padded.shape[1] % 16 == 0 and padded.shape[2] % 16 == 0
    assert padded.shape[1] == shape[1] + ph and padded.shape[2] == shape[2] + pw
    np.testing.assert_array_equal(crop(padded, shape[1], shape[2]), x)
    if shape[1] > 1 and ph:  # reflect: row H mirrors row H-2
        np.testing.assert_array_equal(padded[:, shape[1], : shape[2]], x[:, shape[1] - 2])


def test_pad_errors():
    with pytest.raises(ValueError, match="N, H, W"):
        pad_to_multiple(np.zeros((4, 4)), 8)


def test_predict_odd_size_with_unetpp(unetpp):
    x = images(3, 37, 53)
    probs, cell_type = predict_images(unetpp, x, heads="mean", batch_size=2)
    assert probs.shape == (3, 37, 53, 2) and probs.dtype == np.float32
    assert cell_type.shape == (3, 3) and cell_type.dtype == np.float32
    np.testing.assert_allclose(cell_type.sum(axis=1), 1.0, rtol=1e-5)
    # (N, H, W, 1) input gives the same result.
    probs4, _ = predict_images(unetpp, x[..., None], heads="mean", batch_size=3)
    np.testing.assert_allclose(probs4, probs, atol=1e-6)


def test_head_modes_match_direct_outputs(unetpp):
    x = images(2, 32, 32)
    out = unetpp(x[..., None], training=False)
    seg1, seg2 = np.asarray(out["seg1"]), np.asarray(out["seg2"])
    mean, _ = predict_images(unetpp, x, heads="mean")
    last, _ = predict_images(unetpp, x, heads="last")
    p1, ct = predict_images(unetpp, x, heads="prune=1")
    np.testing.assert_allclose(mean, (seg1 + seg2) / 2, atol=1e-5)
    np.testing.assert_allclose(last, seg2, atol=1e-5)
    np.testing.assert_allclose(p1, seg1, atol=1e-5)
    np.testing.assert_allclose(ct, np.asarray(out["cell_type"]), atol=1e-5)
    assert pruned(unetpp, 1) is pruned(unetpp, 1)  # built once, cached


def test_prune_mode_rejects_plain_unet():
    plain = build_model(ModelConfig(widths=[4, 8, 16], nested=False))
    with pytest.raises(ValueError, match="plain U-Net"):
        predict_images(plain, images(1, 32, 32), heads="prune=1")


def test_tta_of_equivariant_model_equals_plain_prediction():
    model = fake_model(0, cell_types=True)
    x = images(3, 37, 53)
    plain, ct_plain = predict_images(model, x, tta=["identity"])
    np.testing.assert_allclose(plain, direct(model, x), atol=1e-6)
    tta, ct_tta = predict_images(model, x, tta=["identity", "hflip", "vflip", "hvflip"])
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    np.testing.assert_allclose(ct_tta, ct_plain, atol=1e-6)
    only_flip, _ = predict_images(model, x, tta=["hvflip"], batch_size=2)
    np.testing.assert_allclose(only_flip, plain, atol=1e-6)


def test_tta_undoes_flips_for_position_dependent_model(unetpp):
    """A real UNet++ is not flip-equivariant, but undone TTA must stay aligned with the input:
    flipping the input image flips the TTA-averaged output."""
    x = images(1, 32, 32)
    tta = ["identity", "hflip", "vflip", "hvflip"]
    a, _ = predict_images(unetpp, x, heads="last", tta=tta)
    b, _ = predict_images(unetpp, x[:, :, ::-1], heads="last", tta=tta)
    np.testing.assert_allclose(b[:, :, ::-1], a, atol=1e-5)


def test_ensemble_is_mean_of_models():
    m1, m2 = fake_model(1), fake_model(2)
    x = images(2, 20, 24)
    p1, ct_none = predict_images(m1, x)
    p2, _ = predict_images(m2, x)
    assert not np.allclose(p1, p2)
    ens, _ = predict_images([m1, m2], x)
    np.testing.assert_allclose(ens, (p1 + p2) / 2, atol=1e-6)
    assert ct_none.shape == (2, 0)


def test_ensemble_cell_type_mean(unetpp):
    other = build_model(ModelConfig(widths=[4, 8, 16]))
    x = images(2, 32, 32)
    _, c1 = predict_images(unetpp, x)
    _, c2 = predict_images(other, x)
    _, c = predict_images([unetpp, other], x)
    np.testing.assert_allclose(c, (c1 + c2) / 2, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"tta": ["rot90"]}, "tta"),
        ({"tta": []}, "tta"),
        ({"heads": "first"}, "heads"),
        ({"heads": "prune=x"}, "heads"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        predict_images(fake_model(0), images(1, 8, 8), **kwargs)


def test_bad_image_shapes():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        predict_images(fake_model(0), np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="no models"):
        predict_images([], images(1, 8, 8))


def test_channel_mismatch_in_ensemble():
    with pytest.raises(ValueError, match="channels"):
        predict_images([fake_model(0, 2), fake_model(1, 3)], images(1, 8, 8))


def test_prune_cached_model_equals_prune_model(unetpp):
    x = images(1, 32, 32)
    a = np.asarray(prune_model(unetpp, 2)(x[..., None])["seg2"])
    b, _ = predict_images(unetpp, x, heads="prune=2")
    np.testing.assert_allclose(b, a, atol=1e-5)
