"""`cifar10-mlops serve`: MLflow's scoring app behind request limits. The limits in-process on
a stand-in app; the real server on the registered champion for memory and staying up."""

import asyncio
import http.client
import json
import os
import socket
import threading
import time
from functools import partial
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest

from cifar10_mlops.stages import register
from cifar10_mlops.serving import limits, pyfunc as serving, server as serve
from cifar10_mlops.serving.predict import Source
from cifar10_mlops.core.health import answers
from helpers import make_images, stage_args
from servers import BIN, env_with_bin, free_port, start, stop, wait_for

JSON = {"content-type": "application/json"}


async def echo(scope, receive, send) -> None:
    """A stand-in for MLflow's app: answers 200 with the size of the body it received."""
    message = await receive()
    assert message["type"] == "http.request" and not message["more_body"]
    body = json.dumps({"size": len(message["body"])}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def call(
    app, chunks: list[bytes], headers: dict, pause: float = 0.0, path: str = "/invocations"
) -> tuple[int, dict, int]:
    """Run the ASGI `app` on a POST whose body arrives in `chunks`, `pause` seconds apart;
    (status, JSON answer, how many chunks the app read)."""
    queue, sent = list(chunks), []

    async def receive():
        await asyncio.sleep(pause)
        if not queue:
            return {"type": "http.disconnect"}
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message):
        sent.append(message)

    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    scope = {"type": "http", "method": "POST", "path": path, "headers": raw}
    asyncio.run(app(scope, receive, send))
    answer = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(answer), len(chunks) - len(queue)


def test_limit_requests_passes_a_body_within_the_limits_whole():
    app = limits.limit_requests(echo, timeout=5)
    chunks = [b'{"inputs": ', b"[[[[1, 2, 3]]]]", b"}"]
    assert call(app, chunks, JSON) == (200, {"size": 27}, 3)
    assert call(app, [b""], {}, path="/ping") == (200, {"size": 0}, 1)


def test_limit_requests_refuses_a_body_that_is_not_json_unread():
    app = limits.limit_requests(echo, timeout=5)
    for headers in ({"content-type": "text/csv"}, {}):  # pandas: 200 kB, a minute of parsing
        status, answer, read = call(app, [b"0," * 100_000 + b"0\n"], headers)
        assert (status, read) == (415, 0)
        assert "the model takes JSON only: send Content-Type: application/json" in answer["message"]


def test_limit_requests_refuses_a_repeated_content_type_unread():
    """Starlette reads the first of two headers: a CSV body must not pass as JSON."""
    app = limits.limit_requests(echo, timeout=5)
    raw = [(b"content-type", b"text/csv"), (b"content-type", b"application/json")]
    queue, sent = [b"0," * 100_000 + b"0\n"], []

    async def receive():
        return {"type": "http.request", "body": queue.pop(), "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": raw}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400 and queue  # the body was never read
    assert json.loads(sent[1]["body"])["message"] == "bad input: header content-type given twice"


def test_limit_requests_refuses_an_oversized_body_before_reading_it():
    app = limits.limit_requests(echo, timeout=5, max_bytes=1000)
    status, answer, read = call(app, [b"0" * 100] * 20, {**JSON, "content-length": "2000"})
    assert (status, read) == (413, 0)
    assert "over the limit of 1000 bytes" in answer["message"]
    assert f"at most {serving.MAX_IMAGES} images" in answer["message"]


def test_limit_requests_refuses_a_chunked_body_as_it_grows_past_the_limit():
    app = limits.limit_requests(echo, timeout=5, max_bytes=1000)
    status, answer, read = call(app, [b"0" * 300] * 100, JSON)  # no content-length
    assert (status, read) == (413, 4)  # 1200 bytes: never more than the limit and one chunk
    assert "over the limit of 1000 bytes" in answer["message"]
    # exactly the limit passes
    exactly = b'{"inputs": [' + b" " * 986 + b"]}"
    assert call(app, [exactly[:500], exactly[500:]], JSON) == (200, {"size": 1000}, 2)


