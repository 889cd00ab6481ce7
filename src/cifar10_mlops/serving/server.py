"""`cifar10-mlops serve`: a model behind MLflow's own scoring app (the app `mlflow models serve`
runs: /invocations, /ping, /health, /version) and the limits that command lacks, so that no
request makes the server compute for long, past its request timeout, or grow by GBs:

- a body over MAX_BODY_BYTES gets HTTP 413 before it is read (Content-Length) or as soon as it
  grows past the limit (chunked), as nginx's client_max_body_size answers; MLflow would parse
  any size into Python lists before the model could refuse it;
- a body that is not JSON (CSV, Parquet) gets HTTP 415 unread;
- a JSON body nested deeper than MAX_DEPTH, or with more lists than MAX_IMAGES images have, or
  more than a few objects or strings, gets HTTP 400 before MLflow parses it (deep nesting was a
  RecursionError, a 500; the others cost GBs);
- a body still incomplete after MLflow's request timeout (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT,
  60 s) gets HTTP 408, and that timeout then applies to the prediction, as in MLflow;
- at most MAX_CONNECTIONS connections at once; more get HTTP 503 (uvicorn's limit_concurrency);
- the model (pyfunc.py) refuses more than MAX_IMAGES images a request with HTTP 400.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
from pathlib import Path

import numpy as np
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT as REQUEST_TIMEOUT

from cifar10_mlops.core import tracking
from cifar10_mlops.core.settings import PARAMS_FILE, load_params
from cifar10_mlops.serving.predict import load_model
from cifar10_mlops.serving.pyfunc import IMAGE_SHAPE, MAX_IMAGES

# Bytes a request's body may have: an image is at most 17,472 bytes of JSON (every pixel "255, ",
# json.dumps's default separators; 14,401 compact), so MAX_IMAGES of them fit in 20 MiB.
MAX_BODY_BYTES = MAX_IMAGES * 20 * 1024
# MLflow turns every JSON list, object and string into Python objects, and copies them, before
# the model sees them: 20 MiB of [0],[0],... took 1.9 GB and 20 s on 2 cores, of {"a":0},...
# 2.3 GB and over 60 s. So a body may have only the lists MAX_IMAGES images need (1 + 32 + 32 * 32
# each), and a few objects and strings: a request needs one of each, {"inputs": [...]}.
LISTS_PER_IMAGE = sum(math.prod(IMAGE_SHAPE[:axis]) for axis in range(len(IMAGE_SHAPE)))
MAX_LISTS = 1 + MAX_IMAGES * LISTS_PER_IMAGE
MAX_OBJECTS = 16
MAX_STRINGS = 64
# Levels of JSON nesting: a request needs 5 ({"inputs": [images [rows [pixels [channels]]]]});
# Python's json parser fails at about 1000 with a RecursionError, a 500.
MAX_DEPTH = 32
# Connections at once: a request within these limits took at most 0.55 GB while MLflow parsed
# it (0.45 GB for MAX_IMAGES images), so 4 bound the server to about 2 GB more than idle; more get
# 503. Idle keep-alive connections count until uvicorn's 5 s timeout ends them.
MAX_CONNECTIONS = 4

# A JSON string, escapes and all; an unterminated one runs to the end (a parser stops there),
# so that every quote matches and the scan stays linear.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as int8: +1 opens, -1 closes
_CHUNK = 1 << 20  # brackets summed at a time, bounding the temporary arrays


def json_shape(body: bytes) -> tuple[int, int, int]:
    """(nesting depth, lists, objects) of the JSON text `body`, counting brackets outside
    strings (of invalid JSON too). C loops only: about 0.05 s for 18 MB of MAX_IMAGES images;
    each string costs a Python object, so json_refusal counts them first."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    steps = np.frombuffer(brackets.translate(_STEP), np.int8)
    level = depth = 0
    for start in range(0, len(steps), _CHUNK):
        levels = level + np.cumsum(steps[start : start + _CHUNK], dtype=np.int64)
        depth, level = max(depth, int(levels.max())), int(levels[-1])
    return depth, brackets.count(b"["), brackets.count(b"{")


