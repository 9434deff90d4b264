"""Stage 1: the one full pass over a collection's images.

Each worker process reads one file through the store and analyses it
(:func:`dedup_assets.core.analyse.analyse_bytes`). Every path gets exactly one row, in the
order given, whether or not it could be read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor

from .analyse import DEFAULT_TARGET_SIDE, analyse_bytes
from .parallel import ordered_map
from .store import ImageStore


def analyse_path(
    store: ImageStore, collection: str, target_side: int, max_pixels: int, path: str
) -> dict:
    try:
        data = store.read_bytes(collection, path)
    except Exception as exc:  # noqa: BLE001 - every file must get a row
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


def analyse_collection(
    store: ImageStore,
    collection: str,
    paths: Iterable[str],
    *,
    workers: int | None = None,
    target_side: int = DEFAULT_TARGET_SIDE,
    max_pixels: int = 150_000_000,
    pool: Executor | None = None,
) -> Iterator[dict]:
    """One row per path, in order, computed on ``workers`` processes with bounded memory
    (``pool``: an already running ``parallel.worker_pool`` to use)."""
    fn = functools.partial(analyse_path, store, collection, target_side, max_pixels)
    return ordered_map(fn, paths, workers=workers, pool=pool)
