"""``dedup-assets bench hashscale``: exact Hamming-radius candidate search at million scale.

Data, per size ``n`` (default 1M and 3M), from a fixed seed: ``n`` uniform random 64-bit
hashes, then near-duplicates planted: ``--planted-fraction`` (default 1 %) of the images get
1..``--max-copies`` (default 3) copies, each copy overwriting a random other image with the
source's hash with a uniform random 0..r bits flipped; one copy in ``--mirrored-every``
(default 4) is made from the source's *mirror/rotation* variant ``k`` (1..7) instead, so that
only the variant search finds it. Variant hashes: the 64 bits read as an 8×8 grid (row-major,
most significant bit first) and transformed by each dihedral transform
(``core.hashing.apply_dihedral``), as a real mirrored image's hash is (approximately) a bit
permutation of the original's.

Each size runs in a fresh process (``peak_rss_mb`` = that process's ``ru_maxrss``), numba and
faiss both on ``--threads`` threads (default 2), numba kernels compiled (or loaded from cache)
on a small input before timing:

- ``identity``: ``core.hash_search.radius_neighbours``, all-vs-all on the image hashes,
  ``max_neighbours`` nearest kept per query (index build included in the time);
- ``variants``: ``core.hash_search.variant_neighbour_pairs``, the 8 variant hashes of every
  image as queries (8 n queries) — the search ``color_groups`` runs;
- ``recall``: faiss ``IndexBinaryFlat.range_search`` (brute force; faiss keeps ``d < radius``, so
  it is called with ``r + 1``) for ``--sample`` random queries (default 20,000) against all ``n``
  hashes; every brute-force hit must be in our all-vs-all result and every hit of ours must be
  within ``r`` (all our hits' distances are recomputed). The variant result is checked the same
  way on ``--variant-sample`` images (default 2,500, × 8 queries), plus every reported pair's
  distance and transform is recomputed. ``truncated`` = hits dropped by the ``max_neighbours``
  bound (counted by the search itself): when it is 0, the bounded result *is* the unbounded one,
  so recall measures exactness;
- ``baseline``: the faiss time on the sample scaled linearly to all ``n`` queries (a flat index
  is exactly linear in queries) — the all-vs-all time of ``IndexBinaryFlat``; for the variant
  search the baseline is 8 times that. ``--full-baseline`` also times faiss' full all-vs-all
  range search for sizes up to ``--full-baseline-max`` (1M: ~4 min on 2 threads).

Targets (issue 4): at 3M, recall 1.0 and nothing beyond the radius, ≥ 30× faster than the
baseline, peak RSS ≤ 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

from ..core.text import help_text
from . import emit

TARGET_SPEEDUP = 30.0
TARGET_RSS_MB = 1536.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dedup-assets bench hashscale", description=help_text(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000000,3000000", help="comma-separated n (default 1M,3M)")
    p.add_argument("--radius", type=int, default=10, help="Hamming radius r (default 10)")
    p.add_argument("--max-neighbours", type=int, default=16, help="k nearest kept per query (16)")
    p.add_argument("--threads", type=int, default=2, help="numba and faiss threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--planted-fraction", type=float, default=0.01,
                   help="fraction of images that get copies (default 0.01)")
    p.add_argument("--max-copies", type=int, default=3, help="copies per source: 1..this (3)")
    p.add_argument("--mirrored-every", type=int, default=4,
                   help="one copy in this many is made from a mirror/rotation variant (4; 0: none)")
    p.add_argument("--sample", type=int, default=20000,
                   help="queries for the brute-force recall check and baseline timing (20000)")
    p.add_argument("--variant-sample", type=int, default=2500,
                   help="images (x 8 variant queries) for the variant recall check (2500)")
    p.add_argument("--no-variants", action="store_true", help="skip the 8-variant search")
    p.add_argument("--full-baseline", action="store_true",
                   help="also time faiss' full all-vs-all range search (sizes <= --full-baseline-max)")
    p.add_argument("--full-baseline-max", type=int, default=1_000_000)
    p.add_argument("--json", help="write the JSON report here (default: print it)")
    return p


# --------------------------------------------------------------------------- data


def _variant_hashes(codes: np.ndarray, block: int = 1 << 18) -> np.ndarray:
    """``(n, 8)`` int64: the bits of each code as an 8×8 grid under each dihedral transform."""
    from ..core.hashing import apply_dihedral

    n = len(codes)
    out = np.empty((n, 8), dtype=np.int64)
    for s in range(0, n, block):
        c = codes[s : s + block]
        bits = np.unpackbits(c.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
        grid = bits.reshape(-1, 8, 8).transpose(1, 2, 0)  # (8, 8, m): axes 0, 1 are the grid
        for k in range(8):
            g = np.ascontiguousarray(apply_dihedral(grid, k).transpose(2, 0, 1)).reshape(-1, 64)
            out[s : s + block, k] = np.packbits(g, axis=1).view(">u8").ravel().astype(np.uint64).view(np.int64)
        del bits, grid
    return out


def _random_flips(rng: np.random.Generator, count: np.ndarray) -> np.ndarray:
    """One uint64 mask per entry with exactly ``count[i]`` random bits set."""
    keys = rng.random((len(count), 64))
    ranks = np.argsort(keys, axis=1)
    bits = ranks < count[:, None]  # for each row, a uniform subset of count bits
    weights = (np.uint64(1) << np.arange(64, dtype=np.uint64))
    return np.bitwise_or.reduce(np.where(bits, weights, np.uint64(0)), axis=1)


def make_data(n: int, radius: int, seed: int, fraction: float, max_copies: int, mirrored_every: int):
    """Uniform codes with planted copies; returns (variants (n, 8) int64, planted dict)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    n_src = int(n * fraction)
    copies = rng.integers(1, max_copies + 1, size=n_src)
    n_copy = int(copies.sum())
    if n_src + n_copy > n:
        raise SystemExit("planted fraction too large for n")
    slots = rng.choice(n, size=n_src + n_copy, replace=False)
    src = np.repeat(slots[:n_src], copies)
    dst = slots[n_src:]
    flips = rng.integers(0, radius + 1, size=n_copy)
    kind = np.zeros(n_copy, dtype=np.int64)
    if mirrored_every:
        mir = np.arange(n_copy) % mirrored_every == mirrored_every - 1
        kind[mir] = rng.integers(1, 8, size=int(mir.sum()))
    variants = _variant_hashes(codes)
    base = variants[src, kind].view(np.uint64)  # copy = variant `kind` of the source ...
    new = base ^ _random_flips(rng, flips)  # ... with 0..r bits flipped
    variants[dst] = _variant_hashes(new)
    planted = {"src": src, "dst": dst, "flips": flips, "transform": kind}
    return variants, planted


