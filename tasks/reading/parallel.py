"""CPU-bound work over many items in forked worker processes, results in input order.

Parsing thousands of returns is pure Python: one process uses one core. Forked workers
inherit what the caller already holds (the config, its unit index) without pickling it;
only items and results cross over.
Small batches stay in this process, where forking would cost more than it saves.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Below this many items, work stays in this process.
PARALLEL_FROM = 200
_job: tuple[Callable, tuple, bool] | None = None  # what forked workers inherit (fn, shared, packed)


def workers_wanted() -> int:
    """Worker processes: ``BULLETIN_WORKERS``, else the CPUs this process may use (at most 8)."""
    env = os.environ.get("BULLETIN_WORKERS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _run_chunk(items: list) -> list | bytes:
    fn, shared, packed = _job  # type: ignore[misc]
    results = [fn(*shared, item) for item in items]
    return pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL) if packed else results


def map_forked(fn: Callable[..., R], items: Sequence[T], shared: tuple = (), *,
               progress: Callable[[int, int], None] | None = None,
               workers: int | None = None) -> list[R]:
    """``[fn(*shared, item) for item in items]``, in forked workers when there are many items.

    ``fn`` must not raise for one bad item (return the failure as data instead) and should not
    log: a worker has no share in the parent's logging threads. ``progress(done, total)``
    is called in this process after every chunk."""
    workers = workers or workers_wanted()
    if len(items) < PARALLEL_FROM:
        workers = 1
    size = 100 if workers < 2 else max(20, min(500, len(items) // (workers * 4)))
    with ForkedPool(fn, shared, workers) as pool:
        for i in range(0, len(items), size):
            pool.submit(items[i:i + size])
        return pool.results(progress)


def _noop() -> None:
    return None


class ForkedPool:
    """Chunks of items submitted over time, each run as ``[fn(*shared, item) ...]`` in forked
    workers while the caller goes on (e.g. parsing one chunk of returns while the next one is
    archived); ``results()`` gives every result in submission order.

    The workers are forked when the pool is made, so make it before starting any threads.
    With one worker (or no ``fork``) the items are run in ``results()``, in this process.
    ``packed``: the workers' results stay pickled, a chunk per ``bytes``, until the caller
    unpickles them (:meth:`parts`); many results then take a fraction of their memory."""

    def __init__(self, fn: Callable[..., R], shared: tuple = (), workers: int | None = None,
                 packed: bool = False):
        global _job
        self._fn, self._shared = fn, shared
        self._parts: list = []  # futures, or item lists to run here
        self._sizes: list[int] = []  # items per part
        self._submitted = 0
        self._pool: ProcessPoolExecutor | None = None
        self._frozen = False
        workers = workers or workers_wanted()
        if workers >= 2 and "fork" in multiprocessing.get_all_start_methods():
            _job = (fn, shared, packed)
            # the caller's objects (the loaded config above all) go to the permanent generation
            # while the workers are forked and as long as they run: a collection, in a worker
            # or here, then never writes to them, and their pages stay shared instead of being
            # copied on either side (at 100,000 returns the intake's peak fell from 1,024 to
            # 930 MB, bench/README.md)
            gc.freeze()
            self._frozen = True
            try:
                self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
                self._pool.submit(_noop).result()  # fork every worker now, before the caller's threads
            except BaseException:
                self._thaw()
                raise

    def submit(self, items: Sequence[T]) -> None:
        if items:
            self._parts.append(self._pool.submit(_run_chunk, list(items)) if self._pool else list(items))
            self._sizes.append(len(items))
            self._submitted += len(items)

    def completed(self) -> int:
        """How many submitted items the workers have finished so far."""
        return sum(n for part, n in zip(self._parts, self._sizes)
                   if self._pool and part is not None and part.done() and part.exception() is None)

    def results(self, progress: Callable[[int, int], None] | None = None) -> list[R]:
        """Every result in submission order; ``progress(done, submitted)`` after each chunk."""
        out: list[R] = []
        for part in self.parts(progress):
            out += pickle.loads(part) if isinstance(part, bytes) else part
        return out

    def parts(self, progress: Callable[[int, int], None] | None = None) -> list[list[R] | bytes]:
        """Each submitted chunk's results, in submission order: a list, or (``packed``, from a
        worker) its pickle; ``progress(done, submitted)`` after each chunk."""
        out: list[list[R] | bytes] = []
        done = 0
        for i, items in enumerate(self._sizes):
            part = self._parts[i]
            out.append(part.result() if self._pool else [self._fn(*self._shared, item) for item in part])
            self._parts[i] = None  # the results are the caller's now
            done += items
            if progress:
                progress(done, self._submitted)
        self._parts, self._sizes, self._submitted = [], [], 0
        return out

    def close(self) -> None:
        global _job
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            _job = None
        self._thaw()

    def _thaw(self) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def __enter__(self) -> "ForkedPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
