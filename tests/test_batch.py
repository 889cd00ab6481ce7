"""The model server's fast path for the documented request body (serving/batch.py): it reads
exactly what json.loads and np.array would, and leaves every other body to MLflow."""

import json

import numpy as np
import pytest

from cifar10_mlops.serving import pyfunc
from cifar10_mlops.serving.batch import pixel_batch

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, *pyfunc.IMAGE_SHAPE))
IMAGES[0, 0, 0] = [0, 10, 100]  # one, two and three digits, at the start
IMAGES[2, -1, -1] = [9, 99, 255]  # and at the end


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"inputs": IMAGES.tolist()}, separators=(",", ":")),  # `cifar10-mlops request`
        json.dumps({"inputs": IMAGES.tolist()}),  # json.dumps's default separators
        json.dumps({"instances": IMAGES.tolist()}, indent=2),
        "\r\n\t " + json.dumps({"inputs": IMAGES.tolist()}).replace(",", " ,\n") + "\n",
    ],
    ids=["compact", "default", "instances-indented", "whitespace-everywhere"],
)
def test_the_documented_body_gives_what_json_gives(body):
    images = pixel_batch(body.encode())
    assert images.dtype == np.uint8 and images.shape == IMAGES.shape
    assert (images == np.asarray(next(iter(json.loads(body).values())))).all()


def test_one_image_and_the_largest_batch_are_taken():
    one = json.dumps({"inputs": IMAGES[:1].tolist()}).encode()
    assert (pixel_batch(one) == IMAGES[:1]).all()
    largest = np.full((pyfunc.MAX_IMAGES, *pyfunc.IMAGE_SHAPE), 7)
    assert pixel_batch(json.dumps({"inputs": largest.tolist()}).encode()).shape == largest.shape


VALID = json.dumps({"inputs": IMAGES[:1].tolist()})


@pytest.mark.parametrize(
    "body",
    [
        VALID.replace("0", "0.0", 1),  # floats: the model refuses them, MLflow says why
        VALID.replace("[0, ", "[-1, ", 1),
        VALID.replace("[0, ", "[256, ", 1),
        VALID.replace("[0, ", "[1000, ", 1),
        VALID.replace("[0, ", "[1e2, ", 1),
        VALID.replace("[0, ", "[00, ", 1),  # a leading zero: not JSON
        VALID.replace("[0, ", "[010, ", 1),
        VALID.replace("[0, 10", "[0, 1 0", 1),  # whitespace inside a number
        VALID.replace("[0, ", "[, ", 1),  # an empty slot ...
        VALID.replace("[0, ", "[, ", 1).replace("]]]", "]]]7", 1),  # ... its number elsewhere
        VALID.replace("[0, ", '["0", ', 1),
        VALID.replace("[0, ", "[true, ", 1),
        VALID.replace("[0, ", "[null, ", 1),
        VALID + " x",  # trailing text
        VALID[:-1],  # unterminated
        VALID.replace("inputs", "in puts"),
        VALID.replace("{", '{"params": {}, ', 1),
        json.dumps({"inputs": IMAGES[:, :31].tolist()}),  # 31 rows
        json.dumps({"inputs": IMAGES[..., :2].tolist()}),  # 2 channels
        json.dumps({"inputs": IMAGES[0].tolist()}),  # one image without its batch
        json.dumps({"inputs": IMAGES[None].tolist()}),  # a level too many
        json.dumps({"inputs": []}),
        json.dumps({"inputs": np.zeros((pyfunc.MAX_IMAGES + 1, 32, 32, 3), int).tolist()}),
    ],
)
def test_any_other_body_is_left_to_mlflow(body):
    assert pixel_batch(body.encode()) is None
