"""Candidate pairs: exact copies and wavelet-hash neighbours, checked by colour.

Pairs, then groups: every function here produces or filters *edges* between two images;
groups are the connected components of the edges that survive all stages
(:mod:`dedup_assets.core.grouping`).

Conventions for a pair ``(a, b)``: ``a < b`` (by path), and ``transform`` is the dihedral
transform ``k`` (see :data:`dedup_assets.core.hashing.DIHEDRAL_NAMES`) such that
``b ≈ apply_dihedral(a, k)`` — a mirrored copy has ``transform == 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .color import ColorSignature, color_similarity
from .hash_search import variant_neighbour_pairs

PAIR_SOURCES = ("exact", "hash", "global", "rotation")


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    source: str
    hamming: int
    transform: int


def hashes_to_codes(hashes: np.ndarray) -> np.ndarray:
    """Signed/unsigned 64-bit hashes (any shape ``(...,)``) as faiss binary codes ``(..., 8)``
    (big-endian bytes, as faiss ``IndexBinary*`` expect; used by the scale benchmark's baseline)."""
    u = np.ascontiguousarray(hashes, dtype=np.int64).view(np.uint64)
    return u.astype(">u8").view(np.uint8).reshape(*u.shape, 8)


def exact_pairs(content_hashes: Sequence[str]) -> tuple[list[Pair], np.ndarray]:
    """Byte-identical files: star edges from the first index of each content hash
    (``content.content_hash``).

    Returns the pairs and, per image, the index of its representative (itself when unique).
    A missing hash (``None``) pairs with nothing.
    """
    first: dict[str, int] = {}
    rep = np.arange(len(content_hashes))
    pairs: list[Pair] = []
    for i, key in enumerate(content_hashes):
        if key is None:
            continue
        j = first.setdefault(key, i)
        if j != i:
            rep[i] = j
            pairs.append(Pair(j, i, "exact", 0, 0))
    return pairs, rep


def hash_neighbour_pairs(
    variants: np.ndarray,
    candidates: np.ndarray,
    *,
    radius: int,
    max_neighbours: int,
    threads: int | None = None,
) -> list[Pair]:
    """Pairs of images whose hashes lie within ``radius`` bits, any dihedral variant included.

    ``variants`` is ``(n, 8)`` 64-bit hashes (column 0 the image itself, column k the hash of
    its transform k). Only rows listed in ``candidates`` take part (e.g. one representative per
    exact-copy set). For every candidate image and every variant ``k``, the hash of its
    transform ``k`` is searched against the column-0 hashes of the other candidates, *exactly*
    within ``radius`` bits (multi-index hashing, :mod:`dedup_assets.core.hash_search`; not an
    approximate index, not O(n²)), keeping the ``max_neighbours`` nearest per image and variant
    (ties by distance, then position in ``candidates``), which bounds the edges per image. A
    hit ``j`` for image ``i``'s variant ``k`` means ``j ≈ transform_k(i)``; pairs keep the
    smallest ``(hamming, transform)`` found in either direction.
    """
    idx = np.unique(np.asarray(candidates, dtype=np.int64))  # sorted: a < b survives mapping
    if len(idx) < 2:
        return []
    found = variant_neighbour_pairs(
        np.asarray(variants)[idx], radius=radius, max_neighbours=max_neighbours, threads=threads
    )
    a, b = idx[found.a], idx[found.b]
    return [
        Pair(int(x), int(y), "hash", int(d), int(t))
        for x, y, d, t in zip(a, b, found.hamming, found.transform)
    ]


def colour_scores(
    pairs: Sequence[Pair], signatures: Sequence[ColorSignature]
) -> np.ndarray:
    """Colour similarity of each pair (1.0 for exact copies), from stored signatures only."""
    out = np.empty(len(pairs), dtype=np.float32)
    for n, p in enumerate(pairs):
        if p.source == "exact":
            out[n] = 1.0
        else:
            out[n] = color_similarity(signatures[p.a], signatures[p.b], p.transform)
    return out