def test_limit_requests_refuses_a_json_body_deeper_than_a_request_and_slow_bodies():
    app = limits.limit_requests(echo, timeout=0.5)
    deep = b'{"inputs":' + b"[" * 100_000  # json.loads: RecursionError, a 500
    status, answer = call(app, [deep], JSON)[:2]
    assert status == 400
    assert "bad input: JSON nested 100001 levels deep, the limit is 32;" in answer["message"]

    status, answer, read = call(app, [b"0"] * 100, JSON, pause=0.1)
    assert status == 408 and read < 10  # of 100 chunks, 0.1 s apart
    assert "request body incomplete after 0.5 s" in answer["message"]


def images_json(n: int, pixel: int, separators=(",", ":")) -> bytes:
    """{"inputs": [n images of one pixel value]}, made cheaply by repeating one image."""
    image = json.dumps(np.full(serving.IMAGE_SHAPE, pixel).tolist(), separators=separators)
    return ('{"inputs":[' + separators[0].join([image] * n) + "]}").encode()


def test_the_limits_admit_the_largest_request_and_little_more():
    for separators in ((",", ":"), (", ", ": ")):  # compact (`cifar10-mlops request`), default
        largest = images_json(serving.MAX_IMAGES, 255, separators)
        assert len(largest) <= limits.MAX_BODY_BYTES
        assert limits.json_refusal(largest) is None
    limit, lists = serving.MAX_IMAGES, limits.MAX_LISTS
    refusal = limits.json_refusal(images_json(limit + 1, 0))
    assert f"as many as {limit + 1} images have, the limit is {limit} images" in refusal
    refusal = limits.json_refusal(b'{"inputs":[' + b"[0]," * (lists - 1) + b"[0]]}")
    assert f"{lists + 1} JSON lists, as many as {limit + 1} images have" in refusal
    assert "3 JSON objects, a request has one" in limits.json_refusal(b'{"inputs":[{},{}]}')
    message = "2 JSON strings, a request has one (inputs)"
    assert message in limits.json_refusal(b'{"inputs":["a",[0]]}')


def test_only_an_object_of_inputs_reaches_mlflow():
    """dataframe_split and dataframe_records reach pandas, which builds a column per value of a
    row: 10 million zeros in one row took about 50 s and 5 GB."""
    wide = b'{"dataframe_split": {"data": [[' + b"0," * 1000 + b"0]]}}"
    records = b'{"dataframe_records": [{"a": 0}]}'
    for body in (wide, records, b'{"inputs": [[0]], "params": {"a": 1}}', b"[[0]]", b"0"):
        refusal = limits.json_refusal(body)
        assert refusal and refusal.startswith("bad input: "), body[:40]
    assert "must be an object of one key, inputs" in limits.json_refusal(wide)
    assert """not '{"dataframe_split": {"data": [[0,0,0,0,0'""" in limits.json_refusal(wide)
    for body in (b'{"inputs": [[0]]}', b' {\n "instances" : [[0]]}'):
        assert limits.json_refusal(body) is None


def test_requests_beyond_the_slots_get_503_at_once_and_ping_takes_none():
    """MAX_BUSY predictions at once: the next is told to retry, not queued; /ping answers."""
    release = None

    async def slow(scope, receive, send) -> None:
        await receive()
        if scope["path"] == "/invocations":  # a prediction; MLflow answers /ping at once
            await release.wait()
        await echo(scope, _empty, send)

    async def _empty():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        app = limits.limit_requests(slow, timeout=5)
        sent = [[] for _ in range(limits.MAX_BUSY + 2)]

        def run(i: int, path: str = "/invocations"):
            raw = [(b"content-type", b"application/json")]
            scope = {"type": "http", "method": "POST", "path": path, "headers": raw}
            body = {"type": "http.request", "body": b'{"inputs": [[0]]}', "more_body": False}
            return app(scope, lambda: _first(body), lambda m: _append(sent[i], m))

        busy = [asyncio.create_task(run(i)) for i in range(limits.MAX_BUSY)]
        await asyncio.sleep(0.1)
        await asyncio.wait_for(run(limits.MAX_BUSY), 1)  # answered at once
        await asyncio.wait_for(run(limits.MAX_BUSY + 1, "/ping"), 1)
        release.set()
        await asyncio.gather(*busy)
        return sent

    sent = asyncio.run(scenario())
    assert [s[0]["status"] for s in sent] == [200] * limits.MAX_BUSY + [503, 200]
    refused = sent[limits.MAX_BUSY][0]
    assert (b"retry-after", b"1") in refused["headers"]
    assert (
        "4 requests being predicted; retry"
        in json.loads(sent[limits.MAX_BUSY][1]["body"])["message"]
    )


