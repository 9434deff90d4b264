"""Run a per-image function over many images on all cores with bounded memory.

Workers read the bytes themselves (through the picklable store), so the parent never holds
more than ``max_in_flight`` results. Results come back in submission order, so output is
deterministic whatever the scheduling.

Workers are forked from a forkserver that has already imported the mapped function's
module (fast pool start) and runs native libraries single-threaded (OpenBLAS/OpenMP
threads, OpenCV): the processes are the parallelism, and nested thread pools on a busy
machine only add contention.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _run_chunk(fn: Callable[[T], R], items: list[T]) -> list[R]:
    return [fn(item) for item in items]


_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def _init_worker() -> None:
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(1)


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _context(fn: Callable | None) -> mp.context.BaseContext:
    """A forkserver context (spawn where there is none). On first use the forkserver is
    started with single-threaded native libraries and the module of ``fn`` preloaded; the
    parent's environment is left as it was."""
    if "forkserver" not in mp.get_all_start_methods():  # pragma: no cover - not Linux/macOS
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    from multiprocessing import forkserver

    server = forkserver._forkserver  # noqa: SLF001 - the process-wide forkserver
    if getattr(server, "_forkserver_pid", None) is None:
        inner = fn.func if isinstance(fn, functools.partial) else fn
        module = getattr(inner, "__module__", None)
        if module and module != "__main__":
            ctx.set_forkserver_preload([module])
        with _env(**dict.fromkeys(_SINGLE_THREAD_ENV, "1")):
            forkserver.ensure_running()
    return ctx


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    chunk_size: int = 16,
    max_in_flight_chunks: int | None = None,
    pool: Executor | None = None,
) -> Iterator[R]:
    """Like ``map(fn, items)`` over worker processes, lazily and in order.

    ``fn`` must be a picklable module-level callable (a ``functools.partial`` is fine).
    ``workers=1`` runs inline in this process (no pool), which is handy for debugging.
    At most ``max_in_flight_chunks`` chunks (default 4 per worker) are submitted at once, so
    ``items`` may be a generator over millions of entries. ``pool``: an executor from
    :func:`worker_pool` to use instead of starting one (it is left running).
    """
    workers = workers or default_workers()
    if pool is not None:
        yield from _map_on(pool, fn, items, chunk_size, max_in_flight_chunks or 4 * workers)
        return
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    with worker_pool(workers, fn) as own:
        yield from _map_on(own, fn, items, chunk_size, max_in_flight_chunks or 4 * workers)


def worker_pool(workers: int, fn: Callable | None = None) -> ProcessPoolExecutor:
    """The process pool ``ordered_map`` uses (``fn``: a function whose module the workers
    should have imported already)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=_context(fn), initializer=_init_worker)


def _map_on(
    pool: Executor, fn: Callable[[T], R], items: Iterable[T], chunk_size: int, limit: int
) -> Iterator[R]:
    pending: deque[Future[list[R]]] = deque()
    it = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < limit:
            chunk: list[Any] = []
            for item in it:
                chunk.append(item)
                if len(chunk) >= chunk_size:
                    break
            if not chunk:
                exhausted = True
                break
            pending.append(pool.submit(_run_chunk, fn, chunk))
        if not pending:
            return
        yield from pending.popleft().result()
