import keras
import numpy as np
import pytest

from cifar10_mlops.model import build_model


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


@pytest.mark.parametrize("architecture", ["baseline", "deeper"])
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