# --------------------------------------------------------------------------- worker


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _popcount(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1).astype(np.int64)


def _worker(opts: dict) -> dict:
    import faiss
    import numba

    from ..core.candidates import hashes_to_codes
    from ..core.hash_search import CHUNKS, HashIndex, radius_neighbours, variant_neighbour_pairs
    from ..core.hashing import invert_dihedral

    n, r, k, threads = opts["n"], opts["radius"], opts["max_neighbours"], opts["threads"]
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    faiss.omp_set_num_threads(threads)
    out: dict = {"load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                 "n": n, "radius": r, "chunk_radius_t": r // CHUNKS, "max_neighbours": k,
                 "threads": threads, "numba_threads": numba.get_num_threads(),
                 "numba_threading_layer": None}

    # compile / load the kernels outside the timing
    t0 = time.perf_counter()
    warm = np.random.default_rng(1).integers(-(2**63), 2**63 - 1, size=(2000, 8), dtype=np.int64)
    variant_neighbour_pairs(warm, radius=r, max_neighbours=k)
    out["jit_warmup_s"] = round(time.perf_counter() - t0, 2)
    out["numba_threading_layer"] = numba.threading_layer()

    t0 = time.perf_counter()
    variants, planted = make_data(n, r, opts["seed"], opts["planted_fraction"], opts["max_copies"],
                                  opts["mirrored_every"])
    out["data_s"] = round(time.perf_counter() - t0, 2)
    codes = np.ascontiguousarray(variants[:, 0]).view(np.uint64)
    out["planted"] = {"sources": int(len(np.unique(planted["src"]))), "copies": int(len(planted["dst"])),
                      "mirrored_copies": int((planted["transform"] > 0).sum()),
                      "flips": f"uniform 0..{r}"}
    rss_data = _rss_mb()

    # ---- ours: identity all-vs-all
    t0 = time.perf_counter()
    index = HashIndex(codes)
    t_index = time.perf_counter() - t0
    res = radius_neighbours(index, radius=r, k=k)
    t_ident = time.perf_counter() - t0
    q, j, d = res.query.astype(np.int64), res.index.astype(np.int64), res.distance.astype(np.int64)
    ident = {
        "seconds": round(t_ident, 2),
        "index_build_s": round(t_index, 2),
        "hits": int(len(q)),
        "pairs": int(len(np.unique(np.minimum(q, j) * n + np.maximum(q, j)))),
        "truncated": res.truncated,
        "queries_with_hits": int((res.n_within > 0).sum()),
        "max_hits_per_query": int(res.n_within.max()) if n else 0,
    }
    true_d = _popcount(codes[q] ^ codes[j])
    ident["distance_mismatches"] = int((true_d != d).sum())
    ident["beyond_radius"] = int((true_d > r).sum())
    ident["self_hits"] = int((q == j).sum())
    out["identity"] = ident
    out["peak_rss_after_identity_mb"] = round(_rss_mb(), 1)
    del res, index

    # ---- ours: 8 variants as queries
    if not opts["no_variants"]:
        t0 = time.perf_counter()
        vp = variant_neighbour_pairs(variants, radius=r, max_neighbours=k, threads=threads)
        t_var = time.perf_counter() - t0
        inv = np.array([invert_dihedral(x) for x in range(8)])
        da = _popcount(variants[vp.a, vp.transform].view(np.uint64) ^ codes[vp.b])
        db = _popcount(variants[vp.b, inv[vp.transform]].view(np.uint64) ^ codes[vp.a])
        hd = vp.hamming.astype(np.int64)
        out["variants"] = {
            "seconds": round(t_var, 2),
            "queries": 8 * n,
            "pairs": int(len(vp)),
            "truncated": vp.truncated,
            "pairs_with_transform": int((vp.transform > 0).sum()),
            "pair_check_failures": int((~((da == hd) | (db == hd))).sum()),
            "beyond_radius": int((hd > r).sum()),
        }
        out["peak_rss_after_variants_mb"] = round(_rss_mb(), 1)
        vkeys = vp.a * n + vp.b
        vpairs = {"keys": vkeys, "hamming": hd}
        del vp, da, db
    out["peak_rss_search_mb"] = round(_rss_mb(), 1)
    out["rss_after_data_mb"] = round(rss_data, 1)

    # ---- brute force on a sample: recall and baseline timing
    rng = np.random.default_rng(opts["seed"] + 1)
    fcodes = hashes_to_codes(codes.view(np.int64))
    flat = faiss.IndexBinaryFlat(64)
    flat.add(fcodes)
    s = min(opts["sample"], n)
    sample = np.sort(rng.choice(n, size=s, replace=False))
    t0 = time.perf_counter()
    lims, bd, bi = flat.range_search(np.ascontiguousarray(fcodes[sample]), r + 1)  # d < r + 1
    t_sample = time.perf_counter() - t0
    bq = np.repeat(sample, np.diff(lims.astype(np.int64))).astype(np.int64)
    bi = bi.astype(np.int64)
    keep = bi != bq
    bq, bi, bd = bq[keep], bi[keep], bd[keep].astype(np.int64)
    brute = set((bq * n + bi).tolist())
    in_sample = np.isin(q, sample)
    ours = set((q[in_sample] * n + j[in_sample]).tolist())
    found = len(brute & ours)
    # planted identity copies (transform 0) that are within r: found by the all-vs-all search?
    p0 = planted["transform"] == 0
    ps, pd = planted["src"][p0], planted["dst"][p0]
    ours_all = np.unique(np.minimum(q, j) * n + np.maximum(q, j))
    pk = np.minimum(ps, pd) * n + np.maximum(ps, pd)
    out["recall"] = {
        "method": (f"faiss IndexBinaryFlat.range_search(radius={r + 1}: faiss keeps d < radius) "
                   f"for {s} random queries against all {n}; self hits dropped"),
        "sample_queries": s,
        "brute_force_hits": len(brute),
        "max_brute_force_distance": int(bd.max()) if len(bd) else None,
        "found": found,
        "recall": round(found / len(brute), 6) if brute else 1.0,
        "our_hits_not_in_brute_force": len(ours - brute),
        "bounded_by_k": (f"recall is measured on the timed all-vs-all result, k={k} per query; "
                         f"truncated hits = {ident['truncated']} (0: the k bound dropped nothing, "
                         "so this equals the unbounded search)"),
        "planted_identity_copies": int(len(pk)),
        "planted_identity_recall": round(float(np.isin(pk, ours_all).mean()), 6) if len(pk) else 1.0,
    }
    if not opts["no_variants"]:
        vs = min(opts["variant_sample"], n)
        vsample = np.sort(rng.choice(n, size=vs, replace=False))
        vq = hashes_to_codes(variants[vsample]).reshape(-1, 8)  # (vs * 8) queries, row i*8+k
        t0 = time.perf_counter()
        lims, vd, vi = flat.range_search(np.ascontiguousarray(vq), r + 1)
        t_vsample = time.perf_counter() - t0
        qi = np.repeat(np.arange(vs * 8), np.diff(lims.astype(np.int64)))
        img = vsample[qi // 8].astype(np.int64)
        vi = vi.astype(np.int64)
        keep = vi != img
        img, vi, vd = img[keep], vi[keep], vd[keep].astype(np.int64)
        want = np.minimum(img, vi) * n + np.maximum(img, vi)
        pos = np.searchsorted(vpairs["keys"], want)
        pos = np.minimum(pos, max(len(vpairs["keys"]) - 1, 0))
        hit = (vpairs["keys"][pos] == want) if len(vpairs["keys"]) else np.zeros(len(want), bool)
        # a pair's hamming is the min over both directions, so <= this query's distance
        ok = hit & (vpairs["hamming"][pos] <= vd) if len(want) else hit
        pm = planted["transform"] > 0
        mk = np.minimum(planted["src"][pm], planted["dst"][pm]) * n + np.maximum(planted["src"][pm], planted["dst"][pm])
        out["recall_variants"] = {
            "sample_images": vs,
            "sample_queries": vs * 8,
            "brute_force_hits": int(len(want)),
            "found": int(ok.sum()),
            "recall": round(float(ok.mean()), 6) if len(want) else 1.0,
            "planted_mirrored_copies": int(len(mk)),
            "planted_mirrored_recall": round(float(np.isin(mk, vpairs["keys"]).mean()), 6) if len(mk) else 1.0,
            "faiss_sample_s": round(t_vsample, 2),
        }
    per_query = t_sample / s
    base = per_query * n
    out["baseline"] = {
        "method": "faiss IndexBinaryFlat range_search (brute force), all-vs-all",
        "sample_s": round(t_sample, 2),
        "all_vs_all_s": round(base, 1),
        "note": f"extrapolated from a sample of {s} queries (brute force is linear in queries)",
        "variants_s": round(8 * base, 1),
        "variants_note": "8 n queries: 8 x the all-vs-all extrapolation",
        "full_all_vs_all_s": None,
    }
    if opts["full_baseline"] and n <= opts["full_baseline_max"]:
        t0 = time.perf_counter()
        lims, _, fi = flat.range_search(fcodes, r + 1)
        out["baseline"]["full_all_vs_all_s"] = round(time.perf_counter() - t0, 1)
        fq = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims.astype(np.int64)))
        fi = fi.astype(np.int64)
        fkeys = np.sort((fq * n + fi)[fq != fi])
        okeys = np.sort(q * n + j)
        out["baseline"]["full_all_vs_all_hits"] = int(len(fkeys))
        # exactness on every query, not a sample: the same (query, item) set as brute force
        out["recall"]["full_all_vs_all_recall"] = round(float(np.isin(fkeys, okeys).mean()), 6) if len(fkeys) else 1.0
        out["recall"]["full_all_vs_all_extra"] = int((~np.isin(okeys, fkeys)).sum())
        del fq, fi, fkeys, okeys
        base = out["baseline"]["full_all_vs_all_s"]
        out["baseline"]["used"] = "full all-vs-all (measured)"
    else:
        out["baseline"]["used"] = "extrapolated"
    out["speedup_identity"] = round(base / t_ident, 1)
    if not opts["no_variants"]:
        out["speedup_variants"] = round(8 * base / t_var, 1)
    out["peak_rss_mb"] = round(_rss_mb(), 1)
    out["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    rec_ok = out["recall"]["recall"] == 1.0 and out["recall"]["our_hits_not_in_brute_force"] == 0 \
        and ident["beyond_radius"] == 0 and ident["distance_mismatches"] == 0 \
        and out["recall"].get("full_all_vs_all_recall", 1.0) == 1.0 \
        and out["recall"].get("full_all_vs_all_extra", 0) == 0
    if not opts["no_variants"]:
        rec_ok = rec_ok and out["recall_variants"]["recall"] == 1.0 \
            and out["variants"]["pair_check_failures"] == 0 and out["variants"]["beyond_radius"] == 0
    out["targets"] = {
        "exact": bool(rec_ok),
        f"speedup_identity>={TARGET_SPEEDUP:g}": out["speedup_identity"] >= TARGET_SPEEDUP,
        f"peak_rss_search_mb<={TARGET_RSS_MB:g}": out["peak_rss_search_mb"] <= TARGET_RSS_MB,
    }
    return out


# --------------------------------------------------------------------------- driver


def _table(report: dict) -> str:
    rows = [("n", "ours identity s", "ours 8-variant s", "faiss all-vs-all s", "speedup id/var",
             "recall id/var", "truncated", "pairs id/var", "peak RSS MB")]
    for s in report["sizes"]:
        if "error" in s:
            rows.append((str(s.get("n")), "error: " + s["error"][:60], "", "", "", "", "", "", ""))
            continue
        v = s.get("variants", {})
        rows.append((
            f"{s['n']:,}",
            f"{s['identity']['seconds']:.1f}",
            f"{v['seconds']:.1f}" if v else "-",
            (f"{s['baseline']['all_vs_all_s']:.0f} (extrap.)" if s["baseline"]["used"] == "extrapolated"
             else f"{s['baseline']['full_all_vs_all_s']:.0f} (full)"),
            f"{s['speedup_identity']:.0f}x / {s.get('speedup_variants', float('nan')):.0f}x",
            f"{s['recall']['recall']:.4f} / {s.get('recall_variants', {}).get('recall', float('nan')):.4f}",
            f"{s['identity']['truncated']}/{v.get('truncated', '-')}",
            f"{s['identity']['pairs']:,} / {v.get('pairs', 0):,}",
            f"{s['peak_rss_mb']:.0f}",
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        print(json.dumps(_worker(json.loads(argv[1]))))
        return 0
    args = _parser().parse_args(argv)
    sizes = [int(float(x)) for x in args.sizes.split(",") if x.strip()]
    report = {
        "benchmark": "hashscale",
        "radius": args.radius,
        "max_neighbours": args.max_neighbours,
        "threads": args.threads,
        "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "sizes": [],
    }
    env = dict(os.environ)
    env.setdefault("NUMBA_NUM_THREADS", str(max(args.threads, 1)))
    started = time.perf_counter()
    for n in sizes:
        opts = {"n": n, "radius": args.radius, "max_neighbours": args.max_neighbours,
                "threads": args.threads, "seed": args.seed, "planted_fraction": args.planted_fraction,
                "max_copies": args.max_copies, "mirrored_every": args.mirrored_every,
                "sample": args.sample, "variant_sample": args.variant_sample,
                "no_variants": args.no_variants, "full_baseline": args.full_baseline,
                "full_baseline_max": args.full_baseline_max}
        proc = subprocess.run([sys.executable, "-m", __name__, "--_worker", json.dumps(opts)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            report["sizes"].append({"n": n, "error": proc.stderr.strip()[-2000:]})
        else:
            report["sizes"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"n={n:,} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - started, 1)
    emit(report, _table(report), args.json)
    return 0 if all("error" not in s for s in report["sizes"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
