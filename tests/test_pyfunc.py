"""The registered model's MLflow pyfunc (serving/pyfunc.py): `mlflow models serve` on the
registered champion gives right answers, and HTTP 400 for bad input."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from cifar10_mlops.stages import register
from cifar10_mlops.serving import pyfunc as serving
from helpers import make_images, stage_args
from servers import free_port

pytestmark = pytest.mark.integration


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served(candidate):
    """The champion behind `mlflow models serve` on 127.0.0.1; yields its base URL."""
    candidate(0.61)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",  # the server runs `uvicorn`
    }
    server = subprocess.Popen(
        [bin_dir / "mlflow", "models", "serve", "-m", "models:/cifar10-cnn@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "mlflow models serve did not start in 120 s"
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_served_champion_answers_raw_images_and_rejects_bad_input(served):
    images, _ = make_images(2, seed=5)
    status, body = post(f"{served}/invocations", {"inputs": images.tolist()})
    assert status == 200
    expected = mlflow.pyfunc.load_model("models:/cifar10-cnn@champion").predict(images)
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-4, atol=1e-6)

    limit, image = serving.MAX_IMAGES, json.dumps(np.zeros(serving.IMAGE_SHAPE, int).tolist())
    too_many = ('{"inputs": [' + ", ".join([image] * (limit + 1)) + "]}").encode()
    bad = {
        "normalised floats": ({"inputs": (images[:1] / 255).tolist()}, "not normalised"),
        "wrong size": ({"inputs": np.zeros((1, 28, 28, 3), int).tolist()}, "(1, 28, 28, 3)"),
        "grayscale": ({"inputs": np.zeros((1, 32, 32, 1), int).tolist()}, "grayscale"),
        "RGBA": ({"inputs": np.zeros((1, 32, 32, 4), int).tolist()}, "RGBA"),
        "out of range": ({"inputs": np.full((1, 32, 32, 3), 300).tolist()}, "must be in 0-255"),
        "strings": ({"inputs": [["a"]]}, "expected images of shape"),
        "not JSON": (b"{not json", "valid JSON"),
        "too many": (too_many, f"{limit + 1} images in one request, the limit is {limit};"),
    }
    for name, (payload, message) in bad.items():
        status, body = post(f"{served}/invocations", payload)
        assert status == 400, name
        assert message in body["message"], (name, body["message"][-300:])
    # still serving
    status, body = post(f"{served}/invocations", {"inputs": images[0].tolist()})  # one image
    assert status == 200 and np.array(body["predictions"]).shape == (1, 10)


def test_check_images_accepts_integer_batches_only():
    one = np.zeros((32, 32, 3), np.int64)
    assert serving.check_images(one).shape == (1, 32, 32, 3)
    assert serving.check_images([one.tolist()]).dtype == np.uint8
    for bad in (np.zeros((0, 32, 32, 3), np.uint8), one.astype(float), one - 1, "image"):
        with pytest.raises(mlflow.exceptions.MlflowException, match="bad input"):
            serving.check_images(bad)


def test_check_images_refuses_more_than_max_images_naming_the_limit():
    limit, image = serving.MAX_IMAGES, np.zeros((32, 32, 3), np.int64)
    assert len(serving.check_images(np.zeros((limit, 32, 32, 3), np.uint8))) == limit
    for bad in ([image.tolist()] * (limit + 1), np.zeros((limit + 1, 32, 32, 3), np.uint8)):
        with pytest.raises(mlflow.exceptions.MlflowException) as refused:
            serving.check_images(bad)
        assert refused.value.get_http_status_code() == 400
        assert refused.value.message == (
            f"bad input: {limit + 1} images in one request, the limit is {limit}; split the batch"
        )
