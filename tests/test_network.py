"""The network a recipe describes (training/network.py), built and compiled as `train` and the
tuner's hypermodel build it; nothing is trained here."""

import numpy as np
import pytest

from cifar10_mlops.core.settings import load_params
from cifar10_mlops.training import network
from cifar10_mlops.training.model import FusedBatchNormalization
from helpers import REPO

IMAGES = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cfg():
    """The repository's default recipe (the fast network), narrowed to build in a blink."""
    params = load_params(REPO / "params.yaml")
    return params.train.model_copy(
        update=dict(conv_1_filters=8, conv_2_filters=8, conv_3_filters=8)
    )


def test_the_portable_network_takes_the_trained_weights_and_answers_the_same(cfg):
    trained = network.build_network(cfg, IMAGES)
    portable = network.build_network(cfg, portable=True)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in trained.layers)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in portable.layers)
    portable.set_weights(trained.get_weights())
    np.testing.assert_allclose(
        portable.predict(IMAGES[:8], verbose=0), trained.predict(IMAGES[:8], verbose=0), atol=1e-6
    )


@pytest.mark.parametrize(
    ("optimizer", "head", "built"),
    [("adam", "airbench94", "Adam"), ("muon", "airbench94_muon", "AirbenchMuon")],
)
def test_the_model_compiles_with_the_recipes_optimizer_and_label_smoothing(
    cfg, optimizer, head, built
):
    model = network.compile_model(cfg.model_copy(update=dict(optimizer=optimizer, head=head)))
    assert type(model.optimizer).__name__ == built
    assert model.loss.get_config()["label_smoothing"] == cfg.label_smoothing > 0
