"""Exact Hamming-radius search over 64-bit hashes by multi-index hashing (numba, no faiss).

Problem: for ``n`` 64-bit codes (millions), find for every query code the database codes within
Hamming distance ``radius`` (default 10) *exactly*, keeping at most ``k`` nearest per query. A
flat (brute-force) index costs ``n_queries * n`` popcounts: ~2,000 s for 3M all-vs-all on two
cores. This module does the same search exactly in a small fraction of that.

Method (multi-index hashing, Norouzi et al. 2012, as a bucket-block join):

- The 64 bits are split into 4 chunks of 16 bits. If ``hamming(q, x) <= r`` then the four chunk
  distances sum to at most ``r``, so by pigeonhole at least one chunk is within
  ``t = r // 4`` bits. The search is therefore exact for every ``r``.
- Per chunk, the database is counting-sorted by the chunk's value into 65,536 buckets (CSR
  offsets), the full 64-bit codes stored contiguously in bucket order; the queries are
  counting-sorted the same way.
- For every chunk value ``v`` that has queries, the database buckets ``u`` within ``t`` bits of
  ``v`` (``sum_{i<=t} C(16, i)`` values: 137 for ``t = 2``) are gathered into one contiguous
  buffer, and every query of bucket ``v`` scans it with a vectorised popcount-of-xor count
  (``vpopcntq`` on AVX-512) per block of 512 codes; only blocks with a hit are rescanned one
  code at a time. Uniform codes give ``n / 65536`` per bucket, so a query costs about
  ``4 * 137 * n / 65536`` popcounts at ``r = 10`` (~0.8 % of brute force), and the gather is
  shared by the bucket's queries (``n / 65536`` of them) instead of done once per query.
- A pair is reported only from the *first* chunk within ``t`` bits (checked on hits only), so
  each ``(query, item)`` is seen once without a set.
- Cost beyond uniform data: it grows with ``r`` (the number of probed buckets is set by
  ``r // 4``) and with the square of the size of clusters of near-identical codes (every pair
  in a cluster is within ``r`` and compared; e.g. 50,000 near-zero hashes among 1M take ~30 s on
  two loaded cores, against ~2 s for uniform codes). Buckets are handed to threads 256 at a
  time so one dense bucket does not stall the others.
- Each query keeps its ``k`` nearest hits in a small sorted buffer, ordered by
  ``(distance, index)`` (deterministic tie-break). Within a chunk every query belongs to exactly
  one bucket, so buffers are written without locks (``prange`` over buckets, chunks in turn).
  ``n_within`` counts *all* hits per query, so a caller can tell whether ``k`` truncated any.

Memory: the database index is ``12 n`` bytes per chunk (``48 n`` for the four), the query
grouping ``12 n_queries``, the result buffers ``5 k n_queries`` bytes. Nothing is ``O(pairs)``
beyond the returned arrays (at most ``k`` per query). At 3M images, k = 16, the whole
8-variant search peaks below 0.9 GB RSS in ``dedup-assets bench hashscale``.

Kernels are compiled by numba on first use and cached (``cache=True``: next to this file, or
in numba's user cache directory / ``NUMBA_CACHE_DIR`` when the package is read-only).

``radius_neighbours`` is the kernel; ``variant_neighbour_pairs`` runs it for the 8 dihedral
variant hashes of each image (see :func:`dedup_assets.core.candidates.hash_neighbour_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numba
import numpy as np
from numba import njit, prange
from .hashing import invert_dihedral
from .kernels import popcount as _popcount

CHUNKS = 4
CHUNK_BITS = 16
_NVALUES = 1 << CHUNK_BITS
_MASK16 = np.uint64(_NVALUES - 1)
MAX_RADIUS = 64


def chunk_masks(t: int) -> np.ndarray:
    """All 16-bit masks with at most ``t`` bits set, fewest bits first (``uint16``)."""
    t = max(0, min(int(t), CHUNK_BITS))
    out = [0]
    for bits in range(1, t + 1):
        for combo in combinations(range(CHUNK_BITS), bits):
            out.append(sum(1 << b for b in combo))
    return np.array(out, dtype=np.int64)


@njit(cache=True)
def _group_by_chunk(codes, shift):
    """Counting sort of ``codes`` by ``(code >> shift) & 0xFFFF``: (offsets, order, sorted codes)."""
    n = codes.shape[0]
    counts = np.zeros(_NVALUES + 1, dtype=np.int64)
    for i in range(n):
        counts[np.int64((codes[i] >> np.uint64(shift)) & _MASK16) + 1] += 1
    for v in range(_NVALUES):
        counts[v + 1] += counts[v]
    offsets = counts.copy()
    order = np.empty(n, dtype=np.int32)
    sorted_codes = np.empty(n, dtype=np.uint64)
    fill = counts[:_NVALUES].copy()
    for i in range(n):
        v = np.int64((codes[i] >> np.uint64(shift)) & _MASK16)
        p = fill[v]
        order[p] = i
        sorted_codes[p] = codes[i]
        fill[v] = p + 1
    return offsets, order, sorted_codes


@njit(cache=True, inline="always")
def _insert(top_d, top_j, fill, q, d, j, k):
    """Insert ``(d, j)`` into query ``q``'s buffer, kept sorted by ``(d, j)``, size ``<= k``."""
    c = fill[q]
    if c == k:
        ld = top_d[q, k - 1]
        lj = top_j[q, k - 1]
        if d > ld or (d == ld and j >= lj):
            return
        pos = k - 1
    else:
        pos = c
        fill[q] = c + 1
    while pos > 0:
        pd = top_d[q, pos - 1]
        pj = top_j[q, pos - 1]
        if pd < d or (pd == d and pj < j):
            break
        top_d[q, pos] = pd
        top_j[q, pos] = pj
        pos -= 1
    top_d[q, pos] = d
    top_j[q, pos] = j


