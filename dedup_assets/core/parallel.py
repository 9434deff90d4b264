"""Run a per-image function over many images on all cores with bounded memory.

Workers read the bytes themselves (through the picklable store), so the parent never holds
more than ``max_in_flight`` results. Results come back in submission order, so output is
deterministic whatever the scheduling.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    chunk_size: int = 16,
    max_in_flight_chunks: int | None = None,
) -> Iterator[R]:
    """Like ``map(fn, items)`` over worker processes, lazily and in order.

    ``fn`` must be a picklable module-level callable (a ``functools.partial`` is fine).
    ``workers=1`` runs inline in this process (no pool), which is handy for debugging.
    At most ``max_in_flight_chunks`` chunks (default 4 per worker) are submitted at once, so
    ``items`` may be a generator over millions of entries.
    """
    workers = workers or default_workers()
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    limit = max_in_flight_chunks or 4 * workers
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    pending: deque[Future[list[R]]] = deque()
    it = iter(items)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
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
