"""The request limits `cifar10-mlops serve` (server.py) puts in front of MLflow's scoring app,
which `mlflow models serve` lacks, so that no request makes the server compute for long, past
its request timeout, or grow by GBs:

- a body over MAX_BODY_BYTES gets HTTP 413 before it is read (Content-Length) or as soon as it
  grows past the limit (chunked), as nginx's client_max_body_size answers; MLflow would parse
  any size into Python lists before the model could refuse it;
- a body that is not JSON (CSV, Parquet) gets HTTP 415 unread;
- a JSON body that is not `{"inputs": [...]}` (or `{"instances": [...]}`) and nothing else
  gets HTTP 400 before MLflow parses it: `dataframe_split` and `dataframe_records` would reach
  pandas, which builds a column per value (10 million columns: about 50 s and 5 GB);
- a JSON body nested deeper than MAX_DEPTH, or with more lists than MAX_IMAGES images have, gets
  HTTP 400 before MLflow parses it (deep nesting was a RecursionError, a 500; lists cost GBs);
- a body still incomplete BODY_TIMEOUT seconds after its headers gets HTTP 408;
- at most MAX_READING bodies being read and parsed, and MAX_BUSY requests being parsed and
  predicted by MLflow at once: more get HTTP 503 with Retry-After, at once. Batches of integer
  pixels (below) wait for the model in batching.py's bounded queue instead, also answered 503
  when it is full. /ping, /health and /version take no slot, so they answer while the server
  is busy;
- the model (pyfunc.py) refuses more than MAX_IMAGES images a request, or any other shape than
  (n, 32, 32, 3), with HTTP 400, so a request's prediction is bounded too;
- a body of the documented form (integer pixels, batch.py) is parsed in C loops and predicted
  here, with the other requests waiting at the time (batching.py), answered as MLflow answers:
  MLflow's json.loads held Python's GIL for seconds, so /ping waited as long. Any other body
  goes to MLflow.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import numpy as np
from mlflow.exceptions import MlflowException

from cifar10_mlops.serving.batch import LISTS_PER_IMAGE, pixel_batch
from cifar10_mlops.serving.batching import Full
from cifar10_mlops.serving.pyfunc import MAX_IMAGES

# Bytes a request's body may have: an image is at most 17,472 bytes of JSON (every pixel "255, ",
# json.dumps's default separators; 14,401 compact), so MAX_IMAGES of them fit in 20 MiB.
MAX_BODY_BYTES = MAX_IMAGES * 20 * 1024
# MLflow turns every JSON list, object and string into Python objects, and copies them, before
# the model sees them: 20 MiB of [0],[0],... took 1.9 GB and 20 s on 2 cores, of {"a":0},...
# 2.3 GB and over 60 s. So a body may have only the lists MAX_IMAGES images need (1 + 32 + 32 * 32
# each), one object and one string: {"inputs": [...]}.
MAX_LISTS = 1 + MAX_IMAGES * LISTS_PER_IMAGE
# Levels of JSON nesting: a request needs 5 ({"inputs": [images [rows [pixels [channels]]]]});
# Python's json parser fails at about 1000 with a RecursionError, a 500.
MAX_DEPTH = 32
# The one form MLflow turns into an array without pandas: {"inputs": [...]} or
# {"instances": [...]}, and nothing else in the object.
_REQUEST = re.compile(rb'\s*\{\s*"(?:inputs|instances)"\s*:\s*\[')
# Requests MLflow parses and predicts at once: one within the limits took at most 0.55 GB while
# MLflow parsed it (0.45 GB for MAX_IMAGES images), so 4 bound the server to about 2 GB more
# than idle. Integer-pixel bodies are parsed here, at most MAX_BUSY at once (162 MiB at most
# each), and wait for the model in batching.py's queue (12 MB at most).
MAX_BUSY = 4
# Bodies read at once, each at most MAX_BODY_BYTES: 320 MiB in all.
MAX_READING = 16
# Seconds to send a body once its headers are in (20 MiB in 30 s: 0.7 MB/s).
BODY_TIMEOUT = 30.0

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
    if not _REQUEST.match(body):
        start = body[:40].decode("utf-8", "replace").strip()
        return f"bad input: the body must be an object of one key, inputs; {hint}, not {start!r}"
    strings = body.count(b'"') // 2  # escaped quotes too: a request for images has none
    if strings > 1:
        return f"bad input: {strings} JSON strings, a request has one (inputs); {hint}"
    depth, lists, objects = json_shape(body)
    if depth > MAX_DEPTH:
        return f"bad input: JSON nested {depth} levels deep, the limit is {MAX_DEPTH}; {hint}"
    if objects > 1:
        return f"bad input: {objects} JSON objects, a request has one; {hint}"
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


class Slots:
    """At most `size` holders at once; `take` fails at once when all are held (no queue: a
    client told 503 retries, one left waiting holds a connection)."""

    def __init__(self, size: int):
        self.size, self.held = size, 0

    def take(self) -> bool:
        if self.held >= self.size:
            return False
        self.held += 1
        return True

    def give(self) -> None:
        self.held -= 1


def limit_requests(
    app, timeout: float, max_bytes: int = MAX_BODY_BYTES, body_timeout=None, predict=None
):
    """The ASGI app `app` behind the limits above: each HTTP request's body is read first, never
    more than `max_bytes` of it, within `body_timeout` seconds (default BODY_TIMEOUT, at most
    `timeout`), checked, then handed to `app` whole, or, if it is a batch of integer pixels and
    `predict` is given (a batching.Batcher's predict, or any coroutine function of the images
    that answers their probabilities), predicted here; `timeout` is MLflow's request
    timeout."""
    body_timeout = min(timeout, BODY_TIMEOUT if body_timeout is None else body_timeout)
    reading, busy = Slots(MAX_READING), Slots(MAX_BUSY)
    parsing = asyncio.Semaphore(MAX_BUSY)  # a parse peaks at 162 MiB for MAX_IMAGES images

    async def limited(scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan
            return await app(scope, receive, send)
        names = [name.lower() for name, _ in scope["headers"]]
        repeated = sorted({n.decode() for n in names if n in _SINGLE and names.count(n) > 1})
        if repeated:  # we would read the last, Starlette (MLflow) reads the first
            return await _refuse(send, 400, f"bad input: header {repeated[0]} given twice")
        if scope["path"] != "/invocations":  # /ping, /health, /version: no body, no slot
            return await app(scope, receive, send)
        if not _is_json(scope):
            return await _refuse(send, 415, _NOT_JSON)
        if not reading.take():
            return await _refuse(send, 503, f"busy: {MAX_READING} requests arriving; retry")
        images = None
        try:
            body = await asyncio.wait_for(_read_body(scope, receive, max_bytes), body_timeout)
            if body is not None and (refusal := await asyncio.to_thread(json_refusal, body)):
                raise _Refused(400, refusal)
            if body is not None and predict is not None and _plain_json(scope):
                async with parsing:  # waits: a parse takes about 0.1 s
                    images = await asyncio.to_thread(pixel_batch, body)
        except _Refused as refused:
            return await _refuse(send, refused.status, str(refused))
        except TimeoutError:
            message = f"request body incomplete after {body_timeout:g} s"
            return await _refuse(send, 408, message)
        finally:
            reading.give()
        if images is not None:  # bounded by the batcher's queue, not by a slot
            del body
            return await _predicted(send, predict, images, timeout)
        if body is None:  # the client went away
            return
        if not busy.take():
            return await _refuse(send, 503, f"busy: {MAX_BUSY} requests being predicted; retry")
        try:
            await app(scope, _replay(body, receive), send)
        finally:
            busy.give()

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


def _plain_json(scope) -> bool:
    """Whether the Content-Type is JSON with no parameter but charset=utf-8, which MLflow takes
    as it is (it answers others with 415)."""
    kind, *parameters = dict(scope["headers"])[b"content-type"].lower().split(b";")
    return kind.strip() == b"application/json" and all(
        parameter.replace(b" ", b"") == b"charset=utf-8" for parameter in parameters
    )


_FAILED = "Encountered an unexpected error while evaluating the model."


async def _predicted(send, predict, images: np.ndarray, timeout: float) -> None:
    """Answer with the predictions of `images`, or the error, as MLflow's scoring app does."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    try:
        predictions = await asyncio.wait_for(predict(images), timeout)
        answer = io.StringIO()
        predictions_to_json(predictions, answer)
        status, body = 200, answer.getvalue().encode()
    except Full as full:
        return await _refuse(send, 503, str(full))
    except TimeoutError:
        status, body = 504, b"Request processing time exceeded limit"  # MLflow's words
    except MlflowException as exc:
        status, body = exc.get_http_status_code(), exc.serialize_as_json().encode()
    except Exception:  # as MLflow: logged, and a 400 without the traceback's text
        logging.getLogger(__name__).exception("the model failed on %s", images.shape)
        status, body = 400, MlflowException.invalid_parameter_value(_FAILED).serialize_as_json()
        body = body.encode()
    await respond(send, status, body)


async def respond(send, status: int, body: bytes, kind=b"application/json", headers=()) -> None:
    """Send a whole HTTP answer through the ASGI `send`: `body` of type `kind`."""
    start = [(b"content-type", kind), (b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


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
    code = "TEMPORARILY_UNAVAILABLE" if status == 503 else "BAD_REQUEST"
    body = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"connection", b"close")] + ([(b"retry-after", b"1")] if status == 503 else [])
    await respond(send, status, body, headers=headers)