@njit(cache=True, inline="always")
def _count_within(q, block, r):
    """How many codes of ``block`` lie within ``r`` bits of ``q`` (vectorised: ``vpopcntq``).

    Loops over ``range(len(block))`` of a slice on purpose: numba emits wrap-around index
    handling for ``range(start, stop)`` that keeps LLVM from vectorising (3x slower).
    """
    c = 0
    for p in range(block.shape[0]):
        c += _popcount(q ^ block[p]) <= r
    return c


_BLOCK = 512


@njit(parallel=True, cache=True)
def _search_chunk(
    chunk, q_off, q_order, q_codes, d_off, d_order, d_codes, masks,
    radius, t, exclude_self, top_d, top_j, fill, n_within,
):
    """One chunk's pass: every query bucket against the database buckets within ``t`` bits.

    For a query bucket ``v`` the database buckets ``v ^ mask`` are gathered into one contiguous
    buffer (amortised over the bucket's queries); each query then scans it with a vectorised
    any-hit test per block of ``_BLOCK`` codes, and only blocks with a hit are rescanned.
    """
    k = top_d.shape[1]
    nmask = masks.shape[0]
    r = np.uint64(radius)
    tt = np.uint64(t)
    for v in prange(_NVALUES):
        qs = q_off[v]
        qe = q_off[v + 1]
        if qs == qe:
            continue
        # gather the candidate buckets; starts[mi] = where bucket v ^ masks[mi] begins in buf
        starts = np.empty(nmask + 1, dtype=np.int64)
        total = 0
        for mi in range(nmask):
            starts[mi] = total
            u = v ^ masks[mi]
            total += d_off[u + 1] - d_off[u]
        starts[nmask] = total
        if total == 0:
            continue
        buf = np.empty(total, dtype=np.uint64)
        for mi in range(nmask):
            u = v ^ masks[mi]
            buf[starts[mi]:starts[mi + 1]] = d_codes[d_off[u]:d_off[u + 1]]
        for qi in range(qs, qe):
            q = q_codes[qi]
            qid = q_order[qi]
            for b0 in range(0, total, _BLOCK):
                b1 = min(b0 + _BLOCK, total)
                if _count_within(q, buf[b0:b1], r) == 0:
                    continue
                mi = 0
                for p in range(b0, b1):
                    x = q ^ buf[p]
                    d = _popcount(x)
                    if d > r:
                        continue
                    # report from the first chunk within t bits only (no memory access)
                    earlier = False
                    for c in range(chunk):
                        if _popcount((x >> np.uint64(CHUNK_BITS * c)) & _MASK16) <= tt:
                            earlier = True
                            break
                    if earlier:
                        continue
                    if fill[qid] == k and d > top_d[qid, k - 1]:
                        # cannot enter the full buffer; self (d = 0) never gets here
                        n_within[qid] += 1
                        continue
                    while starts[mi + 1] <= p:
                        mi += 1
                    u = v ^ masks[mi]
                    j = d_order[d_off[u] + p - starts[mi]]
                    if exclude_self and j == qid:
                        continue
                    n_within[qid] += 1
                    _insert(top_d, top_j, fill, qid, np.uint8(d), j, k)


