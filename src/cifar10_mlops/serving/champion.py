"""The model `cifar10-mlops serve` serves, following an alias: every `interval` seconds the
registry is asked which version `models:/<name>@<alias>` names now; when that changes, the new
version is loaded (its artifacts checked against their recorded digest, as predict.py does),
tried on one image, and only then swapped in. A request in flight finishes on the model it
started with; the next one gets the new model. A version that fails to load, or answers the
trial image with anything but 10 probabilities, is not served: the previous model stays, the
log says why, and the metrics count it (cifar10_model_reload_failing is 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import numpy as np

from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.serving.metrics import Metrics
from cifar10_mlops.serving.predict import Source, load_resolved, resolve
from cifar10_mlops.serving.pyfunc import IMAGE_SHAPE, check_images

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: it prints it
# A version that failed to load is tried again after this long (or when the alias moves), not
# at every poll: each try downloads its artifacts.
RETRY_FAILED_SECONDS = 600.0


class Champion:
    """A pyfunc model as MLflow's scoring app uses it (`predict`, `metadata`), whose model is
    the one `uri` names, reloaded by `reload` when that changes."""

    def __init__(self, uri: str, metrics: Metrics, load=load_resolved, sample=None):
        self.uri, self.metrics, self.load = uri, metrics, load
        self.sample = sample  # a serving.sample.Sample keeping what is asked, or None
        self._lock = threading.Lock()  # one reload at a time
        self._failed, self._failed_at = None, 0.0  # the version that failed last, and when
        model, source = load(uri)
        _try(model)
        self.current: tuple[object, Source] = (model, source)
        self._serving(source)

    @property
    def follows(self) -> bool:
        """Whether `uri` can name another version later: an alias or `latest`."""
        return self.uri.startswith("models:/") and (
            "@" in self.uri or self.uri.lower().endswith("/latest")
        )

    @property
    def metadata(self):
        return self.current[0].metadata

    def predict(self, data, params=None):
        model, _ = self.current  # read once: a swap meanwhile leaves this request alone
        probabilities = model.predict(data, params=params)
        self.metrics.batched(len(probabilities))
        self._record(data, probabilities)
        return probabilities

    def predict_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """The probabilities of each uint8 batch, from one call of the model (batching.py),
        recorded per request as `predict` records them."""
        model, _ = self.current
        answer = np.asarray(model.predict(np.concatenate(batches)))
        self.metrics.batched(len(answer))
        answers = np.split(answer, np.cumsum([len(b) for b in batches])[:-1])
        for batch, probabilities in zip(batches, answers, strict=True):
            self._record(batch, probabilities)
        return answers

    def _record(self, data, probabilities) -> None:
        self.metrics.predicted(probabilities)
        if self.sample is not None:
            self.sample.add(check_images(data))  # it was predicted: it passes

    def version(self) -> bytes:
        """The JSON /version answers: MLflow's version and the model being served."""
        import mlflow

        source = self.current[1]
        model = {"asked": source.asked, "uri": source.uri, "name": source.name}
        model |= {"version": source.version, "model_id": source.model_id}
        return json.dumps({"mlflow": mlflow.__version__, "model": model}).encode()

    def reload(self, client=None) -> bool:
        """Serve the version `uri` names now if it is another one; True if it was swapped in.
        Any failure keeps the current model, logged and counted; a version that failed is
        tried again after RETRY_FAILED_SECONDS, or at once if the alias moves meanwhile."""
        import mlflow

        with self._lock:
            served = self.current[1]
            try:
                now = resolve(self.uri, client or mlflow.MlflowClient())
            except Exception as exc:  # noqa: BLE001 - the registry is away: serve on
                return self._kept(served, f"cannot ask the registry: {_first_line(exc)}")
            key = (now.model_id, now.version)
            if key == (served.model_id, served.version):
                self.metrics.reload_failing.set(0)
                return False
            if self._failed == key and time.monotonic() - self._failed_at < RETRY_FAILED_SECONDS:
                return False
            try:
                model, loaded = self.load(now.uri)
                _try(model)
            except Exception as exc:  # noqa: BLE001 - whatever it was, the old model serves on
                self._failed, self._failed_at = key, time.monotonic()
                return self._kept(served, f"cannot serve {now.describe()}: {_first_line(exc)}")
            source = dataclasses.replace(loaded, asked=self.uri)
            self.current = (model, source)
            self._serving(source)
            self.metrics.reloads.labels("loaded").inc()
            self.metrics.reload_failing.set(0)
            log.info("now serving %s (was %s)", source.describe(), served.describe())
            return True

    def _kept(self, served: Source, why: str) -> bool:
        log.warning("%s: kept %s; %s", self.uri, served.describe(), why)
        self.metrics.reloads.labels("failed").inc()
        self.metrics.reload_failing.set(1)
        return False

    def follow(self, interval: float) -> threading.Event:
        """Reload every `interval` seconds in a thread of its own, until the Event returned is
        set; nothing for a URI that cannot change."""
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(interval):
                self.reload()

        if self.follows and interval > 0:
            threading.Thread(target=poll, name="champion-reload", daemon=True).start()
        return stop

    def _serving(self, source: Source) -> None:
        self.metrics.serving(source.name, source.version, source.model_id, source.uri)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _try(model) -> None:
    """Refuse a model that does not answer one image with 10 probabilities."""
    answer = np.asarray(model.predict(np.zeros((1, *IMAGE_SHAPE), np.uint8)), dtype=np.float64)
    if answer.shape != (1, len(CLASSES)) or not np.isfinite(answer).all():
        raise ValueError(f"it answers one image with shape {answer.shape}, not (1, {len(CLASSES)})")
