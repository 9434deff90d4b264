"""``dedup-assets bench pipeline``: the whole ``dedup-assets run`` against the decode limit.

It makes a collection of ``--n`` photos (default 2,000) at ``--mp`` megapixels (default 2) from
real photos: scikit-image's sample photos, plus ``../shared/datasets/food-originals`` when it
is there (``--photos DIR`` to choose another folder, ``--photos none`` for scikit-image's
alone). Four fifths are renders of a source photo with a sensor-like grain, one source for
1.6 renders taken in turn, so some are rendered again with other grain (near-duplicates);
one fifth are edited copies of a render (mirror, 3/4 resize or an 85 %
crop, new grain). Distinct food photos often share one layout (a dish centred on a plain
background): hard negatives. ``ground_truth.json`` (every image of one source is one group) is
written beside the images; the set is written once into ``--cache`` and reused.

Then, in one run on the same files and ``--workers`` processes, it measures:

- ``decode``: the decode-only rate: Pillow with ``draft()`` (DCT scaling to ~256 px), every
  file read and decoded on ``--workers`` processes;
- ``run``: the whole ``dedup-assets run`` in this process (``cli.run_collection`` into a fresh
  output folder): images/s and its ratio to the decode rate;
- seconds per stage (the materialisation metadata, stage 1 summed over its shards) and what
  is left (Dagster, DuckDB, start-up), pairs reaching and kept by each stage, reads per image
  (metadata ``images_read``) per stage and for the analysis (copies aside), against the
  issue's bound ``1 + share of images in pairs reaching the keypoint stage``;
- peak RSS (the process tree, sampled; per-process ``VmHWM``);
- precision / recall per stage and final against the ground truth (:mod:`.accuracy`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import emit
from .accuracy import evaluate_run
from .stage1 import RSS_METHOD, _RssSampler, _default_photo_dir
from ..core.parallel import ordered_map, worker_pool
from ..core.sample import PHOTOS, load_photo
from ..core.text import help_text

COLLECTION = "photos"
FORMAT_VERSION = 2  # of the generated set: bump when the recipe changes
EDIT_SHARE = 0.2
#: renders per source used: 2,000 images = 1,000 sources, 600 of them rendered twice, and
#: 400 edited copies (the issue's set)
RENDERS_PER_SOURCE = 1.6
EDITS = ("mirror", "resize", "crop")
DECODE_SIDE = 256
#: the issue's target for the whole run against the decode-only rate
TARGET_RATIO = 0.4


# --------------------------------------------------------------------------- the collection


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dedup_assets" / "bench_pipeline"


def _sources(photos: str | None) -> list[tuple[str, str]]:
    """Distinct source photos: scikit-image's, then those of the photo folder (files of one
    byte-identical group of its ``ground_truth.json`` counted once)."""
    out = [("skimage", name) for name in PHOTOS]
    folder = None if photos == "none" else (Path(photos) if photos else _default_photo_dir())
    if folder is None:
        return out
    if not folder.is_dir():
        raise SystemExit(f"bench pipeline: --photos {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    skip: set[Path] = set()
    for truth in (folder / "ground_truth.json", folder.parent / "ground_truth.json"):
        if truth.is_file():
            for group in json.loads(truth.read_text()).get("groups", []):
                skip |= {(truth.parent / p).resolve() for p in sorted(group)[1:]}
    return out + [("file", str(p)) for p in files if p.resolve() not in skip]


@lru_cache(maxsize=8)
def _load(kind: str, ref: str) -> np.ndarray:
    img = load_photo(ref) if kind == "skimage" else Image.open(ref)
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


@lru_cache(maxsize=4)
def _grain_tile(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0.0, 3.0, (768, 768, 1)) + rng.normal(0.0, 1.0, (768, 768, 3))).astype(np.int16)


def _grain(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sensor-like grain: a tile of one of 4 seeds at a random offset (fresh per image)."""
    h, w = shape
    tile = _grain_tile(int(rng.integers(0, 4)))
    oy, ox = (int(v) for v in rng.integers(0, tile.shape[0], 2))
    reps = (h + oy) // tile.shape[0] + 1, (w + ox) // tile.shape[1] + 1, 1
    return np.tile(tile, reps)[oy : oy + h, ox : ox + w]


