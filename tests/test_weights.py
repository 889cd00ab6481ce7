"""A model's weights as the pipeline records them (training/weights.py): model.keras written
byte for byte the same for the same weights, and their digest."""

import os

import keras

from cifar10_mlops.training import weights


def test_save_model_writes_the_same_bytes_for_the_same_weights(tmp_path):
    from cifar10_mlops.training.model import build_model

    keras.utils.set_random_seed(3)
    model = build_model("baseline", conv_1_filters=4, conv_2_filters=4, dense_units=8, dropout=0)
    weights.save_model(model, tmp_path / "a.keras")
    os.utime(tmp_path / "a.keras", (0, 0))
    weights.save_model(model, tmp_path / "b.keras")  # another second, another date_saved
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.models.load_model(tmp_path / "b.keras")
    assert weights.weights_sha256(loaded) == weights.weights_sha256(model)
