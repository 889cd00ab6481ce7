"""CNN architectures, written once and used by both `train` and the tuner's hypermodel.

Every model takes raw uint8 images of shape (32, 32, 3): pixel scaling to [0, 1] is the
first layer, so a saved model needs no preprocessing outside it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from cifar10_mlops.config import ARCHITECTURES

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


# Keras' default momentum of 0.99 leaves the moving statistics hundreds of steps behind the
# weights: after two epochs on 10,000 images (158 steps) a network at 46 % training accuracy
# scored 10 % on validation, which made short Hyperband trials a coin toss. 0.9 (PyTorch's
# default) tracks within a few dozen steps.
BN_MOMENTUM = 0.9
# `fast` (after airbench): 2x2 patches whitened by 12 eigenvectors and their negatives, and a
# logit temperature that keeps the untrained network's softmax flat.
WHITEN_PATCH, WHITEN_EPS, LOGIT_SCALE = 2, 5e-4, 1 / 9


class FusedBatchNormalization(layers.BatchNormalization):
    """BatchNormalization that trains through TensorFlow's fused kernel on 4-D inputs.

    Keras 3 normalises with separate mean, variance and arithmetic ops; the fused kernel
    (oneDNN on CPU) does it in one pass and doubled the baseline CNN's training throughput on
    2 CPU cores (benchmarks/NOTES.md). Same weights and update rule as the Keras layer, so
    `portable_copy` can move a trained model onto the stock layer for saving.
    """

    def call(self, inputs, training=None, mask=None):
        if not training or len(inputs.shape) != 4 or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones([channels])
        offset = self.beta if self.center else tf.zeros([channels])
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1 - momentum))
        return outputs


def build_model(
    architecture: str = "baseline",
    *,
    conv_1_filters: int = 32,
    conv_2_filters: int = 64,
    dense_units: int = 64,
    dropout: float = 0.0,
    num_classes: int = NUM_CLASSES,
    fused_batch_norm: bool = False,
) -> keras.Model:
    """Build an uncompiled CNN that maps uint8 images to class probabilities.

    - ``baseline`` is the study's §3.3 network: conv(c1)-pool, conv(c2)-pool, conv(c2),
      dense(units), each followed by BatchNormalization and ReLU; ``dropout`` > 0 adds
      dropout before the classifier. With the defaults it is the study's model exactly.
    - ``deeper`` is the study's §4.3 "increased depth + dropout" variant: three VGG-style
      blocks of two same-padded convolutions (c1, c2, 2*c2 filters), each block closed by
      max-pooling and dropout, then dense(units) with dropout.
    - ``fast`` is a Keras port of airbench's network (KellerJordan/cifar10-airbench): a frozen
      2x2 patch-whitening convolution (set by `fit_whitening`), three blocks of
      conv-pool-BN-GELU, conv-BN-GELU (c1, c2, 2*c2 filters), global max-pooling and a linear
      classifier with a temperature; no hidden dense layer, so ``dense_units`` is unused.

    ``fused_batch_norm`` trains with FusedBatchNormalization (faster; see `portable_copy`).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    norm = FusedBatchNormalization if fused_batch_norm else layers.BatchNormalization
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    widths = (conv_1_filters, conv_2_filters, 2 * conv_2_filters)
    if architecture == "fast":
        return _fast(x, inputs, widths, dropout, num_classes, norm)
    if architecture == "baseline":
        x = _conv_bn_relu(x, conv_1_filters, "valid", norm)
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn_relu(x, conv_2_filters, "valid", norm)
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn_relu(x, conv_2_filters, "valid", norm)
    else:
        for filters in widths:
            x = _conv_bn_relu(x, filters, "same", norm)
            x = _conv_bn_relu(x, filters, "same", norm)
            x = layers.MaxPooling2D(2)(x)
            if dropout > 0:
                x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, use_bias=False)(x)
    x = norm(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"cifar10_{architecture}")


def _conv_bn_relu(x, filters: int, padding: str, norm):
    # The convolution has no bias: BatchNormalization right after it adds one.
    x = layers.Conv2D(filters, 3, padding=padding, use_bias=False)(x)
    x = norm(momentum=BN_MOMENTUM)(x)
    return layers.Activation("relu")(x)


def _fast(x, inputs, widths, dropout: float, num_classes: int, norm) -> keras.Model:
    # airbench's BatchNorm: no learned scale (GELU follows) and fast-moving statistics.
    def bn(h):
        return norm(momentum=0.6, epsilon=1e-5, scale=False)(h)

    channels = 2 * WHITEN_PATCH**2 * INPUT_SHAPE[-1]
    x = layers.Conv2D(channels, WHITEN_PATCH, trainable=False, name="whiten")(x)
    x = layers.Activation("gelu")(x)
    for filters in widths:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Activation("gelu")(bn(x))
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.Activation("gelu")(bn(x))
    x = layers.GlobalMaxPooling2D()(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    x = layers.Rescaling(LOGIT_SCALE, name="temperature")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="cifar10_fast")


def fit_whitening(model: keras.Model, images: np.ndarray, *, sample: int = 5000) -> None:
    """Set a `fast` model's frozen first layer to whiten 2x2 patches of `images` (uint8).

    The filters are the patch covariance's eigenvectors scaled by 1/sqrt(eigenvalue) and their
    negatives, and the bias centres the patches, so the layer's outputs are decorrelated with
    unit variance on the training distribution. Takes the first `sample` images.
    """
    layer = model.get_layer("whiten")
    pixels = images[:sample].astype(np.float32) / 255
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (2, 2), axis=(1, 2))
    # (n, 31, 31, channels, kh, kw) -> rows laid out like a Conv2D kernel: (kh, kw, channels)
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, WHITEN_PATCH**2 * pixels.shape[-1])
    mean = patches.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    filters = eigenvectors / np.sqrt(eigenvalues + WHITEN_EPS)
    filters = np.concatenate([filters, -filters], axis=1)
    kernel = filters.reshape(WHITEN_PATCH, WHITEN_PATCH, pixels.shape[-1], -1)
    layer.set_weights([kernel.astype(np.float32), (-mean @ filters).astype(np.float32)])


def with_flip_averaging(model: keras.Model) -> keras.Model:
    """`model` predicting the mean of an image's and its mirror image's probabilities (flip
    test-time augmentation), from stock layers only, so it loads without this package."""
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")
    # A horizontal flip as a fixed matrix: bring the width axis last, reverse it, put it back.
    width = INPUT_SHAPE[1]
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    x = layers.Permute((1, 3, 2))(x)
    mirror = layers.Dense(width, use_bias=False, trainable=False, name="mirror")
    x = mirror(x)
    mirror.set_weights([np.eye(width, dtype=np.float32)[::-1]])
    x = layers.Permute((1, 3, 2))(x)
    outputs = layers.Average(dtype="float32", name="probs")([model(inputs), model(x)])
    return keras.Model(inputs, outputs, name=f"{model.name}_tta")


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
