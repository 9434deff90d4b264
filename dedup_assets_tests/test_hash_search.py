"""Exact Hamming-radius search (core.hash_search) against brute force."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from dedup_assets.core.candidates import hash_neighbour_pairs, hashes_to_codes
from dedup_assets.core.hash_search import (
    HashIndex,
    chunk_masks,
    radius_neighbours,
    variant_neighbour_pairs,
)
from dedup_assets.core.hashing import invert_dihedral

N = 20_000
MAX_R = 12


def _popcount(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1).astype(np.int64)


def _flip(rng: np.random.Generator, code: np.uint64, bits: int) -> np.uint64:
    mask = 0
    for b in rng.choice(64, size=bits, replace=False):
        mask |= 1 << int(b)
    return np.uint64(int(code) ^ mask)


def _planted(seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """N uniform codes; copies planted at every distance 0..MAX_R+1 from random sources."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, size=N, dtype=np.uint64)
    planted = []
    slots = rng.permutation(N)
    s = 0
    for d in range(MAX_R + 2):
        for _ in range(25):
            src, dst = int(slots[s]), int(slots[s + 1])
            s += 2
            codes[dst] = _flip(rng, codes[src], d)
            planted.append((src, dst, d))
    return codes, planted


def _brute(queries: np.ndarray, db: np.ndarray, radius: int, exclude_self: bool) -> dict:
    """{(q, j): d} for all d <= radius, numpy brute force in blocks."""
    out = {}
    for q0 in range(0, len(queries), 1000):
        d = _popcount(queries[q0 : q0 + 1000, None] ^ db[None, :])
        qi, ji = np.nonzero(d <= radius)
        for q, j in zip((qi + q0).tolist(), ji.tolist()):
            if exclude_self and q == j:
                continue
            out[(q, j)] = int(d[q - q0, j])
    return out


@pytest.fixture(scope="module")
def planted():
    codes, planted = _planted()
    return codes, planted, _brute(codes, codes, MAX_R + 1, exclude_self=True)


def test_chunk_masks_count_and_weights():
    for t, count in [(0, 1), (1, 17), (2, 137), (3, 697)]:
        m = chunk_masks(t)
        assert len(m) == count == len(set(m.tolist()))
        assert max(bin(int(x)).count("1") for x in m) == t


@pytest.mark.parametrize("radius", [0, 1, 3, 4, 7, 8, 10, 11, 12])
def test_all_vs_all_is_exactly_brute_force(planted, radius):
    codes, plants, brute = planted
    res = radius_neighbours(codes, radius=radius, k=64)
    assert res.truncated == 0
    got = {(int(q), int(j)): int(d) for q, j, d in zip(res.query, res.index, res.distance)}
    expected = {key: d for key, d in brute.items() if d <= radius}
    assert len(got) == len(res.query)  # no duplicate hit
    assert got == expected
    assert res.n_within.tolist() == np.bincount(
        [q for q, _ in expected], minlength=len(codes)
    ).tolist()
    # planted copies at exactly r are found, at r + 1 they are not
    at_r = [(s, t) for s, t, d in plants if d == radius]
    beyond = [(s, t) for s, t, d in plants if d == radius + 1]
    assert at_r and beyond
    assert all((s, t) in got and (t, s) in got for s, t in at_r)
    assert not any((s, t) in got or (t, s) in got for s, t in beyond)


def test_matches_faiss_range_search(planted):
    codes, _, _ = planted
    radius = 10
    index = faiss.IndexBinaryFlat(64)
    index.add(hashes_to_codes(codes.view(np.int64)))
    # faiss binary range search keeps distance < radius: radius + 1 for "<= radius"
    lims, dist, ids = index.range_search(hashes_to_codes(codes[:3000].view(np.int64)), radius + 1)
    faiss_hits = {
        (q, int(j)): int(d)
        for q in range(3000)
        for j, d in zip(ids[lims[q] : lims[q + 1]], dist[lims[q] : lims[q + 1]])
        if int(j) != q
    }
    res = radius_neighbours(codes, codes[:3000], radius=radius, k=64, exclude_self=True)
    ours = {(int(q), int(j)): int(d) for q, j, d in zip(res.query, res.index, res.distance)}
    assert ours == faiss_hits
    assert max(faiss_hits.values()) == radius


