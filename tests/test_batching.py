"""Requests of integer pixels that wait for the model are predicted together
(serving/batching.py): each client gets its own images' answer, the model is called fewer times
than it is asked, a full queue answers 503, and a model's error reaches every request of its
call and no later one."""

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest

from cifar10_mlops.serving.batching import MAX_QUEUED, Batcher, Full, predict_each
from cifar10_mlops.serving.champion import Champion
from cifar10_mlops.serving.metrics import Metrics
from cifar10_mlops.serving.predict import Source
from test_champion import metric


class SlowModel:
    """Answers each image with its first pixel in column 0 (and 1 in column 1), after `seconds`
    or once `gate` is set; records the images of each call."""

    def __init__(self, seconds: float = 0.0, gate: threading.Event | None = None):
        self.seconds, self.gate, self.calls = seconds, gate, []
        self.failing: set[int] = set()  # the calls (from 0) that raise

    def predict(self, images, params=None):
        self.calls.append(len(images))
        call = len(self.calls) - 1
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.seconds)
        if call in self.failing:
            raise RuntimeError("the model broke")
        answer = np.zeros((len(images), 10))
        answer[:, 0], answer[:, 1] = images[:, 0, 0, 0], 1
        return answer


def images(count: int, value: int) -> np.ndarray:
    return np.full((count, 32, 32, 3), value, np.uint8)


def test_requests_that_wait_are_predicted_in_one_call_and_get_their_own_answers():
    model = SlowModel(0.3)

    async def main():
        batcher = Batcher(predict_each(model.predict))
        first = asyncio.create_task(batcher.predict(images(1, 0)))
        await asyncio.sleep(0.1)  # the model is busy with the first
        rest = await asyncio.gather(*(batcher.predict(images(k, k)) for k in range(1, 9)))
        return await first, rest

    first, rest = asyncio.run(main())
    assert model.calls == [1, sum(range(1, 9))]
    assert first.shape == (1, 10) and first[0, 0] == 0
    for k, answer in enumerate(rest, 1):
        assert answer.shape == (k, 10) and (answer[:, 0] == k).all()


def test_no_call_takes_more_images_than_its_limit_and_none_are_lost():
    model = SlowModel(0.1)

    async def main():
        batcher = Batcher(predict_each(model.predict), max_images=10)
        first = asyncio.create_task(batcher.predict(images(4, 0)))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, *(batcher.predict(images(4, k)) for k in range(1, 6)))

    asyncio.run(main())
    assert model.calls == [4, 8, 8, 4]


def test_a_full_queue_is_refused_at_once_and_the_rest_are_answered():
    gate = threading.Event()
    model = SlowModel(gate=gate)

    async def main():
        batcher = Batcher(predict_each(model.predict))
        running = asyncio.create_task(batcher.predict(images(1, 0)))
        await asyncio.sleep(0.1)  # taken: the model holds it until the gate opens
        waiting = [asyncio.create_task(batcher.predict(images(1024, k))) for k in range(4)]
        await asyncio.sleep(0)
        assert batcher.queued == MAX_QUEUED
        with pytest.raises(Full, match=f"busy: {MAX_QUEUED} images waiting to be predicted"):
            await batcher.predict(images(1, 9))
        gate.set()
        return await asyncio.gather(running, *waiting)

    answers = asyncio.run(main())
    assert [len(a) for a in answers] == [1, 1024, 1024, 1024, 1024]
    assert model.calls == [1, 1024, 1024, 1024, 1024] and max(model.calls) <= 1024


def test_a_models_error_reaches_every_request_of_its_call_and_no_later_one():
    model = SlowModel(0.2)
    model.failing = {1}

    async def main():
        batcher = Batcher(predict_each(model.predict))
        first = asyncio.create_task(batcher.predict(images(1, 0)))
        await asyncio.sleep(0.05)
        failed = await asyncio.gather(
            *(batcher.predict(images(1, k)) for k in (1, 2)), return_exceptions=True
        )
        return await first, failed, await batcher.predict(images(2, 7))

    first, failed, later = asyncio.run(main())
    assert first[0, 0] == 0 and (later[:, 0] == 7).all()
    assert [str(e) for e in failed] == ["the model broke"] * 2
    assert model.calls == [1, 2, 2]


