import keras
import numpy as np
import pytest

from cifar10_mlops.model import (
    FusedBatchNormalization,
    build_model,
    fit_whitening,
    with_flip_averaging,
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
    assert convs[0].name == "whiten" and not convs[0].trainable
    assert [d.units for d in model.layers if isinstance(d, keras.layers.Dense)] == [10]


def test_whitening_decorrelates_the_patches_it_was_fitted_on():
    rng = np.random.default_rng(0)
    # Correlated pixels: a smooth random field, as in natural images.
    base = rng.normal(size=(200, 8, 8, 3))
    images = np.clip(128 + 40 * np.repeat(np.repeat(base, 4, 1), 4, 2), 0, 255).astype(np.uint8)
    model = build_model("fast", conv_1_filters=8, conv_2_filters=8)
    fit_whitening(model, images)
    features = keras.Model(model.inputs, model.get_layer("whiten").output)
    out = features.predict(images, verbose=0).reshape(-1, 24)[:, :12]  # the negatives repeat
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-3)
    covariance = np.cov(out, rowvar=False)
    # Unit variance along the well-conditioned directions, no correlation between them.
    np.testing.assert_allclose(np.diag(covariance)[-6:], 1, atol=0.05)
    off_diagonal = covariance - np.diag(np.diag(covariance))
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


def test_flip_averaging_averages_an_image_and_its_mirror():
    model = build_model("baseline", conv_1_filters=8, conv_2_filters=8, dense_units=8)
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    averaged = with_flip_averaging(model).predict(images, verbose=0)
    expected = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
