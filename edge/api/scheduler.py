"""Up to `workers` generations at a time (the runtime's --parallel sequences), behind a bounded FIFO queue.

`Scheduler.submit(job)` puts a `Job` at the back of the queue or raises `QueueFullError` (HTTP 429) when
`max_queue` jobs already wait; each worker thread takes jobs in arrival order, iterates the job's event
generator (the runtime's `stream_chat`, which the engine batches with the other running ones) and hands each
event to the job's asyncio queue on the server's event loop.

Cancellation (`Scheduler.cancel(job)`, e.g. the client went away): a waiting job leaves the queue at once; a
running job's `cancel_requested` event is set: the runtime got that event, so its sequence leaves the engine
at the next step (even during a long prefill) and frees its slot; the worker then closes the generator and
takes the next job. Only that job's sequence is affected.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from edge.errors import DecodeAborted, GlmEdgeError, QueueFullError, ShuttingDownError

log = logging.getLogger(__name__)

EVENT, ERROR, END = "event", "error", "end"


class Job:
    """One request's generation. Created on the event loop; `events` is read there."""

    def __init__(self, start: Callable[[threading.Event], Iterator[Any]], loop: asyncio.AbstractEventLoop):
        self.start = start  # start(cancel_requested) -> the runtime's event iterator
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.state = "new"  # new, queued, running, done
        self.cancel_requested = threading.Event()
        self.created = time.perf_counter()
        self.started: float | None = None
        self.finished: float | None = None
        self.outcome = ""  # ok, error, cancelled

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.created

    def emit(self, kind: str, payload: Any = None) -> None:
        """Thread-safe: deliver to the job's asyncio queue (dropped if the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:
            pass  # the event loop is closed: nobody is listening any more

    async def next(self) -> tuple[str, Any]:
        return await self.events.get()


class Scheduler:
    def __init__(self, workers: int = 1, max_queue: int = 16, on_finish: Callable[[Job], None] | None = None):
        self.workers = workers
        self.max_queue = max_queue
        self.on_finish = on_finish
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._current: set[Job] = set()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"glm-edge-generation-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._current)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (--max-queue "
                                     f"{self.max_queue}); retry later")
            job.state = "queued"
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Withdraw a waiting job or stop a running one; a finished job is left alone."""
        with self._cond:
            job.cancel_requested.set()
            if job.state == "queued":
                self._waiting.remove(job)
                job.state = "done"
                job.outcome = "cancelled"
                job.emit(END, "cancelled")

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, cancel waiting ones, stop the running one and join the worker."""
        with self._cond:
            self._stopping = True
            while self._waiting:
                job = self._waiting.popleft()
                job.state = "done"
                job.emit(ERROR, ShuttingDownError("the server is shutting down"))
            current = list(self._current)
            self._cond.notify_all()
        for job in current:
            self.cancel(job)
        for thread in self._threads:
            thread.join(timeout)

    # --- worker -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                job.state = "running"
                job.started = time.perf_counter()
                self._current.add(job)
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._current.discard(job)
                    job.state = "done"
                    job.finished = time.perf_counter()
                if self.on_finish is not None:
                    self.on_finish(job)

    def _run(self, job: Job) -> None:

        gen = None
        try:
            gen = job.start(job.cancel_requested)
            for event in gen:
                if job.cancel_requested.is_set():
                    break
                job.emit(EVENT, event)
            job.outcome = "cancelled" if job.cancel_requested.is_set() else "ok"
            job.emit(END, job.outcome)
        except DecodeAborted:
            job.outcome = "cancelled"
            job.emit(END, "cancelled")
        except Exception as e:  # delivered to the waiting request, which maps it to an HTTP error
            job.outcome = "error"
            if not isinstance(e, GlmEdgeError):
                log.exception("generation failed")
            job.emit(ERROR, e)
        finally:
            if gen is not None:
                gen.close()

