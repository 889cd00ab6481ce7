"""What `cifar10-mlops serve` reports at GET /metrics, in Prometheus's text format
(prometheus-client):

- cifar10_requests_total{route, status}: answered HTTP requests. The route is one the server
  has (/invocations, /ping, /health, /version, /metrics) or "other", so that no client can add
  label values; status 499 is a client that left before its answer;
- cifar10_request_seconds{route}: a histogram of the time from a request's start to its answer;
- cifar10_images_per_request, cifar10_predicted_class_total{class} (top-1) and
  cifar10_top1_confidence: what the model was asked and what it answered;
- cifar10_images_per_prediction: images in each call of the model, where concurrent requests
  of integer pixels are predicted together (batching.py); other bodies, one call each;
- cifar10_model_info{name, version, model_id, uri}: the model being served (value 1);
- cifar10_model_reloads_total{outcome}: champion reloads (champion.py), "loaded" or "failed";
  cifar10_model_reload_failing is 1 while the model the alias names could not be loaded and
  the previous one is still served;
- cifar10_drift_score, cifar10_drift_detected, cifar10_drift_checked_timestamp_seconds: the
  last drift test's MMD² score and verdict, and when it ran, as `cifar10-mlops drift
  --sample-dir` left them in the folder the server samples to (serve --sample-dir); 0 without
  one, or before the first test.

Connections that uvicorn or server.py's guards close before a request reaches the app (too
many, headers too slow) are not counted.
"""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.serving.limits import respond

ROUTES = ("/invocations", "/ping", "/health", "/version", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
IMAGE_BUCKETS = tuple(2**k for k in range(11))  # 1 ... 1024 (MAX_IMAGES)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
CLIENT_LEFT = "499"  # no answer was sent: the client disconnected first (nginx's code)


class Metrics:
    """The server's metrics, in a registry of their own (one per app)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "cifar10_requests", "HTTP requests answered, by route and status",
            ["route", "status"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "cifar10_request_seconds", "Seconds from a request's start to its answer",
            ["route"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.images = Histogram(
            "cifar10_images_per_request", "Images in each predicted request",
            buckets=IMAGE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch = Histogram(
            "cifar10_images_per_prediction",
            "Images in each call of the model: concurrent requests predicted together",
            buckets=IMAGE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.classes = Counter(
            "cifar10_predicted_class", "Images by predicted (top-1) class", ["class"],
            registry=registry,
        )  # fmt: skip
        self.confidence = Histogram(
            "cifar10_top1_confidence", "Top-1 probability of each predicted image",
            buckets=CONFIDENCE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.model = Info("cifar10_model", "The model being served", registry=registry)
        self.reloads = Counter(
            "cifar10_model_reloads", "Reloads of the model an alias names, by outcome",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.reload_failing = Gauge(
            "cifar10_model_reload_failing",
            "1 while the model the alias names could not be loaded (the previous one serves)",
            registry=registry,
        )  # fmt: skip
        self.drift = None  # a callable giving the last drift verdict (a dict) or None
        self.drift_score = Gauge(
            "cifar10_drift_score", "The last drift test's MMD² of the embeddings (0: alike)",
            registry=registry,
        )  # fmt: skip
        self.drift_detected = Gauge(
            "cifar10_drift_detected", "1 if the last drift test found drift", registry=registry
        )
        self.drift_checked = Gauge(
            "cifar10_drift_checked_timestamp_seconds", "When the last drift test ran (Unix time)",
            registry=registry,
        )  # fmt: skip
        for name in CLASSES:  # every class from the start, at 0
            self.classes.labels(name)
        for outcome in ("loaded", "failed"):
            self.reloads.labels(outcome)

    def predicted(self, probabilities) -> None:
        """Record one request's predictions, (n, 10) class probabilities."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(CLASSES):
            return
        self.images.observe(len(probabilities))
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(CLASSES))
        for name, count in zip(CLASSES, counts):
            if count:
                self.classes.labels(name).inc(int(count))
        for confidence in probabilities.max(axis=1):
            self.confidence.observe(float(confidence))

    def batched(self, images: int) -> None:
        """Record one call of the model on `images` images, of one or more requests."""
        self.batch.observe(images)

    def serving(self, name, version, model_id, uri) -> None:
        """Name the model being served."""
        labels = {"name": name, "version": version, "model_id": model_id, "uri": uri}
        self.model.info({key: "" if value is None else str(value) for key, value in labels.items()})

    def text(self) -> bytes:
        verdict = self.drift() if self.drift else None
        if verdict is not None:
            self.drift_score.set(verdict["score"])
            self.drift_detected.set(1 if verdict.get("detected") else 0)
            self.drift_checked.set(verdict.get("checked", 0))
        return generate_latest(self.registry)


def observe(app, metrics: Metrics):
    """The ASGI `app` with every HTTP request counted and timed, and GET /metrics answered."""

    async def observed(scope, receive, send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        started, status = time.monotonic(), None

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            if route == "/metrics":
                await _metrics(scope, sending, metrics)
            else:
                await app(scope, receive, sending)
        except BaseException:
            status = status or "500"
            raise
        finally:
            metrics.requests.labels(route, status or CLIENT_LEFT).inc()
            metrics.latency.labels(route).observe(time.monotonic() - started)

    return observed


async def _metrics(scope, send, metrics: Metrics) -> None:
    if scope["method"] != "GET":
        await respond(send, 405, b"GET /metrics", b"text/plain")
    else:
        await respond(send, 200, metrics.text(), CONTENT_TYPE_LATEST.encode())
