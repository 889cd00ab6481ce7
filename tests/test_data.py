"""The input pipeline: what each epoch's batches hold, in which order, and how often each
image is mirrored."""

import numpy as np

from cifar10_mlops.core.settings import AugmentConfig, load_params
from cifar10_mlops.training import data
from cifar10_mlops.training.data import make_dataset
from helpers import REPO


def test_augmented_dataset_yields_shuffled_uint8_batches_with_one_hot_labels():
    x = np.arange(20, dtype=np.uint8).repeat(32 * 32 * 3).reshape(20, 32, 32, 3)
    y = np.arange(20, dtype=np.uint8) % 10
    cfg = load_params(REPO / "params.yaml").train.augment
    cfg = cfg.model_copy(update=dict(crop=0, horizontal_flip=False))
    batches = list(data.make_dataset(x, y, 5, seed=0, augment=cfg).take(4))  # one epoch
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5]
    assert batches[0][0].dtype == "uint8"
    order = np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in batches])  # image i is all i
    assert sorted(order) == list(range(20)) and list(order) != list(range(20))
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(labels, np.eye(10)[order % 10])


AUGMENT = AugmentConfig(
    rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, crop=0, horizontal_flip=True,
    alternating_flip=True,
)  # fmt: skip


def _marked_images(n):
    """Image i carries its index in the top-left pixel: mirrored, it is the top-right one."""
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = 1 + np.arange(n) % 250
    images[:, 0, 0, 1] = np.arange(n) // 250
    return images


def _flips_per_image(augment, n=200, batch=50, epochs=6):
    dataset = make_dataset(_marked_images(n), np.zeros(n), batch, seed=3, augment=augment)
    flips = np.zeros(n, int)
    seen = np.zeros(n, int)
    for images, _ in dataset.take(epochs * n // batch):
        images = images.numpy()
        flipped = images[:, 0, 0, 0] == 0
        corner = np.where(flipped[:, None], images[:, 0, 31, :2], images[:, 0, 0, :2])
        index = (corner[:, 0].astype(int) - 1) + 250 * corner[:, 1].astype(int)
        np.add.at(flips, index, flipped)
        np.add.at(seen, index, 1)
    return flips, seen


def test_alternating_flip_mirrors_each_image_on_exactly_every_other_epoch():
    flips, seen = _flips_per_image(AUGMENT)
    assert (seen == 6).all()  # every image once per epoch, in a new order each epoch
    assert (flips == 3).all()
    # Random flipping (the ablation) gives some images more and some fewer.
    flips, _ = _flips_per_image(AugmentConfig(**{**vars(AUGMENT), "alternating_flip": False}))
    assert flips.min() < 3 < flips.max()


def test_training_epochs_drop_the_last_partial_batch_and_reshuffle():
    dataset = make_dataset(_marked_images(130), np.arange(130), 50, seed=0, augment=AUGMENT)
    epochs = [[b[1].numpy().argmax(1) for b in dataset.skip(2 * e).take(2)] for e in range(2)]
    assert [len(b) for b in epochs[0]] == [50, 50]  # 130 images: 2 whole batches per epoch
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))


def test_a_set_smaller_than_one_batch_trains_on_all_of_it_each_epoch():
    # A search subset (tune.train_per_class) below the batch size: one partial batch per
    # epoch, every image in it, reshuffled, rather than an epoch of no steps.
    labels = np.arange(30) % 10  # 3 images of each class
    dataset = make_dataset(_marked_images(30), labels, 50, seed=0, augment=AUGMENT)
    epochs = [b[1].numpy().argmax(1) for b in dataset.take(2)]
    assert data.steps_per_epoch(30, 50) == 1
    assert [np.bincount(e, minlength=10).tolist() for e in epochs] == [[3] * 10] * 2
    assert not np.array_equal(epochs[0], epochs[1])
