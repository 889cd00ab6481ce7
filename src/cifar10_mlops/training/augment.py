"""Data augmentation on whole uint8 batches in tf.data: the study's random affine warp, and
the cheaper pad-and-crop plus flip of the fast CIFAR-10 trainers.

The study used Keras' deprecated ImageDataGenerator (rotation 15°, width/height shift 0.1,
shear 0.2, zoom 0.2, horizontal flip, nearest fill). Keras' preprocessing layers would apply
each of those as a separate image warp; here they are composed into one 3x3 matrix per image
and applied with a single ImageProjectiveTransformV3 call on a whole uint8 batch, which keeps
the input pipeline cheap enough to run beside the model on two CPU cores.

Units follow ImageDataGenerator: rotation and shear are angles in degrees, shifts are
fractions of the image side, zoom draws each axis' scale from [1 - zoom, 1 + zoom].
"""

from __future__ import annotations

import math

import tensorflow as tf

from cifar10_mlops.core.settings import AugmentConfig


def augment_batch(images: tf.Tensor, cfg: AugmentConfig, *, seed: tf.Tensor) -> tf.Tensor:
    """Apply `cfg` to a batch: the affine warp when any of its ranges is set, then the crop;
    the flip rides on whichever warp runs first (the crop alone when neither is set).

    `seed` (two integers) fixes every draw: the same batch and seed give the same output in any
    thread, in any order, which keeps training repeatable bit for bit."""
    warp_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if cfg.warps:
        images = random_affine(
            images,
            seed=warp_seed,
            rotation=cfg.rotation,
            shift=cfg.shift,
            shear=cfg.shear,
            zoom=cfg.zoom,
            horizontal_flip=cfg.horizontal_flip,
        )
    if cfg.crop or (cfg.horizontal_flip and not cfg.warps):
        images = random_crop_flip(
            images,
            crop=cfg.crop,
            horizontal_flip=cfg.horizontal_flip and not cfg.warps,
            seed=crop_seed,
        )
    return images


def affine_params(
    batch: int,
    *,
    rotation: float,
    shift: float,
    shear: float,
    zoom: float,
    horizontal_flip: bool,
    size: int,
    seed: tf.Tensor,
) -> tf.Tensor:
    """Draw `batch` random transforms in ImageProjectiveTransformV3's 8-number form.

    Each row maps an output pixel (x, y) to the input pixel it is sampled from:
    ``in = A @ F @ (out - c) + c + t`` with A = rotation @ shear @ zoom, F the optional
    flip and c the image centre. `seed` (two integers) fixes the draws.
    """
    seeds = iter(tf.unstack(tf.random.experimental.stateless_split(seed, num=7)))

    def uniform(low, high):
        return tf.random.stateless_uniform([batch], next(seeds), low, high)

    theta = uniform(-rotation, rotation) * (math.pi / 180)
    skew = uniform(-shear, shear) * (math.pi / 180)
    zx, zy = uniform(1 - zoom, 1 + zoom), uniform(1 - zoom, 1 + zoom)
    tx, ty = uniform(-shift, shift) * size, uniform(-shift, shift) * size
    flip = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if horizontal_flip else tf.ones([batch])

    a0 = tf.cos(theta) * zx * flip
    a1 = -tf.sin(theta + skew) * zy
    b0 = tf.sin(theta) * zx * flip
    b1 = tf.cos(theta + skew) * zy
    c = (size - 1) / 2.0
    a2 = c + tx - a0 * c - a1 * c
    b2 = c + ty - b0 * c - b1 * c
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def random_affine(
    images: tf.Tensor,
    *,
    rotation: float,
    shift: float,
    shear: float,
    zoom: float,
    horizontal_flip: bool,
    seed: tf.Tensor,
) -> tf.Tensor:
    """Warp a batch of images (N, H, W, C), any dtype the op supports, keeping its dtype;
    `seed` (two integers) fixes the draws."""
    shape = tf.shape(images)
    transforms = affine_params(
        shape[0],
        rotation=rotation,
        shift=shift,
        shear=shear,
        zoom=zoom,
        horizontal_flip=horizontal_flip,
        size=images.shape[1],
        seed=seed,
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def random_crop_flip(
    images: tf.Tensor,
    *,
    crop: int,
    seed: tf.Tensor,
    horizontal_flip: bool = False,
    flip: tf.Tensor | None = None,
) -> tf.Tensor:
    """Pad-and-crop plus mirror for a batch (N, H, W, C), as one whole-pixel warp.

    Equivalent to reflect-padding each image by `crop` pixels, cutting a random H x W window
    from it and flipping half of the windows (`horizontal_flip`), or the images where `flip`
    (a boolean per image) is true, but done with one translation per image, so no padded copy
    of the batch is made. `seed` (two integers) fixes the draws.
    """
    shift_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    batch = tf.shape(images)[0]
    size = images.shape[1]
    shift = tf.random.stateless_uniform([batch, 2], shift_seed, -crop, crop + 1, dtype=tf.int32)
    tx, ty = tf.unstack(tf.cast(shift, tf.float32), axis=1)
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    if flip is not None:
        flip = tf.where(flip, -1.0, 1.0)
    elif horizontal_flip:
        flip = tf.where(tf.random.stateless_uniform([batch], flip_seed) < 0.5, -1.0, 1.0)
    else:
        flip = ones
    # x_in = flip * x_out + offset: the flip mirrors about the centre, then shifts.
    offset = tf.where(flip < 0, tf.cast(size - 1, tf.float32), 0.0) + tx
    transforms = tf.stack([flip, zeros, offset, zeros, ones, ty, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="REFLECT",
    )
