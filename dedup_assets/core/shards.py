"""Shards: a stable split of a collection's images, so stage 1 runs as many resumable pieces.

An image's shard depends only on its path (relative to the collection), never on listing
order or on the other images, so a new blob lands in one shard and leaves the others alone.
A shard's *fingerprint* summarises its inventory (paths, sizes, etags): a shard whose
fingerprint has not changed since it was analysed needs no new run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: Bump when stage 1's output for the same bytes changes, so every shard is analysed again.
STAGE1_VERSION = "1"


def shard_keys(n_shards: int) -> list[str]:
    """Partition keys of the shards: ``s000`` … ``s{n-1:03d}``."""
    if not 1 <= n_shards <= 1000:
        raise ValueError(f"the number of shards must be between 1 and 1000, not {n_shards}")
    return [f"s{i:03d}" for i in range(n_shards)]


def shard_of(path: str, n_shards: int) -> str:
    """The shard key of an image path: a hash of the path, modulo ``n_shards``."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return f"s{int.from_bytes(digest, 'big') % n_shards:03d}"


def fingerprint(rows: Iterable[tuple[str, int | None, str | None]]) -> str:
    """A digest of ``(path, size, etag)`` rows, independent of their order."""
    h = hashlib.sha256(f"stage1:{STAGE1_VERSION}\n".encode())
    for path, size, etag in sorted(rows, key=lambda r: r[0]):
        h.update(f"{path}\x00{size}\x00{etag}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]
