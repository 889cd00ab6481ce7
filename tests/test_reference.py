"""The drift reference `evaluate` saves (monitoring/reference.py): embeddings taken before the
classifier, also through the test-time-augmentation wrapper, saved and loaded back checked."""

import numpy as np
import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.monitoring import reference
from cifar10_mlops.training.model import build_model, with_tta
from helpers import make_images


@pytest.fixture(scope="module")
def model():
    return build_model("baseline", conv_1_filters=4, conv_2_filters=4, dense_units=8, dropout=0.0)


def test_embeddings_are_the_classifiers_input(model):
    images, _ = make_images(2, seed=1)
    described = reference.describe(model, images)
    assert described["embeddings"].shape == (20, 8)  # dense_units: what `logits` reads
    probs = model.predict(images, verbose=0)
    np.testing.assert_array_equal(described["predicted"], probs.argmax(1))
    np.testing.assert_allclose(described["confidence"], probs.max(1), rtol=1e-6)


def test_a_tta_model_is_embedded_by_the_network_it_wraps(model):
    images, _ = make_images(1, seed=1)
    wrapped = with_tta(model, 2)
    np.testing.assert_allclose(
        reference.describe(wrapped, images)["embeddings"],
        reference.describe(model, images)["embeddings"],
        rtol=1e-5,
    )


def test_the_reference_has_as_many_images_of_each_class(model):
    x, y = make_images(10, seed=1)
    ref = reference.build(model, x, y, images=50, seed=0, batch_size=32)
    assert len(ref["embeddings"]) == 50 and set(ref) == set(reference.KEYS)


def test_a_saved_reference_loads_back(model, tmp_path):
    x, y = make_images(3, seed=1)
    ref = reference.build(model, x, y, images=30, seed=0, batch_size=32)
    reference.save(tmp_path / reference.FILE, ref)
    back = reference.load(tmp_path / reference.FILE)
    for key in reference.KEYS:
        np.testing.assert_array_equal(back[key], ref[key])


@pytest.mark.parametrize(
    "content",
    [b"not an npz", None, "nan", "short"],
    ids=["garbage", "missing keys", "nan embeddings", "unequal rows"],
)
def test_anything_else_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / reference.FILE
    arrays = {
        "embeddings": np.ones((4, 3)),
        "predicted": np.zeros(4, int),
        "confidence": np.ones(4),
    }
    if content == "nan":
        arrays["embeddings"][0, 0] = np.nan
    if content == "short":
        arrays["confidence"] = np.ones(3)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is None:
        np.savez(path, x=np.ones(3))
    else:
        np.savez(path, **arrays)
    with pytest.raises(PipelineError, match="not a drift reference") as err:
        reference.load(path)
    assert "\n" not in str(err.value)
