"""Run a per-image function over many images on all cores with bounded memory.

Workers read the bytes themselves (through the picklable store), so the parent never holds
more than ``max_in_flight`` results. Results come back in submission order, so output is
deterministic whatever the scheduling.

Workers are forked from a forkserver that has already imported the mapped function's
module (fast pool start) and runs native libraries single-threaded (OpenBLAS/OpenMP
threads, OpenCV): the processes are the parallelism, and nested thread pools on a busy
machine only add contention.

Workers end with the process that started their pool, however it ends (``kill -9``
included): each watches that process and kills itself when it is gone, and the forkserver
exits once neither of them holds its pipe (:func:`_die_with`). They ignore SIGINT: a Ctrl-C
reaches the whole terminal's process group, and stopping is the owner's decision.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
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


#: for the resource tracker: it unlinks the semaphores of a pool whose owner was killed (or
#: stopped by :mod:`dedup_assets.interrupt`), and says so in a warning that is no news to a
#: user who stopped a run
_TRACKER_QUIET = "ignore::UserWarning:multiprocessing.resource_tracker"
_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def _die_with(owner: int) -> None:
    """Kill this process as soon as process ``owner`` has ended, from a daemon thread.

    On Linux the thread waits on a pidfd of ``owner`` (readable once it has exited, zombie
    or not); elsewhere it polls. ``PR_SET_PDEATHSIG`` would not do: a worker's parent is the
    forkserver, which itself only exits once every worker has closed its pipe."""
    try:
        fd = os.pidfd_open(owner)
    except ProcessLookupError:  # already gone
        os.kill(os.getpid(), signal.SIGKILL)
    except (AttributeError, OSError):  # pragma: no cover - not Linux >= 5.3
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:  # pragma: no cover
            while _alive(owner):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name=f"die-with-{owner}", daemon=True).start()


def _alive(pid: int) -> bool:  # pragma: no cover - the fallback of _die_with
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _init_worker(owner: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(owner)
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


#: Preloaded by the forkserver too: every stage's worker modules and stage 1's compiled
#: kernels, loaded once per process instead of once per worker of every pool.
WARM_MODULE = "dedup_assets.core.warm"


def _context(fn: Callable | None) -> mp.context.BaseContext:
    """A forkserver context (spawn where there is none). On first use the forkserver is
    started with single-threaded native libraries, :data:`WARM_MODULE` and the module of
    ``fn`` preloaded; the parent's environment is left as it was."""
    if "forkserver" not in mp.get_all_start_methods():  # pragma: no cover - not Linux/macOS
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    from multiprocessing import forkserver

    server = forkserver._forkserver  # noqa: SLF001 - the process-wide forkserver
    if getattr(server, "_forkserver_pid", None) is None:
        # the function's module, and those of the functions it was bound to (map_reading's
        # job is read_ahead_chunk bound to e.g. stage 1's analyse_path)
        inner = [fn.func, *fn.args] if isinstance(fn, functools.partial) else [fn]
        modules = [getattr(f, "__module__", None) for f in inner if callable(f)]
        modules = list(dict.fromkeys(m for m in [WARM_MODULE, *modules] if m and m != "__main__"))
        ctx.set_forkserver_preload(modules)
        quiet = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), _TRACKER_QUIET)))
        with _env(**dict.fromkeys(_SINGLE_THREAD_ENV, "1"), PYTHONWARNINGS=quiet):
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
    should have imported already). Its workers end when this process ends (:func:`_die_with`)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context(fn),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )


def _map_on(
    pool: Executor, fn: Callable[[T], R], items: Iterable[T], chunk_size: int, limit: int
) -> Iterator[R]:
    pending: deque[Future[list[R]]] = deque()
    it = iter(items)
    exhausted = False
    try:
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
    finally:  # stopped early (an error, an interrupt, a consumer that stops): the chunks
        for fut in pending:  # not started yet are dropped, not computed for nobody
            fut.cancel()


# --------------------------------------------------------------------------- read-ahead

#: reads in flight per worker process while it works on the files already read
DEFAULT_READ_AHEAD = 4


_READERS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of these threads
    os.register_at_fork(after_in_child=_READERS.clear)