def test_separate_queries_and_self_exclusion():
    rng = np.random.default_rng(3)
    db = rng.integers(0, 2**64, size=5000, dtype=np.uint64)
    queries = np.array([db[7], _flip(rng, db[9], 3), _flip(rng, db[11], 5)], dtype=np.uint64)
    res = radius_neighbours(db, queries, radius=4, k=8)  # separate queries: nothing excluded
    assert list(zip(res.query.tolist(), res.index.tolist(), res.distance.tolist())) == [
        (0, 7, 0),
        (1, 9, 3),
    ]
    same = radius_neighbours(db, db.copy(), radius=0, k=8, exclude_self=True)  # row q is item q
    assert len(same.query) == 0
    kept = radius_neighbours(db, db.copy(), radius=0, k=8)
    assert kept.query.tolist() == kept.index.tolist() == list(range(5000))
    assert len(radius_neighbours(db, radius=0, k=8).query) == 0  # all-vs-all: self excluded


def test_neighbour_bound_keeps_nearest_with_index_tie_break():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**64, size=3000, dtype=np.uint64)
    centre = base[100]
    # a cluster of 40 codes around base[100]: distances 0..4, several ties per distance
    members = rng.choice(np.arange(200, 3000), size=40, replace=False)
    for n, m in enumerate(members):
        base[m] = _flip(rng, centre, n % 5)
    k = 6
    index = HashIndex(base)
    res = radius_neighbours(index, radius=10, k=k)
    full = radius_neighbours(index, radius=10, k=64)
    assert full.truncated == 0 and res.truncated > 0
    for q in [100, int(members[0]), int(members[13])]:
        cand = sorted(
            (int(d), int(j)) for qq, j, d in zip(full.query, full.index, full.distance) if qq == q
        )
        kept = [(int(d), int(j)) for qq, j, d in zip(res.query, res.index, res.distance) if qq == q]
        assert len(cand) > k
        assert kept == cand[:k]  # nearest first, ties by lowest index
        assert res.n_within[q] == len(cand)
    # every query holds at most k, and the same call gives the same answer
    assert np.bincount(res.query).max() == k
    again = radius_neighbours(index, radius=10, k=k)
    assert np.array_equal(again.index, res.index) and np.array_equal(again.query, res.query)


def test_empty_and_single_inputs():
    empty = np.empty(0, dtype=np.uint64)
    for res in (
        radius_neighbours(empty, radius=10, k=4),
        radius_neighbours(np.array([5], dtype=np.uint64), radius=10, k=4),
        radius_neighbours(empty, np.array([5, 6], dtype=np.uint64), radius=10, k=4),
        radius_neighbours(np.array([5, 6], dtype=np.uint64), empty, radius=10, k=4),
    ):
        assert len(res.query) == len(res.index) == len(res.distance) == 0
    assert len(variant_neighbour_pairs(np.empty((0, 8), dtype=np.int64), radius=10, max_neighbours=4)) == 0
    assert len(variant_neighbour_pairs(np.ones((1, 8), dtype=np.int64), radius=10, max_neighbours=4)) == 0
    assert hash_neighbour_pairs(np.ones((3, 8), dtype=np.int64), [1], radius=10, max_neighbours=4) == []
    with pytest.raises(ValueError):
        radius_neighbours(np.array([1, 2], dtype=np.uint64), radius=65, k=4)
    with pytest.raises(ValueError):
        radius_neighbours(np.array([1, 2], dtype=np.uint64), radius=3, k=0)


def test_signed_hashes_use_all_64_bits():
    h = np.array([-1, 2**63 - 1, 0, -(2**63)], dtype=np.int64)  # ...1111, 0111..., 0, 1000...
    res = radius_neighbours(h, radius=1, k=4)
    assert sorted(zip(res.query.tolist(), res.index.tolist(), res.distance.tolist())) == [
        (0, 1, 1), (1, 0, 1), (2, 3, 1), (3, 2, 1)
    ]


def _brute_variant_pairs(variants: np.ndarray, radius: int) -> dict:
    """{(a, b): (hamming, transform)} over all variant queries, smallest (d, t) per pair."""
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for v in range(variants.shape[1]):
        hits = _brute(variants[:, v].view(np.uint64), variants[:, 0].view(np.uint64), radius, True)
        for (i, j), d in hits.items():
            key, t = ((i, j), v) if i < j else ((j, i), invert_dihedral(v))
            if key not in best or (d, t) < best[key]:
                best[key] = (d, t)
    return best


