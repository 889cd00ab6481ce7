"""The MLflow pyfunc model that `evaluate` logs and `register` registers: the trained Keras
network behind a strict check of its input, so that `mlflow models serve` answers a malformed
request with HTTP 400 naming the problem, and keeps serving.

Input: raw RGB pixels, integers 0-255, shape (n, 32, 32, 3) with n at most MAX_IMAGES (one
(32, 32, 3) image is taken as a batch of one); output: (n, 10) class probabilities in
CIFAR-10's class order.

The model is logged as MLflow "models from code": MLflow stores this file with the model and
runs it when the model is loaded, so it must not import cifar10_mlops. It is logged without a
signature on purpose: MLflow casts JSON input to a signature's dtype before the model sees it,
which would turn normalised floats (0.5) into the pixel value 0 instead of an error.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

IMAGE_SHAPE = (32, 32, 3)
KERAS_ARTIFACT = "keras_model"  # key of the .keras file in the model's artifacts
# Images per request: one evaluation batch, about 13 MB of JSON and seconds of CPU, so that no
# request computes long past MLflow's request timeout (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT,
# 60 s); `cifar10-mlops serve` also limits the body's bytes, which MLflow parses first.
MAX_IMAGES = 1024
# The registered model's description (Markdown, as the MLflow UI shows it); `register` fills
# in the names.
DESCRIPTION = """\
CIFAR-10 image classifier (a Keras CNN). The cifar10-mlops pipeline (`dvc repro`, or the
Prefect `retrain` flow) registers every model it trains and tests here.

**Input**: RGB pixels as integers 0-255, shape (n, 32, 32, 3), at most {max_images:,} images
per call. **Output**: (n, 10) class probabilities, in the order {classes}.

**Use the champion**: `mlflow.pyfunc.load_model("models:/{name}@{champion}").predict(images)`,
or `cifar10-mlops predict IMAGES...`, or `cifar10-mlops serve` (HTTP: `POST /invocations` with
`{{"inputs": <nested list of shape (n, 32, 32, 3)>}}`).

**Aliases**: `{champion}` is the version to use. It moves to a new version only when that
version scores better beyond noise on the same test images (each version's description gives
its verdict, its `gate_*` tags the statistics). `{challenger}` is the latest version
registered, whatever its verdict.

**No MLflow signature, on purpose**: MLflow would cast the input to a signature's type before
the model sees it, turning a normalised float such as 0.5 into the pixel 0. The model checks
its input itself and answers anything but a batch of integer pixels of that shape with an
error (HTTP 400) that says what was wrong.
"""


def check_images(data) -> np.ndarray:
    """`data` as a uint8 batch of shape (n, 32, 32, 3), or an MlflowException (HTTP 400)."""
    if not isinstance(data, np.ndarray | list | tuple):
        raise _bad_input(
            f"expected a nested list or array of images, got {type(data).__name__}; "
            'send {"inputs": [...]} with shape (n, 32, 32, 3)'
        )
    # Counted before np.asarray, which would copy a list of any length.
    if (not isinstance(data, np.ndarray) or data.ndim) and len(data) > MAX_IMAGES:
        raise _bad_input(
            f"{len(data)} images in one request, the limit is {MAX_IMAGES}; split the batch"
        )
    try:
        images = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise _bad_input(f"images of unequal shapes ({exc})") from None
    if images.ndim == len(IMAGE_SHAPE):
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or not len(images):
        raise _bad_input(
            f"expected images of shape (n, 32, 32, 3), got {images.shape}{_hint(images)}"
        )
    if images.dtype.kind not in "ui":
        raise _bad_input(
            f"expected integer pixel values 0-255 (raw uint8 RGB), got {images.dtype} values; "
            "send raw pixels, not normalised ones"
        )
    if images.min() < 0 or images.max() > 255:
        raise _bad_input(
            f"pixel values must be in 0-255, got values from {images.min()} to {images.max()}"
        )
    return images.astype(np.uint8)


def _hint(images: np.ndarray) -> str:
    channels = images.shape[-1] if images.ndim else None
    if images.ndim in (3, 4) and channels in (1, 4):
        kind = "grayscale" if channels == 1 else "RGBA"
        return f" ({kind}: convert the images to 3-channel RGB)"
    if images.ndim == 4 and images.shape[1:3] != IMAGE_SHAPE[:2]:
        return " (resize the images to 32x32 first)"
    return ""


def _bad_input(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(f"bad input: {message}")  # HTTP 400


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Class probabilities from raw uint8 images; `.model` is the Keras model itself."""

    def load_context(self, context) -> None:
        import keras

        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return self.model.predict(check_images(model_input), verbose=0)


# What MLflow loads when it runs this file as the model's code (models from code).
mlflow.models.set_model(ImageClassifier())