def _reader_threads(n: int) -> ThreadPoolExecutor:
    """This process's ``n`` reader threads, started once and kept: starting threads for
    every chunk cost ~4 % of stage 1 on local files."""
    pool = _READERS.get(n)
    if pool is None:
        pool = _READERS[n] = ThreadPoolExecutor(n, thread_name_prefix="read-ahead")
    return pool


class ReadAhead:
    """A store seen by one worker for one chunk of files: the chunk's files are read on
    ``read_ahead`` threads ahead of the caller, who gets each back once, in order, from
    ``read_bytes`` (a read's exception is raised there). Anything else (another path, other
    methods) goes to the wrapped store. At most ``read_ahead`` files are held at once, so a
    slow store (Azure: tens of ms per GET) overlaps with the decoding instead of idling the core.
    """

    def __init__(self, store: Any, collection: str, paths: Iterable[str], read_ahead: int) -> None:
        self._store, self._collection = store, collection
        self._todo: deque[str] = deque(paths)
        self._pending: dict[str, deque[Future]] = {}
        self._in_flight = 0
        self._ahead = max(1, int(read_ahead))
        self._threads = _reader_threads(self._ahead) if self._ahead > 1 and len(self._todo) > 1 else None
        self._fill()

    def _fill(self) -> None:
        while self._threads is not None and self._todo and self._in_flight < self._ahead:
            path = self._todo.popleft()
            fut = self._threads.submit(self._store.read_bytes, self._collection, path)
            self._pending.setdefault(path, deque()).append(fut)
            self._in_flight += 1

    def read_bytes(self, collection: str, path: str) -> bytes:
        queue = self._pending.get(path) if collection == self._collection else None
        if not queue:
            return self._store.read_bytes(collection, path)
        fut = queue.popleft()
        if not queue:
            del self._pending[path]
        self._in_flight -= 1
        self._fill()
        return fut.result()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def close(self) -> None:
        """Cancel the reads not started and wait for those running (the threads stay for the
        next chunk)."""
        futures = [f for queue in self._pending.values() for f in queue]
        self._pending.clear()
        for fut in futures:
            fut.cancel()
        for fut in futures:
            if not fut.cancelled():
                with contextlib.suppress(Exception):
                    fut.result()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path_of(item: Any) -> str:
    return item if isinstance(item, str) else item[0]


def read_ahead_chunk(
    fn: Callable[..., R], extra: tuple, store: Any, collection: str, read_ahead: int, items: list
) -> list[R]:
    """``[fn(store, collection, *extra, item) for item in items]`` in a worker, with the items'
    files (``item`` or ``item[0]`` is the path) read ahead through :class:`ReadAhead`."""
    with ReadAhead(store, collection, [_path_of(i) for i in items], read_ahead) as ahead:
        return [fn(ahead, collection, *extra, item) for item in items]


def map_reading(
    fn: Callable[..., R],
    extra: tuple,
    store: Any,
    collection: str,
    items: Iterable[T],
    *,
    workers: int | None = None,
    chunk_size: int = 16,
    read_ahead: int | None = None,
    pool: Executor | None = None,
) -> Iterator[R]:
    """``fn(store, collection, *extra, item)`` for each item, in order, on worker processes
    (like :func:`ordered_map`; ``fn`` and ``extra`` picklable), each worker reading up to
    ``read_ahead`` files ahead of its work (:func:`read_ahead_chunk`; ``None``: the store's
    ``read_ahead``)."""
    if read_ahead is None:
        read_ahead = getattr(store, "read_ahead", DEFAULT_READ_AHEAD)
    job = functools.partial(read_ahead_chunk, fn, tuple(extra), store, collection, read_ahead)
    it = iter(items)
    chunks = iter(lambda: list(itertools.islice(it, chunk_size)), [])
    for results in ordered_map(job, chunks, workers=workers, chunk_size=1, pool=pool):
        yield from results


def start_forkserver() -> None:
    """Start the workers' forkserver now: it loads :data:`WARM_MODULE` while this process goes
    on (imports, Dagster), and the first pool finds it ready instead of waiting for it."""
    _context(None)