async def _first(message):
    return message


async def _append(into: list, message) -> None:
    into.append(message)


def test_json_shape_counts_brackets_outside_strings_in_linear_time():
    assert limits.json_shape(b'{"inputs": [[[[0, 1, 2]]]]}') == (5, 4, 1)
    assert limits.json_shape(b'{"a": "[[[{{", "b": "\\"]]]]]]", "c": [[1]]}') == (3, 2, 1)
    assert limits.json_shape(b'["]]]]]]", ' + b"[" * 50)[0] == 51  # closes in a string hide none
    assert limits.json_shape(b'[["[[[[[[[[') == (2, 2, 0)  # unterminated: a parser stops there
    assert limits.json_shape(b"") == (0, 0, 0)
    started = time.perf_counter()
    limits.json_shape(b'"' + b'\\"' * (1 << 20))  # one unterminated string of escaped quotes
    assert time.perf_counter() - started < 5  # a backtracking scan takes hours


def test_serve_runs_mlflows_app_behind_the_limits_with_mlflows_timeout(monkeypatch):
    import uvicorn
    from mlflow.pyfunc import scoring_server

    ran = {}
    tenth = SimpleNamespace(predict=lambda images, params=None: np.full((len(images), 10), 0.1))
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")
    monkeypatch.setattr(
        serve, "load_resolved", lambda uri: ran.update(uri=uri) or (tenth, Source(uri, uri))
    )
    monkeypatch.setattr(scoring_server, "init", lambda model: model.current[0] is tenth and echo)
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.update(app=app, **options))
    serve.main(["--model", "models:/m@champion", "--port", "5999"])
    assert ran.pop("uri") == "models:/m@champion"
    app = ran.pop("app")
    assert ran == {"host": "127.0.0.1", "port": 5999, "http": serve.GuardedProtocol}
    assert call(app, [b'{"inputs": [1]}'], JSON) == (200, {"size": 15}, 1)  # to MLflow's app
    pixels = images_json(2, 1)  # the fast path (batch.py): the model's own predict
    assert call(app, [pixels], JSON) == (200, {"predictions": [[0.1] * 10] * 2}, 1)
    status, answer, _ = call(app, [b"0"] * 100, JSON, pause=0.2)
    assert status == 408 and "after 1 s" in answer["message"]


# The real server


def vm(pid: int) -> dict[str, int]:
    """The VmRSS and VmHWM (peak) of process `pid`, in bytes."""
    lines = open(f"/proc/{pid}/status").read().splitlines()
    return {
        k: int(v.split()[0]) * 1024 for k, v in (x.split(":", 1) for x in lines) if k[:2] == "Vm"
    }


def cpu_seconds(pid: int) -> float:
    """CPU time process `pid` has used, user and system."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_raw(port: int, headers: dict, body) -> tuple[int, dict]:
    """POST /invocations by hand: the body (an iterable of bytes) is sent from a thread while
    the answer is read, as a client streaming a large upload does; a server that answers and
    closes early ends the sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())

        def feed():
            try:
                for chunk in body:
                    sock.sendall(chunk)
            except OSError:
                pass  # closed by the server after its answer

        sender = threading.Thread(target=feed, daemon=True)
        sender.start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = json.loads(response.read())
        sender.join(timeout=60)
        return response.status, answer


def post(port: int, body: bytes) -> tuple[int, dict]:
    headers = {**JSON, "content-length": len(body)}
    return post_raw(port, headers, [body])