def _make(item: tuple[str, tuple[str, str], str, float, int, int]) -> int:
    """Write one image: the source at ``mp`` megapixels (its own aspect), edited by ``edit``,
    with fresh grain; returns the file's size."""
    out, (kind, ref), edit, mp, quality, seed = item
    rng = np.random.default_rng(seed)
    src = _load(kind, ref)
    h0, w0 = src.shape[:2]
    scale = (mp * 1e6 / (h0 * w0)) ** 0.5
    w, h = max(16, int(round(w0 * scale))), max(16, int(round(h0 * scale)))
    if edit == "resize":
        w, h = int(w * 0.75), int(h * 0.75)
    img = cv2.resize(src, (w, h), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    if edit == "mirror":
        img = img[:, ::-1]
    elif edit == "crop":
        ch, cw = int(h * 0.85), int(w * 0.85)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = img[y : y + ch, x : x + cw]
    arr = img.astype(np.int16) * rng.uniform(0.95, 1.05) + rng.uniform(-6, 6) + _grain(img.shape[:2], rng)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return os.path.getsize(out)


def plan(n: int, n_sources: int, seed: int) -> list[tuple[str, int, str]]:
    """``(name, source index, edit)`` per image: ``n - n // 5`` renders taking in turn
    ``n_base / RENDERS_PER_SOURCE`` sources (a shuffled choice; fewer when there are fewer),
    then ``n // 5`` edited copies of renders spread over the set."""
    rng = np.random.default_rng(seed)
    n_edit = int(n * EDIT_SHARE)
    n_base = n - n_edit
    used = max(1, min(n_sources, round(n_base / RENDERS_PER_SOURCE)))
    order = rng.permutation(n_sources)[:used]
    base = [int(order[i % used]) for i in range(n_base)]
    items = [(s, "none") for s in base]
    for j in range(n_edit):
        items.append((base[(j * n_base) // max(1, n_edit)], EDITS[j % len(EDITS)]))
    shuffled = rng.permutation(len(items))  # copies are not next to their original by name
    return [(f"img_{k:05d}.jpg", *items[int(i)]) for k, i in enumerate(shuffled)]


def make_collection(
    dest: Path, n: int, sources: list[tuple[str, str]], *, mp: float, quality: int, seed: int, workers: int
) -> dict:
    """Write the set into ``dest/photos`` with ``dest/ground_truth.json`` (written last: the
    set is complete when it exists)."""
    folder = dest / COLLECTION
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = plan(n, len(sources), seed)
    items = [
        (str(folder / name), sources[s], edit, mp, quality, seed * 1_000_003 + k)
        for k, (name, s, edit) in enumerate(rows)
    ]
    # sources in turn: each worker's lru cache of decoded sources gets hits
    order = sorted(range(len(items)), key=lambda k: rows[k][1])
    sizes = list(ordered_map(_make, [items[k] for k in order], workers=workers, chunk_size=4))
    groups: dict[int, list[str]] = {}
    for name, s, _ in rows:
        groups.setdefault(s, []).append(name)
    truth = {
        "dataset": f"bench-pipeline-{n}",
        "groups": sorted(sorted(g) for g in groups.values() if len(g) > 1),
        "unreadable": [],
        "ambiguous": [],
        "notes": {
            "recipe": "renders of distinct source photos with sensor-like grain; a source rendered "
            "again is a copy; edited copies: mirror, 3/4 resize, 85 % crop",
            "sources": [f"{k}:{Path(r).name}" for k, r in sources],
            "edits": {name: edit for name, _, edit in rows if edit != "none"},
            "mean_file_bytes": int(np.mean(sizes)),
        },
    }
    (dest / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def cached_collection(args, sources) -> tuple[Path, Path, float | None]:
    """``(folder, ground truth, seconds spent generating or None when reused)``."""
    key = hashlib.sha1(json.dumps([FORMAT_VERSION, args.n, args.mp, args.quality, args.seed, sources]).encode())
    dest = Path(args.cache) / f"n{args.n}_mp{args.mp:g}_{key.hexdigest()[:10]}"
    truth = dest / "ground_truth.json"
    if truth.is_file():
        return dest / COLLECTION, truth, None
    start = time.perf_counter()
    make_collection(dest, args.n, sources, mp=args.mp, quality=args.quality, seed=args.seed, workers=args.workers)
    return dest / COLLECTION, truth, time.perf_counter() - start


# --------------------------------------------------------------------------- measurements


def _decode(path: str) -> tuple[int, int]:
    """The decode limit: Pillow, DCT-scaled (``draft``) to the smallest scale >= ~256 px."""
    with Image.open(path) as im:
        im.draft("RGB", (DECODE_SIDE, DECODE_SIDE))
        im.load()
        return im.size


def decode_rate(files: list[str], workers: int) -> float:
    with worker_pool(workers, _decode) as pool:
        list(ordered_map(_decode, files[: 4 * workers], workers=workers, pool=pool))  # warm-up
        start = time.perf_counter()
        for _ in ordered_map(_decode, files, workers=workers, chunk_size=8, pool=pool):
            pass
        return len(files) / (time.perf_counter() - start)


def _assets() -> list[str]:
    from ..assets import ALL_ASSETS

    return [a.key.path[-1] for a in ALL_ASSETS]


def run_pipeline(folder: Path, truth: Path, workers: int, output: Path) -> dict:
    from ..cli import run_collection

    sampler = _RssSampler()
    sampler.start()
    start = time.perf_counter()
    result = run_collection(folder, output, workers=workers)
    seconds = time.perf_counter() - start
    rss = sampler.stop()
    if not result.success:
        raise SystemExit("bench pipeline: the run failed")
    n = sum(1 for p in folder.iterdir() if p.is_file())
    meta: dict[str, list[dict]] = {}
    for name in _assets():
        meta[name] = [
            {k: v.value for k, v in m.metadata.items()} for m in result.asset_materializations_for_node(name)
        ]
    stage_s = {k: round(sum(m.get("seconds", 0.0) for m in ms), 2) for k, ms in meta.items() if ms}
    reads = {k: sum(m.get("images_read", 0) for m in ms) for k, ms in meta.items() if ms}

    def one(name: str) -> dict:
        return meta[name][0] if meta.get(name) else {}

    color, glob, local = one("color_groups"), one("global_groups"), one("local_groups")
    pairs = {
        "candidates": color.get("exact_pairs", 0) + color.get("hash_pairs", 0),
        "kept_by_colour": color.get("kept_pairs"),
        "global_checked": glob.get("pairs_checked"),
        "global_discovered": glob.get("pairs_discovered", 0) + glob.get("pairs_discovered_rotation", 0),
        "kept_by_global": glob.get("kept_pairs"),
        "keypoint_checked": local.get("pairs_checked"),
        "kept_by_keypoints": local.get("kept_pairs"),
    }
    import duckdb

    con = duckdb.connect(str(output / ".dedup_state" / "dedup_assets.duckdb"), read_only=True)
    try:
        in_local = con.execute(
            "select count(distinct p) from (select path_a p from dedup.local_groups where source != 'exact' "
            "union select path_b from dedup.local_groups where source != 'exact')"
        ).fetchone()[0]
    finally:
        con.close()
    analysis_reads = sum(v for k, v in reads.items() if k != "deduplicated_files")
    scores = evaluate_run(folder, output, truth, result)
    return {
        "images": n,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 2),
        "dagster_runs": len(result.results),
        "stage_seconds": stage_s,
        "other_seconds": round(seconds - sum(stage_s.values()), 2),
        "pairs": pairs,
        "reads_per_image": {k: round(v / n, 3) for k, v in reads.items()},
        "analysis_reads_per_image": round(analysis_reads / n, 3),
        "share_in_keypoint_pairs": round(in_local / n, 3),
        "reads_bound": round(1 + in_local / n, 3),
        "peak_rss": rss,
        "stage_peak_rss_mb": {k: max(m.get("peak_rss_mb", 0.0) for m in ms) for k, ms in meta.items() if ms},
        "workers_peak_rss_mb": max((m.get("workers_peak_rss_mb", 0.0) for ms in meta.values() for m in ms), default=0.0),
        "accuracy": {
            stage: {k: s[k] for k in ("precision", "recall", "f1", "bcubed_f1", "true_pairs", "predicted_pairs")}
            for stage, s in scores["stages"].items()
        },
        "false_positive_pairs": scores["false_positive_pairs"],
        "false_negative_count": scores["false_negative_count"],
    }


def _table(r: dict) -> str:
    run, m = r["run"], r["machine"]
    lines = [
        f"bench pipeline: {run['images']} images at {r['collection']['mp']:g} MP from {r['collection']['sources']} "
        f"photos available, {r['workers']} workers, "
        f"load avg {m['load_avg_at_start']} -> {m['load_avg_at_end']}",
        f"{'decode only (Pillow draft ~256 px)':<40}{r['decode_images_per_s']:>10.1f} images/s",
        f"{'dedup-assets run':<40}{run['images_per_s']:>10.1f} images/s  ({run['seconds']:.1f} s)",
        f"{'run / decode':<40}{r['run_vs_decode']:>10.3f}  (target {TARGET_RATIO})",
        "seconds per stage:",
    ]
    for k, v in run["stage_seconds"].items():
        lines.append(f"  {k:<24}{v:>9.2f}  reads/image {run['reads_per_image'].get(k, 0):.3f}")
    lines.append(f"  {'other (Dagster, DuckDB)':<24}{run['other_seconds']:>9.2f}  ({run['dagster_runs']} Dagster runs)")
    lines.append("pairs: " + ", ".join(f"{k} {v}" for k, v in run["pairs"].items()))
    lines.append(
        f"reads per image, analysis: {run['analysis_reads_per_image']:.3f} "
        f"(bound 1 + {run['share_in_keypoint_pairs']:.3f} in keypoint pairs = {run['reads_bound']:.3f})"
    )
    p = run["peak_rss"]
    lines.append(
        f"peak RSS: tree {p['tree_sampled_mb']:.0f} MB (sampled), parent {p['parent_vmhwm_mb']:.0f} MB, "
        f"largest worker {p['max_child_vmhwm_mb']:.0f} MB"
    )
    lines.append(f"{'stage':<11}{'precision':>10}{'recall':>10}{'f1':>8}{'pairs':>8}")
    for stage, s in run["accuracy"].items():
        lines.append(f"{stage:<11}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>8.4f}{s['predicted_pairs']:>8}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dedup-assets bench pipeline", description=help_text(__doc__.split("\n\n")[0]))
    p.add_argument("--n", type=int, default=2000, help="images in the collection (default 2000)")
    p.add_argument("--workers", type=int, default=2, help="processes, for the decode and the run (default 2)")
    p.add_argument("--mp", type=float, default=2.0, help="megapixels per image (default 2)")
    p.add_argument("--photos", default=None,
                   help="folder of distinct source photos (default: food-originals if present; 'none': "
                   "scikit-image's photos only)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(_default_cache()), help="where generated sets are kept and reused")
    p.add_argument("--output", default=None, help="the run's output folder (default: a temp dir, removed)")
    p.add_argument("--json", default=None, help="write the JSON report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.n < 2:
        raise SystemExit("bench pipeline: --n must be at least 2")
    sources = _sources(args.photos)
    load_start = os.getloadavg()
    if len(sources) == len(PHOTOS):
        print(f"bench pipeline: only scikit-image's {len(PHOTOS)} photos as sources (no --photos folder): "
              "most images are copies of one another", file=sys.stderr)
    folder, truth, generated = cached_collection(args, sources)
    files = sorted(str(p) for p in folder.iterdir() if p.is_file())
    decode = decode_rate(files, args.workers)
    tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
    output = Path(args.output) if args.output else Path(tmp) / "out"
    try:
        run = run_pipeline(folder, truth, args.workers, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "benchmark": "pipeline",
        "workers": args.workers,
        "collection": {
            "folder": str(folder),
            "ground_truth": str(truth),
            "images": len(files),
            "mp": args.mp,
            "sources": len(sources),
            "generated_s": round(generated, 1) if generated is not None else "reused",
        },
        "decode_images_per_s": round(decode, 1),
        "run": run,
        "run_vs_decode": round(run["images_per_s"] / decode, 4),
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_avg_at_start": [round(x, 2) for x in load_start],
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "opencv": cv2.__version__,
        },
        "rss_method": RSS_METHOD,
    }
    emit(report, _table(report), args.json, echo_json=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