def test_variant_pairs_match_brute_force_with_transforms():
    rng = np.random.default_rng(11)
    n, radius = 6000, 10
    variants = rng.integers(-(2**63), 2**63 - 1, size=(n, 8), dtype=np.int64)
    # plant: image dst ≈ transform_v(src): its own hash near src's variant v, at 0..radius+1 bits
    for s in range(300):
        src, dst, v = 2 * s, 2 * s + 1, s % 8
        variants[dst, 0] = _flip(rng, variants[src, v].view(np.uint64), s % (radius + 2)).view(np.int64)
    found = variant_neighbour_pairs(variants, radius=radius, max_neighbours=64)
    assert found.truncated == 0
    got = {
        (int(a), int(b)): (int(d), int(t))
        for a, b, d, t in zip(found.a, found.b, found.hamming, found.transform)
    }
    assert got == _brute_variant_pairs(variants, radius)
    assert all(a < b for a, b in got)
    assert list(got) == sorted(got)
    for s in range(300):  # every planted copy within the radius, with its transform
        src, dst, v, d = 2 * s, 2 * s + 1, s % 8, s % (radius + 2)
        if d <= radius:
            assert got[(src, dst)] <= (d, v)
        else:
            assert (src, dst) not in got
    # identity only: column 0 all-vs-all
    plain = variant_neighbour_pairs(variants, radius=radius, max_neighbours=64, variant_columns=1)
    assert set(zip(plain.a.tolist(), plain.b.tolist())) == set(_brute_variant_pairs(variants[:, :1], radius))
    assert (plain.transform == 0).all()


def test_hash_neighbour_pairs_maps_candidate_rows():
    rng = np.random.default_rng(2)
    n = 4000
    variants = rng.integers(-(2**63), 2**63 - 1, size=(n, 8), dtype=np.int64)
    variants[10, 0] = variants[3000, 1] ^ 0b111  # 10 ≈ flip_lr(3000), 3 bits
    variants[20, 0] = variants[3001, 0]  # 20 == 3001, but 3001 is not a candidate
    candidates = np.setdiff1d(np.arange(n), [3001])[::-1]  # order of candidates does not matter
    pairs = hash_neighbour_pairs(variants, candidates, radius=4, max_neighbours=16)
    sub = np.sort(candidates)
    expected = {
        (int(sub[a]), int(sub[b])): v for (a, b), v in _brute_variant_pairs(variants[sub], 4).items()
    }
    assert {(p.a, p.b): (p.hamming, p.transform) for p in pairs} == expected
    assert expected[(10, 3000)] == (3, invert_dihedral(1))  # 3000 ≈ flip_lr⁻¹(10)
    assert all(p.a < p.b and p.source == "hash" for p in pairs)
    assert not any(3001 in (p.a, p.b) for p in pairs)


def test_hashscale_bench_worker_checks_exactness_on_small_data():
    from dedup_assets.bench.hashscale import _popcount as popcount
    from dedup_assets.bench.hashscale import _worker, make_data

    variants, planted = make_data(20_000, 10, seed=3, fraction=0.02, max_copies=3, mirrored_every=4)
    src = variants[planted["src"], planted["transform"]].view(np.uint64)
    dst = variants[planted["dst"], 0].view(np.uint64)
    assert (popcount(src ^ dst) == planted["flips"]).all()  # copies at exactly the drawn distance
    assert set(planted["flips"].tolist()) == set(range(11))
    out = _worker({
        "n": 20_000, "radius": 10, "max_neighbours": 16, "threads": 2, "seed": 3,
        "planted_fraction": 0.02, "max_copies": 3, "mirrored_every": 4, "sample": 2000,
        "variant_sample": 500, "no_variants": False, "full_baseline": True,
        "full_baseline_max": 20_000,
    })
    assert out["targets"]["exact"]
    assert out["recall"]["brute_force_hits"] > 0 and out["recall"]["recall"] == 1.0
    assert out["recall"]["planted_identity_recall"] == 1.0
    assert out["recall_variants"]["planted_mirrored_recall"] == 1.0
    assert out["identity"]["truncated"] == 0 and out["variants"]["pair_check_failures"] == 0
    assert out["baseline"]["full_all_vs_all_hits"] == out["identity"]["hits"]
    assert out["recall"]["full_all_vs_all_recall"] == 1.0 and out["recall"]["full_all_vs_all_extra"] == 0