def test_a_request_whose_client_stopped_waiting_is_not_predicted():
    model = SlowModel(0.3)

    async def main():
        batcher = Batcher(predict_each(model.predict))
        first = asyncio.create_task(batcher.predict(images(1, 0)))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.predict(images(5, 1)), 0.05)
        return await first, await batcher.predict(images(2, 2))

    first, second = asyncio.run(main())
    assert model.calls == [1, 2] and (second[:, 0] == 2).all()


@pytest.mark.parametrize("max_images", [0, 1025])
def test_bad_batcher_settings_are_refused(max_images):
    with pytest.raises(ValueError, match=f"max_images {max_images} not in 1-1024"):
        Batcher(predict_each(np.asarray), max_images=max_images)


def test_requests_waiting_when_the_server_stops_are_answered_not_left_hanging():
    gate = threading.Event()
    model = SlowModel(gate=gate)

    async def main():
        batcher = Batcher(predict_each(model.predict))
        first = asyncio.create_task(batcher.predict(images(1, 0)))
        await asyncio.sleep(0.05)  # the model holds it until the gate opens
        waiting = asyncio.create_task(batcher.predict(images(2, 1)))
        await asyncio.sleep(0)
        batcher.task.cancel()  # as at the server's shutdown
        answers = await asyncio.wait_for(asyncio.gather(first, waiting, return_exceptions=True), 5)
        gate.set()
        return answers, batcher

    answers, batcher = asyncio.run(main())
    assert [type(a) for a in answers] == [RuntimeError, RuntimeError]
    assert "the server stopped predicting" in str(answers[1])
    assert batcher.queued == 0 and not batcher.waiting and not batcher.running


def test_a_model_answering_too_few_batches_fails_its_requests_and_no_later_one():
    calls = []

    def short(batches):
        calls.append(len(batches))
        time.sleep(0.2)
        return [np.zeros((len(b), 10)) for b in batches][: 1 if len(calls) == 2 else None]

    async def main():
        batcher = Batcher(short)
        slow = asyncio.create_task(batcher.predict(images(1, 0)))
        await asyncio.sleep(0.05)  # the first call runs: the next two wait for it together
        rest = [asyncio.create_task(batcher.predict(images(1, k))) for k in (1, 2)]
        answers = asyncio.gather(slow, *rest, return_exceptions=True)
        return await asyncio.wait_for(answers, 5), await batcher.predict(images(1, 3))

    answers, later = asyncio.run(main())
    assert calls[:2] == [1, 2] and later.shape == (1, 10)
    assert [type(a) for a in answers[1:]] == [ValueError, ValueError]
    assert "1 answers for 2 requests" in str(answers[1])


@pytest.mark.parametrize("batch_images, calls", [(1024, "fewer"), (1, "one per request")])
def test_concurrent_clients_of_the_app_get_their_own_answers(monkeypatch, batch_images, calls):
    """16 clients at once through the server's whole app (limits, metrics, the champion):
    every answer is the client's own; batched, the model is called fewer times than asked."""
    from mlflow.pyfunc import scoring_server

    from cifar10_mlops.serving.server import build_app

    model = SlowModel(0.1)
    metrics = Metrics()
    champion = Champion("runs:/r/model", metrics, load=lambda uri: (model, Source(uri, uri)))
    monkeypatch.setattr(scoring_server, "init", lambda model: None)  # only the fast path runs
    app = build_app(champion, metrics, batch_images)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:

            async def ask(k: int) -> tuple[int, list]:
                body = json.dumps({"inputs": images(1 + k % 3, k).tolist()})
                answer = await client.post(
                    "/invocations", content=body, headers={"Content-Type": "application/json"}
                )
                return answer.status_code, answer.json()["predictions"]

            answers = await asyncio.gather(*(ask(k) for k in range(16)))
            return answers, (await client.get("/metrics")).text

    answers, text = asyncio.run(main())
    for k, (status, predictions) in enumerate(answers):
        assert status == 200 and [row[0] for row in predictions] == [k] * (1 + k % 3)
    assert metric(text, "cifar10_images_per_request_count") == 16
    assert metric(text, "cifar10_images_per_request_sum") == sum(1 + k % 3 for k in range(16))
    predictions = metric(text, "cifar10_images_per_prediction_count")
    assert predictions == len(model.calls) - 1  # the champion's trial image is not counted
    if calls == "fewer":
        assert predictions < 8 and max(model.calls) > 3
    else:
        assert predictions == 16 and max(model.calls) == 3
