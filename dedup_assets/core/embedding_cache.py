"""Embeddings kept between runs: float16 vectors per image content, in Parquet, outside the frames.

The global stage embeds every readable image of a collection; on a re-run most images have
not changed. Their vectors are stored per (model key, collection) as Parquet files, one per
shard of the collection (``shard-<k>.parquet``), rows ``(key, view, vector)``:

- ``key``: the image's content key (its content hash from stage 1, ``content.content_hash``), so a
  changed file gets a new key and is embedded again, and a moved file keeps its vectors;
- ``view``: the dihedral transform (0 identity, 1 mirror, ...) the vector embeds, or
  :data:`ROTATION_VIEW` for the rotation-invariant descriptor;
- ``vector``: float16 little-endian bytes (512-d CLIP: 1 KiB per view).

The folder is ``<root>/<model key hash>/<collection slug>/``: the model key
(:meth:`EmbedderInfo.cache_key`: model, weights and their fingerprint, precision,
preprocessing version) is written beside it in ``model.txt``. A shard file is rewritten
(temporary file, then an atomic rename) only when it gains vectors, keeping the rows of keys
still in the collection. Pure pyarrow / numpy (no Dagster).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .store import collection_slug

ROTATION_VIEW = -1

_SCHEMA = pa.schema([("key", pa.string()), ("view", pa.int16()), ("vector", pa.binary())])

Entry = dict[int, np.ndarray]  # view -> vector


class EmbeddingCache:
    def __init__(self, root: str | os.PathLike, model_key: str, collection: str) -> None:
        self.model_key = model_key
        self.model_dir = Path(root) / hashlib.sha1(model_key.encode()).hexdigest()[:16]
        self.dir = self.model_dir / collection_slug(collection)

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.parquet")) if self.dir.is_dir() else []

    def load(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The stored vectors of ``keys`` (float16), by key and view."""
        wanted = pa.array(sorted(set(keys)), pa.string())
        out: dict[str, Entry] = {}
        if not len(wanted):
            return out
        for f in self._files():
            table = pq.read_table(f)
            table = table.filter(pc.is_in(table["key"], value_set=wanted))  # before any Python list
            for key, view, vec in zip(*(table.column(c).to_pylist() for c in ("key", "view", "vector"))):
                out.setdefault(key, {})[int(view)] = np.frombuffer(vec, dtype="<f2")
        return out

    def save(self, entries: Mapping[str, Entry], shards: Mapping[str, str], keep: Iterable[str]) -> int:
        """Adds ``entries`` (key -> view -> vector) to the shard files of ``shards[key]``,
        keeping the stored rows whose key is in ``keep``. Returns the rows written."""
        if not entries:
            return 0
        keep = set(keep) | set(entries)
        by_shard: dict[str, list[str]] = {}
        for key in entries:
            by_shard.setdefault(str(shards.get(key, "all")), []).append(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        note = self.model_dir / "model.txt"
        if not note.exists():
            note.write_text(self.model_key + "\n")
        written = 0
        for shard, new_keys in sorted(by_shard.items()):
            target = self.dir / f"shard-{_safe(shard)}.parquet"
            rows: dict[tuple[str, int], bytes] = {}
            if target.exists():
                old = pq.read_table(target)
                for key, view, vec in zip(*(old.column(c).to_pylist() for c in ("key", "view", "vector"))):
                    if key in keep:
                        rows[(key, int(view))] = vec
            for key in new_keys:
                for view, vec in entries[key].items():
                    rows[(key, int(view))] = np.asarray(vec, dtype="<f2").tobytes()
            items = sorted(rows.items())
            table = pa.table(
                {
                    "key": [k for (k, _), _ in items],
                    "view": pa.array([v for (_, v), _ in items], pa.int16()),
                    "vector": pa.array([b for _, b in items], pa.binary()),
                },
                schema=_SCHEMA,
            )
            tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, target)
            written += len(items)
        return written


def _safe(shard: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in shard)[:40] or "all"
