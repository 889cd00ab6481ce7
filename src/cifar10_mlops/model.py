"""CNN architectures, written once and used by both `train` and the tuner's hypermodel.

Every model takes raw uint8 images of shape (32, 32, 3): pixel scaling to [0, 1] is the
first layer, so a saved model needs no preprocessing outside it.
"""

from __future__ import annotations

import keras
from keras import layers

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
ARCHITECTURES = ("baseline", "deeper")


# Keras' default momentum of 0.99 leaves the moving statistics hundreds of steps behind the
# weights: after two epochs on 10,000 images (158 steps) a network at 46 % training accuracy
# scored 10 % on validation, which made short Hyperband trials a coin toss. 0.9 (PyTorch's
# default) tracks within a few dozen steps.
BN_MOMENTUM = 0.9


def _conv_bn_relu(x, filters: int, padding: str):
    # The convolution has no bias: BatchNormalization right after it adds one.
    x = layers.Conv2D(filters, 3, padding=padding, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.Activation("relu")(x)


def _dense_bn_relu(x, units: int):
    x = layers.Dense(units, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.Activation("relu")(x)


def build_model(
    architecture: str = "baseline",
    *,
    conv_1_filters: int = 32,
    conv_2_filters: int = 64,
    dense_units: int = 64,
    dropout: float = 0.0,
    num_classes: int = NUM_CLASSES,
) -> keras.Model:
    """Build an uncompiled CNN that maps uint8 images to class probabilities.

    - ``baseline`` is the study's §3.3 network: conv(c1)-pool, conv(c2)-pool, conv(c2),
      dense(units), each followed by BatchNormalization and ReLU; ``dropout`` > 0 adds
      dropout before the classifier. With the defaults it is the study's model exactly.
    - ``deeper`` is the study's §4.3 "increased depth + dropout" variant: three VGG-style
      blocks of two same-padded convolutions (c1, c2, 2*c2 filters), each block closed by
      max-pooling and dropout, then dense(units) with dropout.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    if architecture == "baseline":
        x = _conv_bn_relu(x, conv_1_filters, "valid")
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn_relu(x, conv_2_filters, "valid")
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn_relu(x, conv_2_filters, "valid")
        x = layers.Flatten()(x)
    else:
        for filters in (conv_1_filters, conv_2_filters, 2 * conv_2_filters):
            x = _conv_bn_relu(x, filters, "same")
            x = _conv_bn_relu(x, filters, "same")
            x = layers.MaxPooling2D(2)(x)
            if dropout > 0:
                x = layers.Dropout(dropout)(x)
        x = layers.Flatten()(x)
    x = _dense_bn_relu(x, dense_units)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"cifar10_{architecture}")


def forward_mflops(model: keras.Model) -> float:
    """Millions of floating-point operations (2 per multiply-add) for one image's forward pass,
    counting convolutions and dense layers, which dominate a CNN's cost."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_h, kernel_w, channels_in, _ = layer.kernel.shape
            flops += 2 * height * width * channels_out * kernel_h * kernel_w * channels_in
        elif isinstance(layer, layers.Dense):
            units_in, units_out = layer.kernel.shape
            flops += 2 * units_in * units_out
    return flops / 1e6
