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

import faiss
import numpy as np

from .color import ColorSignature, color_similarity
from .hashing import invert_dihedral

PAIR_SOURCES = ("exact", "hash", "global", "rotation")


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    source: str
    hamming: int
    transform: int


def hashes_to_codes(hashes: np.ndarray) -> np.ndarray:
    """Signed/unsigned 64-bit hashes (any shape ``(...,)``) as faiss binary codes ``(..., 8)``."""
    u = np.ascontiguousarray(hashes, dtype=np.int64).view(np.uint64)
    return u.astype(">u8").view(np.uint8).reshape(*u.shape, 8)


def exact_pairs(content_md5: Sequence[str]) -> tuple[list[Pair], np.ndarray]:
    """Byte-identical files: star edges from the first index of each content hash.

    Returns the pairs and, per image, the index of its representative (itself when unique).
    """
    first: dict[str, int] = {}
    rep = np.arange(len(content_md5))
    pairs: list[Pair] = []
    for i, md5 in enumerate(content_md5):
        j = first.setdefault(md5, i)
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
) -> list[Pair]:
    """Pairs of images whose hashes lie within ``radius`` bits, any dihedral variant included.

    ``variants`` is ``(n, 8)`` 64-bit hashes (column 0 the image itself, column k the hash of
    its transform k). Only rows listed in ``candidates`` take part (e.g. one representative per
    exact-copy set). Search is exact within the ``max_neighbours`` nearest per query variant
    (faiss binary flat index), which bounds the edges per image.
    """
    idx = np.asarray(candidates, dtype=np.int64)
    n = len(idx)
    if n < 2:
        return []
    codes = hashes_to_codes(variants[idx])  # (n, 8 variants, 8 bytes)
    index = faiss.IndexBinaryFlat(64)
    index.add(np.ascontiguousarray(codes[:, 0, :]))
    k = min(n, max_neighbours + 1)
    queries = np.ascontiguousarray(codes.reshape(n * 8, 8))
    dist, nn = index.search(queries, k)
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for q in range(n * 8):
        i, variant = divmod(q, 8)
        for d, j in zip(dist[q], nn[q]):
            if j < 0 or d > radius or j == i:
                continue
            # image j ≈ transform_variant(image i)
            if i < j:
                key, t = (i, int(j)), variant
            else:
                key, t = (int(j), i), invert_dihedral(variant)
            prev = best.get(key)
            if prev is None or (int(d), t) < prev:
                best[key] = (int(d), t)
    return [
        Pair(int(idx[a]), int(idx[b]), "hash", d, t) for (a, b), (d, t) in sorted(best.items())
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
