"""Stage 1: the one full pass over a collection's images.

Each worker process takes a chunk of paths and reads their bytes through the store a few
files ahead of its analysis (:func:`dedup_assets.core.parallel.map_reading`;
:func:`dedup_assets.core.analyse.analyse_bytes` per file), so a slow store (Azure: tens of
milliseconds per GET) overlaps with decoding instead of idling the core. Every path gets
exactly one row, in the order given, whether or not it could be read. Memory per worker is
bounded by ``read_ahead`` files (by default the store's: 4 for Azure, 1 for a local folder,
where reader threads only cost time).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Executor

from .analyse import DEFAULT_TARGET_SIDE, analyse_bytes, empty_row
from .parallel import DEFAULT_READ_AHEAD, map_reading
from .store import ConfigurationError, ImageStore

__all__ = ["DEFAULT_READ_AHEAD", "analyse_collection", "analyse_path"]


def analyse_path(
    store: ImageStore, collection: str, target_side: int, max_pixels: int, path: str
) -> dict:
    """The row of one path: read, then analyse (a failed read is an error row)."""
    try:
        data = store.read_bytes(collection, path)
    except ConfigurationError:
        raise  # a setting or permission to fix (e.g. an expired SAS): not this file's error
    except Exception as exc:  # noqa: BLE001 - every file must get a row
        row = empty_row()
        row.update(status="error", error_reason="read_failed", error_message=f"{type(exc).__name__}: {exc}")
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
    read_ahead: int | None = None,
    pool: Executor | None = None,
) -> Iterator[dict]:
    """One row per path, in order, computed on ``workers`` processes with bounded memory
    (``pool``: an already running ``parallel.worker_pool`` to use; ``read_ahead``: reads in
    flight per worker, default the store's ``read_ahead``, see the module docstring)."""
    return map_reading(
        analyse_path, (target_side, max_pixels), store, collection, paths,
        workers=workers, read_ahead=read_ahead, pool=pool,
    )
