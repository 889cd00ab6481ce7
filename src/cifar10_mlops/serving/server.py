"""`cifar10-mlops serve`: a model behind MLflow's own scoring app (the app `mlflow models serve`
runs: /invocations, /ping, /health, /version), behind the request limits of limits.py, with
GET /metrics (metrics.py), the model an alias names followed (champion.py), requests that wait
for the model predicted together (batching.py), and two guards on connections that uvicorn
lacks:

- at most MAX_OPEN connections at once; more are closed unanswered;
- a connection that has not sent a request's headers HEADER_TIMEOUT seconds after it opened (or
  after the request's first byte) gets HTTP 408 and is closed: idle sockets and headers sent a
  byte at a time hold nothing for long. uvicorn closes a kept-alive connection idle for 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import h11
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT as REQUEST_TIMEOUT
from uvicorn.protocols.http.h11_impl import H11Protocol

from cifar10_mlops.core import tracking
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.settings import PARAMS_FILE, load_params
from cifar10_mlops.serving.batching import Batcher, predict_each
from cifar10_mlops.serving.champion import Champion
from cifar10_mlops.serving.limits import limit_requests, respond
from cifar10_mlops.serving.metrics import Metrics, observe
from cifar10_mlops.serving.predict import load_resolved
from cifar10_mlops.serving.pyfunc import MAX_IMAGES
from cifar10_mlops.serving.sample import Sample

MAX_OPEN = 64
HEADER_TIMEOUT = 10.0  # seconds


class GuardedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the guards uvicorn lacks: at most MAX_OPEN connections,
    and a request's headers within HEADER_TIMEOUT seconds of the connection opening or of the
    request's first byte, else HTTP 408 and the connection closes."""

    header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > MAX_OPEN:
            transport.close()  # connection_lost forgets it
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # a request's first byte on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # its headers are in
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.write(_TOO_SLOW)
            self.transport.close()


_TOO_SLOW_TEXT = b"no request headers within %g s" % HEADER_TIMEOUT
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
_TOO_SLOW += b"content-length: %d\r\n\r\n%s" % (len(_TOO_SLOW_TEXT), _TOO_SLOW_TEXT)


def serve(
    model_uri: str,
    host: str,
    port: int,
    reload_seconds: float = 30.0,
    sample: Sample | None = None,
    batch_images: int = MAX_IMAGES,
) -> None:
    """Serve `model_uri` at http://host:port/invocations behind the limits, following its
    alias every `reload_seconds` (0: never), keeping what it classifies in `sample` (if any)
    for the drift test, predicting concurrent requests together up to `batch_images` images,
    until interrupted."""
    import uvicorn

    metrics = Metrics()
    champion = Champion(model_uri, metrics, load=load_resolved, sample=sample)
    stops = [champion.follow(reload_seconds)]
    if sample is not None:
        metrics.drift = sample.verdict
        stops.append(sample.follow(lambda: champion.current[1].describe()))
    try:
        app = build_app(champion, metrics, batch_images)
        uvicorn.run(app, host=host, port=port, http=GuardedProtocol)
    finally:
        for stop in stops:
            stop.set()
        if sample is not None:
            sample.write(champion.current[1].describe())  # what came since the last write


def build_app(model, metrics: Metrics | None = None, batch_images: int = MAX_IMAGES):
    """The ASGI app serving the pyfunc `model` (or a Champion): MLflow's scoring app behind the
    limits, with bodies of integer pixels predicted by the limits' fast path, those that wait
    meanwhile together (up to `batch_images` images a call), every request counted and timed
    (GET /metrics), and a Champion's /version naming the model it serves."""
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(model)  # reads the timeout too
    many = model.predict_many if isinstance(model, Champion) else predict_each(model.predict)
    batcher = Batcher(many, max_images=batch_images)
    app = limit_requests(app, REQUEST_TIMEOUT.get(), predict=batcher.predict)
    if isinstance(model, Champion):
        app = _answer_version(app, model)
    return observe(app, metrics or Metrics())


def _answer_version(app, champion: Champion):
    """`app`, with GET /version answered by what `champion` serves."""

    async def versioned(scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/version":
            return await app(scope, receive, send)
        await respond(send, 200, champion.version())

    return versioned


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cifar10-mlops serve",
        description="Serve a model at /invocations as `mlflow models serve` does, with limits.",
    )
    parser.add_argument(
        "-m", "--model", help="MLflow model URI (default: models:/<register.model_name>@champion)"
    )
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("-p", "--port", type=int, default=5001)
    parser.add_argument(
        "--reload-seconds", type=_seconds, default=30.0, metavar="S",
        help="ask the registry every S seconds which version the alias names, and serve it "
        "(default 30; 0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-images", type=_batch, default=MAX_IMAGES, metavar="N",
        help="predict requests that wait for the model together, up to N images a call "
        f"(default {MAX_IMAGES}; 1: each request alone)",
    )  # fmt: skip
    parser.add_argument(
        "--sample-dir", type=Path, metavar="DIR",
        help="keep the newest params.yaml monitor.window images classified, written to "
        "DIR/window.npz, for `cifar10-mlops drift --sample-dir DIR` (default: none kept)",
    )  # fmt: skip
    parser.add_argument(
        "--sample-seconds", type=_interval, default=60.0, metavar="S",
        help="write DIR/window.npz every S seconds when new images came (default 60)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params(args.params)
    uri = args.model or tracking.champion_uri(params.register.model_name)
    sample = None
    if args.sample_dir is not None:
        try:
            sample = Sample(args.sample_dir, params.monitor.window, args.sample_seconds)
        except OSError as exc:
            raise PipelineError(f"--sample-dir {args.sample_dir}: {exc.strerror}") from None
    serve(uri, args.host, args.port, args.reload_seconds, sample, args.batch_images)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:  # nan too
        raise argparse.ArgumentTypeError(f"{text!r}: seconds from 0 to 86400")
    return value


def _batch(text: str) -> int:
    if not (text.isdigit() and 1 <= int(text) <= MAX_IMAGES):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a whole number of images from 1 to {MAX_IMAGES}"
        )
    return int(text)


def _interval(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds above 0, up to 86400")
    return value
