"""CNN architectures, written once and used by both `train` and the tuner's hypermodel.

Every model takes raw uint8 images of shape (32, 32, 3): pixel scaling to [0, 1] is the
first layer, so a saved model needs no preprocessing outside it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from cifar10_mlops.core.settings import ARCHITECTURES, block_widths

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


# Keras' default momentum of 0.99 leaves the moving statistics hundreds of steps behind the
# weights: after two epochs on 10,000 images (158 steps) a network at 46 % training accuracy
# scored 10 % on validation, which made short Hyperband trials a coin toss. 0.9 (PyTorch's
# default) tracks within a few dozen steps.
BN_MOMENTUM = 0.9
# `fast` (airbench94, KellerJordan/cifar10-airbench legacy/airbench94.py): inputs standardised
# with the CIFAR-10 channel statistics, 2x2 patches whitened by 12 eigenvectors and their
# negatives (eps in standardised units), a logit temperature that keeps the untrained
# network's softmax flat.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
WHITEN_PATCH, WHITEN_EPS, LOGIT_SCALE = 2, 5e-4, 1 / 9
WHITEN_LAYER = "whiten"  # the `fast` network's whitening layer, found by name in training


def torch_init() -> keras.initializers.Initializer:
    """PyTorch's default weight init (kaiming_uniform with a = sqrt(5)): uniform in
    +-1/sqrt(fan_in). A new one per layer, made after seeding: an initializer made without a
    seed draws its own from Python's random when it is created, so one made at import time
    would make every training's weights differ."""
    return keras.initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform")


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
    conv_3_filters: int | None = None,
    dense_units: int = 64,
    dropout: float = 0.0,
    num_classes: int = NUM_CLASSES,
    fused_batch_norm: bool = False,
    head: str = "airbench94",
) -> keras.Model:
    """Build an uncompiled CNN that maps uint8 images to class probabilities.

    Every architecture ends in a `logits` layer and a softmax named `probs` (test-time
    augmentation averages the logits).

    - ``baseline`` is the study's §3.3 network: conv(c1)-pool, conv(c2)-pool, conv(c2),
      dense(units), each followed by BatchNormalization and ReLU; ``dropout`` > 0 adds
      dropout before the classifier. With the defaults it is the study's model exactly.
    - ``deeper`` is the study's §4.3 "increased depth + dropout" variant: three VGG-style
      blocks of two same-padded convolutions (c1, c2, c3 filters), each block closed by
      max-pooling and dropout, then dense(units) with dropout.
    - ``fast`` is airbench94's network: standardised pixels, a 2x2 patch-whitening
      convolution (kernel frozen, set by `fit_whitening`; bias trained, see
      train.whiten_bias_epochs), three blocks of conv-pool-BN-GELU, conv-BN-GELU (c1, c2, c3
      filters), global max-pooling and a linear classifier with a temperature; PyTorch's
      default init (call `dirac_init` for airbench's identity init); no hidden dense layer,
      so ``dense_units`` is unused. ``head`` "airbench94" starts the classifier at PyTorch's
      default init and scales its logits by 1/9; "airbench94_muon" starts it at unit standard
      deviation and divides the logits by the last block's width (airbench94_muon.py).

    ``conv_3_filters`` None means twice ``conv_2_filters``. ``fused_batch_norm`` trains with
    FusedBatchNormalization (faster; see `portable_copy`).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    norm = FusedBatchNormalization if fused_batch_norm else layers.BatchNormalization
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    widths = block_widths(conv_1_filters, conv_2_filters, conv_3_filters)
    if architecture == "fast":
        return _fast(x, inputs, widths, dropout, num_classes, norm, head)
    x = _study_features(x, architecture, widths, dropout, norm)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, use_bias=False)(x)
    x = norm(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"cifar10_{architecture}")


def _study_features(x, architecture: str, widths: tuple[int, int, int], dropout: float, norm):
    """The convolutions of the study's networks: baseline's three valid convolutions (c1,
    c2, c2) or deeper's three VGG blocks."""
    if architecture == "baseline":
        x = _conv_bn_relu(x, widths[0], "valid", norm)
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn_relu(x, widths[1], "valid", norm)
        x = layers.MaxPooling2D(2)(x)
        return _conv_bn_relu(x, widths[1], "valid", norm)
    for filters in widths:
        x = _conv_bn_relu(x, filters, "same", norm)
        x = _conv_bn_relu(x, filters, "same", norm)
        x = layers.MaxPooling2D(2)(x)
        if dropout > 0:
            x = layers.Dropout(dropout)(x)
    return x


def _conv_bn_relu(x, filters: int, padding: str, norm):
    # The convolution has no bias: BatchNormalization right after it adds one.
    x = layers.Conv2D(filters, 3, padding=padding, use_bias=False)(x)
    x = norm(momentum=BN_MOMENTUM)(x)
    return layers.Activation("relu")(x)


