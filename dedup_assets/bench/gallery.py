"""``dedup-assets bench gallery --groups 100000``: render the review gallery at scale.

Builds synthetic stage tables (best_selection, wavelet_hashes, local_groups, overrides) for
N duplicate groups over a local folder of real JPEG files (hard links to a small pool of
distinct pictures, so thumbnails are real work), renders the gallery twice (cold: thumbnails
made; warm: all reused) and reports time, peak RSS, page count, the largest file, and what
opening the first page reads compared with the whole gallery (plus its load time in headless
Chromium when available). Prints a table; ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from ..core import gallery, overrides
from ..core.content import content_hash
from ..core.store import LocalFolderStore
from ..core.text import help_text

COLLECTION = "bench"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _group_sizes(n: int, rng: np.random.Generator) -> np.ndarray:
    sizes = 2 + rng.geometric(0.55, size=n) - 1  # mostly 2–4
    big = rng.choice(n, size=max(1, n // 10_000), replace=False)
    sizes[big] = rng.integers(50, 400, size=big.size)  # a few very large groups
    return sizes.astype(np.int64)


def synthetic_tables(n_groups: int, distinct: int, seed: int = 0):
    """(best_selection, images, pairs, overrides, pool index per image) for ``n_groups``."""
    rng = np.random.default_rng(seed)
    sizes = _group_sizes(n_groups, rng)
    n = int(sizes.sum())
    gid = np.repeat(np.arange(n_groups), sizes)
    member = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    paths = [f"s{g // 1000:03d}/g{g:06d}_{m}.jpg" for g, m in zip(gid.tolist(), member.tolist())]
    pool = rng.integers(0, distinct, size=n)
    quality = np.round(rng.uniform(30, 95, size=n), 2)
    group_ids = [f"g{g:012x}" for g in range(n_groups)]
    # keeper: the best quality of each group
    order = np.lexsort((-quality, gid))
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    keeper_idx = order[first]
    keeper_of = np.repeat(keeper_idx, sizes)
    status = np.where(np.arange(n) == keeper_of, "Best", "Duplicate")
    n_err = max(1, n // 100)
    err_paths = [f"broken/bad_{i:05d}.jpg" for i in range(n_err)]
    reasons = rng.choice(["truncated", "empty", "not_an_image", "decode_failed"], size=n_err)
    best = pl.DataFrame(
        {
            "path": paths + err_paths,
            "status": status.tolist() + ["Error"] * n_err,
            "group_id": [group_ids[g] for g in gid.tolist()] + [None] * n_err,
            "group_size": np.r_[sizes[gid], np.zeros(n_err, np.int64)].astype(np.int32),
            "keeper_path": [paths[k] for k in keeper_of.tolist()] + [None] * n_err,
            "quality_score": np.r_[quality, np.full(n_err, np.nan)],
            "error_reason": [None] * n + reasons.tolist(),
            "error_message": [None] * n + [f"synthetic {r} file" for r in reasons.tolist()],
        }
    ).with_columns(pl.col("quality_score").fill_nan(None))
    images = pl.DataFrame(
        {
            "path": paths,
            "content_hash": [f"{p:032x}" for p in pool.tolist()],  # replaced by the real hash below
            "width": rng.integers(640, 4000, size=n),
            "height": rng.integers(480, 3000, size=n),
            "format": ["JPEG"] * n,
            "file_size": rng.integers(50_000, 5_000_000, size=n),
            **{c: np.round(rng.uniform(0, 100, size=n), 1) for c in gallery.QUALITY_COMPONENTS},
        }
    )
    # pairs: a chain through each group plus a few extra edges
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes - 1)
    steps = np.concatenate([np.arange(1, s) for s in sizes.tolist()])
    a, b = starts + steps - 1, starts + steps
    extra = rng.choice(np.flatnonzero(sizes >= 3), size=n_groups // 3, replace=True)
    ea = (np.cumsum(sizes) - sizes)[extra]
    a, b = np.r_[a, ea], np.r_[b, ea + 2]
    m = a.size
    source = rng.choice(["exact", "hash", "global"], size=m, p=[0.1, 0.8, 0.1])
    pairs = pl.DataFrame(
        {
            "path_a": [paths[i] for i in a.tolist()],
            "path_b": [paths[i] for i in b.tolist()],
            "source": source,
            "hamming": rng.integers(0, 11, size=m).astype(np.int32),
            "transform": rng.choice(8, size=m, p=[0.86] + [0.02] * 7).astype(np.int8),
            "color_similarity": rng.uniform(0.6, 1.0, size=m),
            "global_similarity": rng.uniform(0.85, 1.0, size=m),
            "inliers": rng.integers(25, 1000, size=m).astype(np.int32),
            "local_kept": np.ones(m, bool),
        }
    )
    k = min(200, m)
    pick = rng.choice(m, size=k, replace=False)
    ov = pl.DataFrame(
        {
            "kind": ["not_duplicate"] * k,
            "path_a": [paths[i] for i in a[pick].tolist()],
            "path_b": [paths[i] for i in b[pick].tolist()],
            "note": ["synthetic"] * k,
            "created_at": [None] * k,
        },
        schema=overrides.SCHEMA,
    )
    return best, images, pairs, ov, pool


def make_source(root: Path, paths: list[str], pool: np.ndarray, distinct: int, seed: int = 0) -> list[str]:
    """Real JPEG files: ``distinct`` pictures, hard-linked under every path; returns their content hashes."""
    rng = np.random.default_rng(seed)
    base = root / ".pool"
    base.mkdir(parents=True, exist_ok=True)
    keys = []
    yy, xx = np.mgrid[0:600, 0:800]
    for i in range(distinct):
        f = rng.uniform(0.005, 0.05, size=4)
        c = rng.uniform(0, 255, size=3)
        img = np.stack(
            [np.sin(xx * f[0] + yy * f[1]) * 100 + c[0], np.cos(yy * f[2]) * 100 + c[1],
             np.sin((xx + yy) * f[3]) * 100 + c[2]], axis=-1,
        )
        path = base / f"p{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=88)
        keys.append(content_hash(path.read_bytes()))
    made_dirs: set[Path] = set()
    for p, k in zip(paths, pool.tolist()):
        target = root / p
        if target.parent not in made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(target.parent)
        os.link(base / f"p{k:05d}.jpg", target)
    return keys


def first_page_reads(folder: Path) -> dict:
    """What a browser reads to show the first page: the page and the files it references."""
    page = folder / "pages" / "page-0001.html"
    text = page.read_text()
    refs = re.findall(r"""(?:src|href)=['"]?([^'" >]+)""", text)
    loaded = [r for r in re.findall(r"""<img[^>]*\ssrc=['"]?([^'" >]+)""", text)]
    external = [r for r in refs if re.match(r"^[a-z]+://", r)]
    sizes = [(page.parent / r).stat().st_size for r in set(loaded)]
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {
        "first_page_bytes": page.stat().st_size,
        "first_page_thumbnails": len(set(loaded)),
        "first_page_thumbnail_bytes": sum(sizes),
        "first_page_external_refs": len(external),
        "gallery_files": sum(1 for f in folder.rglob("*") if f.is_file()),
        "gallery_bytes": total,
        "first_page_share_of_gallery": round((page.stat().st_size + sum(sizes)) / total, 5),
    }