@njit(cache=True)
def _flatten(top_d, top_j, fill):
    total = 0
    for q in range(fill.shape[0]):
        total += fill[q]
    qs = np.empty(total, dtype=np.int32)
    js = np.empty(total, dtype=np.int32)
    ds = np.empty(total, dtype=np.uint8)
    p = 0
    for q in range(fill.shape[0]):
        for s in range(fill[q]):
            qs[p] = q
            js[p] = top_j[q, s]
            ds[p] = top_d[q, s]
            p += 1
    return qs, js, ds


def as_uint64(hashes: np.ndarray) -> np.ndarray:
    """Signed or unsigned 64-bit hashes as a contiguous ``uint64`` array (bits unchanged)."""
    a = np.asarray(hashes)
    if a.dtype == np.uint64:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a, dtype=np.int64).view(np.uint64)


class HashIndex:
    """The database side: the codes grouped by each of the 4 chunks (``48 n`` bytes)."""

    def __init__(self, codes: np.ndarray):
        self.codes = as_uint64(codes).ravel()
        if len(self.codes) >= 2**31:
            raise ValueError("HashIndex holds at most 2**31 - 1 codes (int32 indices)")
        self.chunks = [_group_by_chunk(self.codes, CHUNK_BITS * c) for c in range(CHUNKS)]

    def __len__(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class Neighbours:
    """Hits of a radius search, sorted by ``(query, distance, index)``.

    ``query[i]``, ``index[i]``, ``distance[i]``: query row, database row, Hamming distance.
    ``n_within[q]``: how many database rows lie within the radius of query ``q`` (self excluded),
    whether kept or not; the result is complete iff ``n_within.max() <= k``.
    """

    query: np.ndarray
    index: np.ndarray
    distance: np.ndarray
    n_within: np.ndarray

    @property
    def truncated(self) -> int:
        """Number of hits dropped by the ``k`` bound."""
        return int(self.n_within.sum() - len(self.query))


def radius_neighbours(
    index: HashIndex | np.ndarray,
    queries: np.ndarray | None = None,
    *,
    radius: int,
    k: int,
    exclude_self: bool | None = None,
    threads: int | None = None,
) -> Neighbours:
    """Every query's ``k`` nearest database codes within Hamming distance ``radius``, exactly.

    ``index``: a :class:`HashIndex` or the database codes (64-bit). ``queries``: 64-bit codes
    (default: the database itself, all-vs-all). ``exclude_self`` (default: true for all-vs-all,
    false for separate queries) drops the hit ``index == query``: pass it for queries whose row
    ``q`` is a view (e.g. a mirrored hash) of database row ``q``. Ties at the
    ``k``-th place are broken by distance, then database index (lowest kept). ``threads`` sets
    numba's thread count for this call.
    """
    if not isinstance(index, HashIndex):
        index = HashIndex(index)
    radius = int(radius)
    k = int(k)
    if not 0 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius must be in 0..{MAX_RADIUS}, got {radius}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q_codes = index.codes if queries is None else as_uint64(queries).ravel()
    if exclude_self is None:
        exclude_self = queries is None
    m = len(q_codes)
    top_d = np.empty((m, k), dtype=np.uint8)
    top_j = np.empty((m, k), dtype=np.int32)
    fill = np.zeros(m, dtype=np.int32)
    n_within = np.zeros(m, dtype=np.int32)
    if m and len(index):
        t = radius // CHUNKS
        masks = chunk_masks(t)
        previous = numba.get_num_threads()
        if threads:
            numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
        # buckets handed to threads 256 at a time: a dense bucket (many near-identical hashes)
        # must not leave the other threads idle behind a static split
        previous_chunk = numba.set_parallel_chunksize(256)
        try:
            for c in range(CHUNKS):
                d_off, d_order, d_sorted = index.chunks[c]
                if queries is None:
                    q_off, q_order, q_sorted = d_off, d_order, d_sorted
                else:
                    q_off, q_order, q_sorted = _group_by_chunk(q_codes, CHUNK_BITS * c)
                _search_chunk(
                    c, q_off, q_order, q_sorted, d_off, d_order, d_sorted, masks,
                    radius, t, bool(exclude_self), top_d, top_j, fill, n_within,
                )
                del q_off, q_order, q_sorted
        finally:
            numba.set_num_threads(previous)
            numba.set_parallel_chunksize(previous_chunk)
    qs, js, ds = _flatten(top_d, top_j, fill)
    return Neighbours(qs, js, ds, n_within)


@dataclass(frozen=True)
class PairArrays:
    """Undirected pairs as arrays, ``a < b``, sorted by ``(a, b)``; ``transform`` as in
    :mod:`dedup_assets.core.candidates` (``b ≈ apply_dihedral(a, transform)``)."""

    a: np.ndarray
    b: np.ndarray
    hamming: np.ndarray
    transform: np.ndarray
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.a)