def _fast(x, inputs, widths, dropout: float, num_classes: int, norm, head: str) -> keras.Model:
    # airbench's BatchNorm: no learned scale (GELU follows), fast-moving statistics
    # (PyTorch momentum 0.4 is Keras' 0.6). Its eps is 1e-12; TensorFlow's fused kernel
    # needs at least 1e-5, which changes nothing at these variances.
    def bn(h):
        return norm(momentum=0.6, epsilon=1e-5, scale=False)(h)

    def conv(h, filters):
        return layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer=torch_init()
        )(h)

    x = layers.Normalization(
        mean=list(CIFAR_MEAN), variance=[s**2 for s in CIFAR_STD], name="standardise"
    )(x)
    channels = 2 * WHITEN_PATCH**2 * INPUT_SHAPE[-1]
    whiten = layers.Conv2D(channels, WHITEN_PATCH, name=WHITEN_LAYER)
    x = layers.Activation("gelu")(whiten(x))
    whiten.kernel.trainable = False  # set by fit_whitening; the bias trains
    for filters in widths:
        x = layers.MaxPooling2D(2)(conv(x, filters))
        x = layers.Activation("gelu")(bn(x))
        x = layers.Activation("gelu")(bn(conv(x, filters)))
    x = layers.GlobalMaxPooling2D()(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    if head == "airbench94":
        init, scale = torch_init(), LOGIT_SCALE
    elif head == "airbench94_muon":
        init, scale = keras.initializers.RandomUniform(-(3**0.5), 3**0.5), 1 / widths[-1]
    else:
        raise ValueError(f"unknown head {head!r}")
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=init, name="dense")(x)
    x = layers.Rescaling(scale, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="cifar10_fast")


def dirac_init(model: keras.Model) -> None:
    """airbench's init: each 3x3 convolution's first `in_channels` filters become the
    identity (a 1 at the kernel's centre from input channel i to output channel i), so a
    fresh block passes its input through on those channels."""
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.kernel.shape[:2] == (3, 3):
            kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
            n = min(kernel.shape[2], kernel.shape[3])
            kernel[..., :n] = 0
            kernel[1, 1, np.arange(n), np.arange(n)] = 1
            layer.kernel.assign(kernel)


def fit_whitening(model: keras.Model, images: np.ndarray, *, sample: int = 5000) -> None:
    """Set a `fast` model's whitening kernel from the 2x2 patches of `images` (uint8).

    As airbench: the patches of the standardised images, their (uncentred) covariance's
    eigenvectors scaled by 1/sqrt(eigenvalue + eps) and their negatives; the bias starts at
    zero. The layer's outputs are decorrelated with unit variance on the training
    distribution. Takes the first `sample` images.
    """
    layer = model.get_layer(WHITEN_LAYER)
    pixels = (images[:sample].astype(np.float32) / 255 - CIFAR_MEAN) / CIFAR_STD
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (2, 2), axis=(1, 2))
    # (n, 31, 31, channels, kh, kw) -> rows laid out like a Conv2D kernel: (kh, kw, channels)
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, WHITEN_PATCH**2 * pixels.shape[-1])
    patches = patches.astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
    filters = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + WHITEN_EPS)
    filters = np.concatenate([filters, -filters], axis=1)
    kernel = filters.reshape(WHITEN_PATCH, WHITEN_PATCH, pixels.shape[-1], -1)
    layer.set_weights([kernel.astype(np.float32), np.zeros(kernel.shape[-1], np.float32)])


def with_tta(model: keras.Model, level: int) -> keras.Model:
    """`model` predicting from the mean of the logits of several views of each image
    (airbench's test-time augmentation), from stock layers only, so it loads without this
    package. Level 1: the image and its mirror image. Level 2: half that, plus a quarter each
    for the two 1-pixel diagonal translations (reflected at the border) and their mirrors:
    6 views. Level 0 returns `model`."""
    if level == 0:
        return model
    logits = keras.Model(model.inputs, model.get_layer("logits").output, name=model.name)
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    width = INPUT_SHAPE[1]

    def along(axis_last, h, matrix, name):
        # Multiply the width (or height) axis by a fixed 0/1 matrix: exact for pixel values.
        h = layers.Permute(axis_last)(h)
        dense = layers.Dense(width, use_bias=False, trainable=False, name=name)
        h = dense(h)
        dense.set_weights([matrix.astype(np.float32)])
        return layers.Permute(axis_last)(h)

    mirror = np.eye(width)[::-1]
    views = [x, along((1, 3, 2), x, mirror, "mirror")]
    weights = [0.5, 0.5]
    if level == 2:
        for offset, name in ((-1, "up_left"), (1, "down_right")):
            # out[j] = in[j + offset], reflecting at the border (airbench's padded crops)
            source = np.clip(np.arange(width) + offset, 0, width - 1)
            source[source == np.arange(width)] -= offset  # the border pixel's reflection
            shift = np.zeros((width, width))
            shift[source, np.arange(width)] = 1
            moved = along((3, 2, 1), along((1, 3, 2), x, shift, f"{name}_x"), shift, f"{name}_y")
            views += [moved, along((1, 3, 2), moved, mirror, f"{name}_mirror")]
        weights = [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    scaled = [
        layers.Rescaling(w, name=f"view_{i}")(logits(view))
        for i, (w, view) in enumerate(zip(weights, views, strict=True))
    ]
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(layers.Add()(scaled))
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