@pytest.mark.long(seconds=25)
def test_served_model_refuses_oversized_requests_in_bounded_memory(candidate, tmp_path):
    candidate(0.61)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    port, log = free_port(), tmp_path / "serve.log"
    env = env_with_bin(MLFLOW_TRACKING_URI=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    cmd = [BIN / "cifar10-mlops", "serve", "--model", "models:/cifar10-cnn@champion"]
    server = start([*cmd, "--port", port], log, env, Path.cwd())
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "model server", server, log)
        # connections that send nothing, or headers by the byte: twice the 4 that took every
        # connection slot before; each is answered 408 and closed after HEADER_TIMEOUT
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        opened = time.monotonic()
        idle[0].sendall(b"POST /invo")
        images, _ = make_images(2, seed=5)
        valid = json.dumps({"inputs": images.tolist()}).encode()
        assert post(port, valid)[0] == 200
        idle[0].sendall(b"cations HTTP/1.1\r\n")  # a trickle does not extend the deadline
        with open(f"/proc/{server.pid}/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM from now on
        before = vm(server.pid)["VmRSS"]

        mib = b"0" * 2**20
        status, answer = post_raw(port, {**JSON, "content-length": 125 * 2**20}, [mib] * 125)
        assert status == 413, answer
        assert f"over the limit of {limits.MAX_BODY_BYTES} bytes" in answer["message"]
        frame = b"%x\r\n%s\r\n" % (len(mib), mib)
        status, answer = post_raw(port, {**JSON, "transfer-encoding": "chunked"}, [frame] * 125)
        assert status == 413, answer
        limit = serving.MAX_IMAGES
        refused = {  # before MLflow parses them: up to GBs each, or a RecursionError
            f"{limit + 1} images have, the limit is {limit} images": images_json(limit + 1, 0),
            "JSON lists": b'{"inputs":[' + b"[0]," * 5_000_000 + b"0]}",  # 20 MB
            "JSON objects": b'{"inputs":[' + b"{}," * 6_000_000 + b"0]}",
            "JSON strings": b'{"inputs":[' + b'"a",' * 4_000_000 + b"0]}",
            "nested 100001 levels deep": b'{"inputs":' + b"[" * 100_000,
            "must be an object of one key, inputs": (  # pandas: ~50 s and 5 GB
                b'{"dataframe_split": {"data": [[' + b"0," * 9_999_999 + b"0]]}}"
            ),
        }
        for message, body in refused.items():
            status, answer = post(port, body)
            assert status == 400 and message in answer["message"], answer
        grown = vm(server.pid)["VmHWM"] - before
        assert grown < 200 * 2**20, f"{grown / 2**20:.0f} MiB"  # the bodies: up to 20 MiB

        used = cpu_seconds(server.pid)
        time.sleep(1)
        assert cpu_seconds(server.pid) - used < 0.2  # nothing left computing
        status, answer = post(port, valid)
        assert status == 200 and np.array(answer["predictions"]).shape == (len(images), 10)

        time.sleep(max(0.0, opened + serve.HEADER_TIMEOUT + 1 - time.monotonic()))
        for sock in idle:
            sock.settimeout(5)
            reply = b"".join(iter(partial(sock.recv, 4096), b""))  # until the server closes
            assert reply.startswith(b"HTTP/1.1 408 Request Timeout"), reply
            assert reply.endswith(b"no request headers within 10 s"), reply
            sock.close()

        # /ping answers while the largest request is predicted
        answered = []
        largest = threading.Thread(
            target=lambda: answered.append(post(port, images_json(limit, 9)))
        )
        began = time.monotonic()
        largest.start()
        pings = []  # seconds each /ping took, while the prediction runs
        while largest.is_alive():
            started = time.monotonic()
            assert answers(f"http://127.0.0.1:{port}/ping", timeout=120)
            pings.append(time.monotonic() - started)
            time.sleep(0.02)
        took = time.monotonic() - began
        # MLflow's json.loads held Python's GIL for 40 % of the request (4.8 of 11.9 s; 12.6 s on
        # CI), and /ping waited as long; parsed in C loops (batch.py), 0.02 of 1.2 s
        assert len(pings) >= 3 and max(pings) < took / 4, (took, pings)
        largest.join(timeout=120)
        assert answered[0][0] == 200 and len(answered[0][1]["predictions"]) == limit
    finally:
        stop(server)