def json_refusal(body: bytes) -> str | None:
    """Why the JSON `body` is refused before MLflow parses it (HTTP 400), or None."""
    hint = 'send {"inputs": [...]} with shape (n, 32, 32, 3)'
    strings = body.count(b'"') // 2  # escaped quotes too: a request for images has none
    if strings > MAX_STRINGS:
        return f"bad input: {strings} JSON strings, the limit is {MAX_STRINGS}; {hint}"
    depth, lists, objects = json_shape(body)
    if depth > MAX_DEPTH:
        return f"bad input: JSON nested {depth} levels deep, the limit is {MAX_DEPTH}; {hint}"
    if objects > MAX_OBJECTS:
        return f"bad input: {objects} JSON objects, the limit is {MAX_OBJECTS}; {hint}"
    if lists > MAX_LISTS:
        images = -(-(lists - 1) // LISTS_PER_IMAGE)
        return (
            f"bad input: {lists} JSON lists, as many as {images} images have, the limit is "
            f"{MAX_IMAGES} images ({MAX_LISTS} lists); split the batch"
        )
    return None


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def limit_requests(app, timeout: float, max_bytes: int = MAX_BODY_BYTES):
    """The ASGI app `app` behind the limits above: each HTTP request's body is read first, never
    more than `max_bytes` of it, within `timeout` seconds, checked, then handed to `app` whole."""

    async def limited(scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan
            return await app(scope, receive, send)
        names = [name.lower() for name, _ in scope["headers"]]
        repeated = sorted({n.decode() for n in names if n in _SINGLE and names.count(n) > 1})
        if repeated:  # we would read the last, Starlette (MLflow) reads the first
            return await _refuse(send, 400, f"bad input: header {repeated[0]} given twice")
        if scope["path"] == "/invocations" and not _is_json(scope):
            return await _refuse(send, 415, _NOT_JSON)
        try:
            body = await asyncio.wait_for(_read_body(scope, receive, max_bytes), timeout)
            if body is not None and _is_json(scope):
                if refusal := await asyncio.to_thread(json_refusal, body):
                    raise _Refused(400, refusal)
        except _Refused as refused:
            return await _refuse(send, refused.status, str(refused))
        except TimeoutError:
            message = f"request body incomplete after {timeout} s ({REQUEST_TIMEOUT.name})"
            return await _refuse(send, 408, message)
        if body is not None:  # else the client went away
            await app(scope, _replay(body, receive), send)

    return limited


async def _read_body(scope, receive, max_bytes: int) -> bytes | None:
    """The whole body, None if the client disconnects, _Refused (413) past `max_bytes`."""
    too_large = _Refused(
        413,
        f"bad input: request body over the limit of {max_bytes} bytes "
        f"({max_bytes / 2**20:g} MiB); send at most {MAX_IMAGES} images a request",
    )
    length = dict(scope["headers"]).get(b"content-length", b"")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large  # before reading any of it
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size > max_bytes:
            raise too_large  # chunked: as soon as it grows past the limit
        chunks.append(chunk)
    return b"".join(chunks)


# pandas parses a CSV row of 100,000 columns (200 kB) for over a minute, a Parquet body may
# inflate to any size, and the model takes neither: only JSON reaches MLflow.
_NOT_JSON = (
    "bad input: the model takes JSON only: send Content-Type: application/json and "
    '{"inputs": [...]} with shape (n, 32, 32, 3)'
)


_SINGLE = (b"content-type", b"content-length", b"transfer-encoding")  # one of each, or 400


def _is_json(scope) -> bool:
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    return content_type.lower().startswith(b"application/json")


def _replay(body: bytes, receive):
    """An ASGI receive that gives `body` once, then waits on the client as `receive` does."""
    given = False

    async def replay():
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(send, status: int, message: str) -> None:
    """Answer `status` with MLflow's error body; the connection closes, as the rest of a
    refused body is never read."""
    body = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(model_uri: str, host: str, port: int) -> None:
    """Serve `model_uri` at http://host:port/invocations behind the limits, until interrupted."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(load_model(model_uri))  # reads the timeout too
    uvicorn.run(
        limit_requests(app, REQUEST_TIMEOUT.get()),
        host=host,
        port=port,
        limit_concurrency=MAX_CONNECTIONS,
    )


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
    args = parser.parse_args(argv)
    uri = args.model or tracking.champion_uri(load_params(args.params).register.model_name)
    serve(uri, args.host, args.port)
