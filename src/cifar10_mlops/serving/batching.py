"""Server-side batching for `cifar10-mlops serve`: requests of integer pixels that arrive while
the model is busy wait, and the next prediction takes them all together, up to `max_images`
images. There is no waiting window: an idle server predicts a request at once, so batching
adds no latency; under load, one call of the model answers many requests, and Keras's cost
per call (about 0.11 s here, whatever the batch: docs/benchmarks.md) is paid once for them.

At most `max_queued` images wait; a request past that is refused (HTTP 503, Retry-After), so
the queue holds at most MAX_QUEUED images' 3 KB each (12 MB), however many clients call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np

from cifar10_mlops.serving.pyfunc import MAX_IMAGES

MAX_QUEUED = 4 * MAX_IMAGES  # images waiting to be predicted


class Full(Exception):
    """More images wait than the queue takes: answer 503 and let the client retry."""


PredictMany = Callable[[list[np.ndarray]], list[np.ndarray]]


class Batcher:
    """Predicts the batches handed to `predict` together, through `predict_many`, which takes
    a list of (n_i, 32, 32, 3) batches and answers the list of their (n_i, 10) probabilities,
    calling the model once. One prediction runs at a time, in a thread, so the event loop
    answers /ping and reads bodies meanwhile."""

    def __init__(self, predict_many: PredictMany, max_images=MAX_IMAGES, max_queued=MAX_QUEUED):
        if not 1 <= max_images <= MAX_IMAGES or max_queued < MAX_IMAGES:
            raise ValueError(
                f"max_images {max_images} not in 1-{MAX_IMAGES} (the model's limit a call) or "
                f"max_queued {max_queued} under {MAX_IMAGES}"
            )
        self.predict_many, self.max_images, self.max_queued = predict_many, max_images, max_queued
        self.waiting: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self.queued = 0  # images in `waiting`
        self.running = False
        self.task: asyncio.Task | None = None  # the drain, kept while it runs

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """The probabilities of `images`, predicted with whatever else waits; Full at once if
        the queue holds too many images. A caller that stops waiting (a timeout) leaves its
        images to be predicted and their answer dropped."""
        if self.queued + len(images) > self.max_queued:
            raise Full(f"busy: {self.queued} images waiting to be predicted; retry")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((images, future))
        self.queued += len(images)
        if not self.running:
            self.running = True
            self.task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The waiting requests of the next prediction: the first, and those after it while
        they fit in max_images."""
        batch, size = [], 0
        while self.waiting and (not batch or size + len(self.waiting[0][0]) <= self.max_images):
            images, future = self.waiting.popleft()
            self.queued -= len(images)
            if not future.cancelled():
                batch.append((images, future))
                size += len(images)
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[np.ndarray, asyncio.Future]] = []
        try:
            while batch := self._take():
                try:
                    answers = await asyncio.to_thread(self.predict_many, [i for i, _ in batch])
                    if len(answers) != len(batch):
                        raise ValueError(f"{len(answers)} answers for {len(batch)} requests")
                except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                    answers = [exc] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():
                        continue  # its caller stopped waiting
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        except BaseException as exc:  # cancelled (the server stops): no request waits forever
            for _, future in [*batch, *self.waiting]:
                if not future.done():
                    future.set_exception(RuntimeError(f"the server stopped predicting: {exc!r}"))
            self.waiting.clear()
            self.queued = 0
            raise
        finally:
            self.running = False


def predict_each(predict) -> PredictMany:
    """A PredictMany of a plain `predict` (a pyfunc model's): one call for all the batches,
    its answer split back."""

    def many(batches: list[np.ndarray]) -> list[np.ndarray]:
        answer = np.asarray(predict(np.concatenate(batches)))
        return np.split(answer, np.cumsum([len(b) for b in batches])[:-1])

    return many
