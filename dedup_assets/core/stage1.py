"""Stage 1: the one full pass over a collection's images.

Each worker process takes a chunk of paths, reads their bytes through the store on a few
threads ahead of its analysis (:func:`dedup_assets.core.analyse.analyse_bytes`), so a slow
store (Azure: tens of milliseconds per GET) overlaps with decoding instead of idling the
core. Every path gets exactly one row, in the order given, whether or not it could be read.
Memory per worker is bounded by ``read_ahead + 1`` files.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor

from .analyse import DEFAULT_TARGET_SIDE, analyse_bytes
from .parallel import ordered_map
from .store import ImageStore

#: reads in flight per worker process while it analyses (1: read, then analyse)
DEFAULT_READ_AHEAD = 4
#: paths per task sent to a worker
CHUNK_SIZE = 16


def _row(path: str, data: bytes | None, exc: BaseException | None, target_side: int, max_pixels: int) -> dict:
    if exc is not None:  # every file must get a row
        row = analyse_bytes(b"", target_side=target_side, max_pixels=max_pixels)
        row.update(
            status="error",
            error_reason="read_failed",
            error_message=f"{type(exc).__name__}: {exc}",
            content_md5=None,
            file_size=None,
        )
        return {"path": path, **row}
    return {"path": path, **analyse_bytes(data, target_side=target_side, max_pixels=max_pixels)}


def _read(store: ImageStore, collection: str, path: str) -> tuple[bytes | None, BaseException | None]:
    try:
        return store.read_bytes(collection, path), None
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return None, exc


def analyse_path(
    store: ImageStore, collection: str, target_side: int, max_pixels: int, path: str
) -> dict:
    """The row of one path (read, then analyse)."""
    return _row(path, *_read(store, collection, path), target_side, max_pixels)


def analyse_chunk(
    store: ImageStore,
    collection: str,
    target_side: int,
    max_pixels: int,
    read_ahead: int,
    paths: list[str],
) -> list[dict]:
    """Rows of ``paths`` in order, with up to ``read_ahead`` reads in flight on threads
    while the files already read are analysed."""
    if read_ahead <= 1 or len(paths) <= 1:
        return [analyse_path(store, collection, target_side, max_pixels, p) for p in paths]
    out: list[dict] = []
    with ThreadPoolExecutor(min(read_ahead, len(paths)), thread_name_prefix="stage1-read") as threads:
        todo = iter(paths)
        pending: deque[tuple[str, Future]] = deque(
            (p, threads.submit(_read, store, collection, p)) for p in itertools.islice(todo, read_ahead)
        )
        while pending:
            path, fut = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, threads.submit(_read, store, collection, nxt)))
            out.append(_row(path, *fut.result(), target_side, max_pixels))
    return out


def _chunks(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(paths)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def analyse_collection(
    store: ImageStore,
    collection: str,
    paths: Iterable[str],
    *,
    workers: int | None = None,
    target_side: int = DEFAULT_TARGET_SIDE,
    max_pixels: int = 150_000_000,
    read_ahead: int = DEFAULT_READ_AHEAD,
    pool: Executor | None = None,
) -> Iterator[dict]:
    """One row per path, in order, computed on ``workers`` processes with bounded memory
    (``pool``: an already running ``parallel.worker_pool`` to use; ``read_ahead``: reads in
    flight per worker, see the module docstring)."""
    fn = functools.partial(analyse_chunk, store, collection, target_side, max_pixels, read_ahead)
    for rows in ordered_map(fn, _chunks(paths, CHUNK_SIZE), workers=workers, chunk_size=1, pool=pool):
        yield from rows
