import keras
import numpy as np
import pytest

from cifar10_mlops.training.model import (
    WHITEN_LAYER,
    FusedBatchNormalization,
    build_model,
    dirac_init,
    fit_whitening,
    with_tta,
)


def test_baseline_is_the_studys_network():
    model = build_model("baseline")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [c.filters for c in convs] == [32, 64, 64]
    assert [d.units for d in dense] == [64, 10]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    # The study's network has 123,466 parameters, 224 of them biases of the layers followed
    # by BatchNormalization, which adds its own offset; here those biases are left out.
    assert model.count_params() == 123_466 - (32 + 64 + 64 + 64)


def test_deeper_variant_has_three_blocks_and_dropout():
    model = build_model("deeper", conv_1_filters=16, conv_2_filters=32, dense_units=64, dropout=0.3)
    convs = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == [16, 16, 32, 32, 64, 64]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [
        0.3
    ] * 4


@pytest.mark.parametrize("architecture", ["baseline", "deeper", "fast"])
def test_model_takes_raw_uint8_images_and_returns_probabilities(architecture):
    model = build_model(architecture, conv_1_filters=8, conv_2_filters=8, dense_units=8)
    assert model.inputs[0].dtype == "uint8"
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    probs = model.predict(images, verbose=0)
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'vgg16'"):
        build_model("vgg16")


def test_fast_network_has_whitening_three_blocks_and_no_hidden_dense_layer():
    model = build_model("fast", conv_1_filters=16, conv_2_filters=32)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [24, 16, 16, 32, 32, 64, 64]
    # The whitening kernel is fixed; its bias trains (until train.whiten_bias_epochs).
    whiten = convs[0]
    assert whiten.name == WHITEN_LAYER and [w.name for w in whiten.trainable_weights] == ["bias"]
    assert [d.units for d in model.layers if isinstance(d, keras.layers.Dense)] == [10]
    # airbench94's widths, which a third-block setting makes expressible.
    wide = build_model("fast", conv_1_filters=64, conv_2_filters=256, conv_3_filters=256)
    convs = [layer for layer in wide.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [24, 64, 64, 256, 256, 256, 256]


@pytest.mark.parametrize(
    ("head", "std", "scale"),
    [("airbench94", 1 / (3 * 64) ** 0.5, 1 / 9), ("airbench94_muon", 1.0, 1 / 64)],
)
def test_fast_heads_start_at_their_recipes_scale(head, std, scale):
    # airbench94: PyTorch's default Linear init (std 1/sqrt(3 fan_in)), logits x 1/9;
    # airbench94_muon: the init rescaled to std 1, logits / the last block's width.
    keras.utils.set_random_seed(0)
    model = build_model("fast", conv_1_filters=16, conv_2_filters=32, conv_3_filters=64, head=head)
    kernel = keras.ops.convert_to_numpy(model.get_layer("dense").kernel)
    assert kernel.std() == pytest.approx(std, rel=0.1)
    assert model.get_layer("logits").scale == pytest.approx(scale)


def test_dirac_init_makes_a_fresh_block_the_identity_on_its_first_channels():
    model = build_model("fast", conv_1_filters=32, conv_2_filters=48, conv_3_filters=48)
    dirac_init(model)
    convs = [
        c for c in model.layers if isinstance(c, keras.layers.Conv2D) and c.name != WHITEN_LAYER
    ]
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 32)).astype(np.float32)
    block2 = convs[2]  # 32 -> 48 channels: the identity on the first 32
    out = keras.ops.convert_to_numpy(block2(x))
    np.testing.assert_allclose(out[..., :32], x, atol=1e-6)
    # The other filters keep their random init (PyTorch's scale: +-1/sqrt(fan_in)).
    rest = keras.ops.convert_to_numpy(block2.kernel)[..., 32:]
    assert 0 < np.abs(rest).max() <= 1 / np.sqrt(3 * 3 * 32) and np.abs(rest).std() > 0.01


def test_whitening_decorrelates_the_patches_it_was_fitted_on():
    rng = np.random.default_rng(0)
    # Correlated pixels: a smooth random field, as in natural images.
    base = rng.normal(size=(200, 8, 8, 3))
    images = np.clip(128 + 40 * np.repeat(np.repeat(base, 4, 1), 4, 2), 0, 255).astype(np.uint8)
    model = build_model("fast", conv_1_filters=8, conv_2_filters=8)
    fit_whitening(model, images)
    assert not model.get_layer(WHITEN_LAYER).bias.numpy().any()  # airbench: the bias starts at 0
    features = keras.Model(model.inputs, model.get_layer(WHITEN_LAYER).output)
    out = features.predict(images, verbose=0).reshape(-1, 24)[:, :12]  # the negatives repeat
    # As airbench: the standardised patches' second moment, largest directions first, so
    # unit energy along the well-conditioned directions and no correlation between them.
    moment = out.T @ out / len(out)
    np.testing.assert_allclose(np.diag(moment)[:6], 1, atol=0.05)
    off_diagonal = moment - np.diag(np.diag(moment))
    assert np.abs(off_diagonal).max() < 0.01


def test_fused_batch_norm_trains_like_keras_batch_norm():
    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 5, 5, 4)).astype(np.float32)
    fused = FusedBatchNormalization(momentum=0.6, scale=False)
    stock = keras.layers.BatchNormalization(momentum=0.6, scale=False)
    fused.build(x.shape), stock.build(x.shape)
    np.testing.assert_allclose(fused(x, training=True), stock(x, training=True), atol=1e-4)
    # The moving statistics move the same way (variance up to Bessel's n/(n-1), n = 400).
    np.testing.assert_allclose(fused.moving_mean, stock.moving_mean, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, stock.moving_variance, rtol=3e-3)
    np.testing.assert_allclose(
        fused(x, training=False), stock(x, training=False), rtol=3e-3, atol=1e-3
    )


def _logits(model, images):
    return keras.Model(model.inputs, model.get_layer("logits").output).predict(images, verbose=0)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _shift(images, offset):
    """airbench's 1-pixel diagonal translation: reflect-pad by 1, crop at (1 + offset)."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    return padded[:, 1 + offset : 33 + offset, 1 + offset : 33 + offset]


@pytest.mark.parametrize("architecture", ["baseline", "fast"])
def test_tta_averages_the_logits_of_the_mirror_and_translated_views(architecture, tmp_path):
    model = build_model(architecture, conv_1_filters=8, conv_2_filters=8, dense_units=8)
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mirror = images[:, :, ::-1]
    level1 = (_logits(model, images) + _logits(model, mirror)) / 2
    np.testing.assert_allclose(
        with_tta(model, 1).predict(images, verbose=0), _softmax(level1), atol=1e-5
    )
    views = [_shift(images, -1), _shift(images, 1)]
    translated = sum(_logits(model, v) + _logits(model, v[:, :, ::-1]) for v in views) / 4
    expected = _softmax(level1 / 2 + translated / 2)  # airbench's weights: 1/4 and 1/8 each
    tta = with_tta(model, 2)
    np.testing.assert_allclose(tta.predict(images, verbose=0), expected, atol=1e-5)
    assert with_tta(model, 0) is model
    # Stock layers only: plain keras.models.load_model gives back the same predictions.
    tta.save(tmp_path / "tta.keras")
    loaded = keras.models.load_model(tmp_path / "tta.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)