def chromium_load_seconds(page: Path) -> float | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        return None
    with tempfile.TemporaryDirectory() as profile:
        start = time.perf_counter()
        done = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
        seconds = time.perf_counter() - start
    return round(seconds, 2) if done.returncode == 0 and "section" in done.stdout else None


def _blank_page(work: Path) -> Path:
    """Baseline for the Chromium timing: a page with one empty section (browser start-up)."""
    page = work / "blank.html"
    page.write_text("<!doctype html><title>blank</title><section></section>")
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dedup-assets bench gallery", description=help_text(__doc__.splitlines()[0]))
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--distinct-images", type=int, default=500, help="distinct pictures behind the paths")
    ap.add_argument("--groups-per-page", type=int, default=50)
    ap.add_argument("--images-per-page", type=int, default=400)
    ap.add_argument("--workers", type=int, default=0, help="thumbnail processes (0: all cores)")
    ap.add_argument("--dir", help="work folder (kept); default: a temporary folder, removed")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-gallery-"))
    try:
        t0 = time.perf_counter()
        best, images, pairs, ov, pool = synthetic_tables(args.groups, args.distinct_images)
        keys = make_source(work / "src" / COLLECTION, images["path"].to_list(), pool, args.distinct_images)
        images = images.with_columns(content_hash=pl.Series([keys[k] for k in pool.tolist()]))
        setup = time.perf_counter() - t0
        store = LocalFolderStore(str(work / "src"), str(work / "out"))
        options = gallery.GalleryOptions(
            groups_per_page=args.groups_per_page, images_per_page=args.images_per_page,
            workers=args.workers, title=COLLECTION,
        )
        rss_tables = _status_kb("VmRSS") / 1024
        runs = []
        for label in ("cold", "warm"):
            data = result = None  # the previous run's frames are not kept
            _reset_peak()
            start = time.perf_counter()
            data = gallery.prepare(best, images, pairs, ov, options=options)
            prepared = time.perf_counter() - start
            result = gallery.write_gallery(store, COLLECTION, data, options=options)
            runs.append(
                {
                    "run": label,
                    "seconds": round(time.perf_counter() - start, 2),
                    "prepare_seconds": round(prepared, 2),
                    "thumbnails_made": result.thumbnails_made,
                    "thumbnails_reused": result.thumbnails_cached,
                    "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
                }
            )
        folder = work / "out" / f"{COLLECTION}_deduplicated" / "gallery"
        figures = {
            "groups": data.totals["groups"],
            "images_in_groups": data.totals["images_in_groups"],
            "pairs": pairs.height,
            "unreadable": data.totals["unreadable"],
            "largest_group": int(data.groups["group_size"].max()),
            "pages": result.pages,
            "index_bytes": (folder / "index.html").stat().st_size,
            "error_pages": result.error_pages,
            "largest_file": result.largest_file[0],
            "largest_file_bytes": result.largest_file[1],
            "html_bytes": result.bytes_written,
            "setup_seconds": round(setup, 1),
            "rss_with_tables_mb": round(rss_tables, 1),
            "runs": runs,
            **first_page_reads(folder),
            "first_page_chromium_seconds": chromium_load_seconds(folder / "pages" / "page-0001.html"),
            "blank_page_chromium_seconds": chromium_load_seconds(_blank_page(work)),
            "cold_thumbnails_per_second": round(
                runs[0]["thumbnails_made"] / max(1e-9, runs[0]["seconds"] - runs[1]["seconds"]), 1
            ),
            "cpus": os.cpu_count(),
        }
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k in figures)
    for k, v in figures.items():
        if k != "runs":
            print(f"{k:<{width}}  {v}")
    print()
    print(f"{'run':<6} {'seconds':>8} {'prepare_s':>9} {'thumbs_made':>11} {'thumbs_reused':>13} {'peak_rss_mb':>11}")
    for r in runs:
        print(f"{r['run']:<6} {r['seconds']:>8} {r['prepare_seconds']:>9} {r['thumbnails_made']:>11} "
              f"{r['thumbnails_reused']:>13} {r['peak_rss_mb']:>11}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
