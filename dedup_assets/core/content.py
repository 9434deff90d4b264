"""Content identity of a file: the XXH3-128 hash of its bytes, as 32 hex digits.

Stage 1 keys every file by it (byte-identical files, the embedding cache, gallery
thumbnails) and the copy stage verifies every copy against it. XXH3 hashes at memory speed
(a 2 MB JPEG in ~0.14 ms against MD5's ~3 ms, one core), which matters in the one pass that
reads every image. It is not a cryptographic hash: two different files could be made to
collide on purpose (a crafted file would be taken for a byte-identical copy); a collection's
own files collide with probability ~n²/2¹²⁹. MD5, where a store keeps one (Azure's
Content-MD5), is recorded beside it by the inventory and checked by Azure copies.
"""

from __future__ import annotations

from pathlib import Path

import xxhash

__all__ = ["content_hash", "content_hash_file", "content_hasher"]


def content_hash(data: bytes) -> str:
    """XXH3-128 of ``data``, 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def content_hasher() -> "xxhash.xxh3_128":
    """An incremental hasher: ``update(chunk)`` …, ``hexdigest()`` equals ``content_hash``."""
    return xxhash.xxh3_128()


def content_hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """``content_hash`` of a file's bytes, read in chunks."""
    h = content_hasher()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