_INVERSE = np.array([invert_dihedral(k) for k in range(8)], dtype=np.int8)


def variant_neighbour_pairs(
    variants: np.ndarray,
    *,
    radius: int,
    max_neighbours: int,
    variant_columns: int | None = None,
    threads: int | None = None,
) -> PairArrays:
    """Image pairs whose hashes lie within ``radius`` bits, any dihedral variant included.

    ``variants``: ``(n, 8)`` 64-bit hashes, column 0 the image's own hash, column ``v`` the hash
    of its transform ``v``. For every image ``i`` and variant ``v`` the query ``variants[i, v]`` is
    searched against the index of the column-0 hashes, keeping its ``max_neighbours`` nearest
    other images (distance, then index); a hit ``j`` means ``j ≈ transform_v(i)``. Pairs are
    undirected (``a < b``, the transform inverted when the hit came from ``b``'s query) and keep
    the smallest ``(hamming, transform)`` found. ``variant_columns`` (default all) limits the
    search to the first columns (1: plain all-vs-all on the image hashes).
    """
    v = np.asarray(variants)
    if v.ndim == 1:
        v = v[:, None]
    n = v.shape[0]
    cols = v.shape[1] if variant_columns is None else min(int(variant_columns), v.shape[1])
    empty = PairArrays(
        np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int8)
    )
    if n < 2:
        return empty
    index = HashIndex(v[:, 0])
    keys, dists, trans = [], [], []
    truncated = 0
    for col in range(cols):
        res = radius_neighbours(
            index,
            None if col == 0 else v[:, col],
            radius=radius,
            k=max_neighbours,
            exclude_self=True,
            threads=threads,
        )
        truncated += res.truncated
        i = res.query.astype(np.int64)
        j = res.index.astype(np.int64)
        swap = j < i
        a = np.where(swap, j, i)
        b = np.where(swap, i, j)
        keys.append(a * n + b)
        dists.append(res.distance.astype(np.int32))
        trans.append(np.where(swap, _INVERSE[col], np.int8(col)).astype(np.int8))
        del res, i, j, swap, a, b
        # reduce as we go so memory stays O(unique pairs)
        if len(keys) > 1:
            keys, dists, trans = [np.concatenate(keys)], [np.concatenate(dists)], [np.concatenate(trans)]
            keys[0], dists[0], trans[0] = _reduce(keys[0], dists[0], trans[0])
    key, dist, tr = _reduce(keys[0], dists[0], trans[0])
    return PairArrays(key // n, key % n, dist, tr, truncated)


def _reduce(key: np.ndarray, dist: np.ndarray, trans: np.ndarray):
    """One row per key: the smallest ``(dist, trans)``; sorted by key."""
    if len(key) == 0:
        return key, dist, trans
    order = np.lexsort((trans, dist, key))
    key, dist, trans = key[order], dist[order], trans[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return key[first], dist[first], trans[first]
