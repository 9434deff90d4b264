"""``dedup-assets bench stage1``: stage-1 throughput against its limit and a peer, and its memory.

Throughput, per image size (default 2 MP and 12 MP JPEGs generated from real photos), on the
same files and the same number of worker processes (``--workers``, default 2; stage 1 and the
decode subjects share one warm pool, the peer gets a fresh pool of the same size):

- ``stage1``: the real path, ``core.stage1.analyse_collection`` (``LocalFolderStore.read_bytes``
  + ``analyse_bytes``: content hash, decode, hash + 8 variants, quality, colour signature);
- ``decode``: the limit: the same file read through the store, its header parsed and its pixels
  decoded exactly as stage 1 decodes them (``decode.decode_jpeg_pixels``: libjpeg-turbo at the
  same DCT scale, into a numpy array);
- ``decode_image``: our decode function alone (validation, draft, orientation, reduction);
- ``peer_whash`` / ``peer_phash``: what a user of imagehash runs,
  ``imagehash.whash(Image.open(path))`` (and ``phash``).

Rates are medians over ``--rounds`` rounds (order rotated each round; the peers run once).
Peak RSS of the stage-1 process tree is sampled with psutil while stage 1 runs.

Memory (``--rss-images``, default 2000 and 20000): stage 1 over that many small JPEGs (a few
hundred distinct files hard-linked under many names), each collection in a fresh process that
streams the rows and keeps none; peak RSS per process (Linux ``VmHWM``) and of the whole tree
(sampled) show whether memory grows with the collection.

The photos: scikit-image's sample photos, plus ``../shared/datasets/food-originals`` when it is
there (``--photos DIR`` to choose), cropped, flipped, re-exposed, upscaled and given a fine
sensor-like grain (camera files are not smooth), saved as JPEG ``--quality`` (default 90).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import psutil
from PIL import Image, features

from . import emit
from ..core.analyse import DEFAULT_TARGET_SIDE, analyse_bytes  # noqa: F401 - preloaded in workers
from ..core.decode import decode_image, decode_jpeg_pixels
from ..core.parallel import ordered_map, worker_pool
from ..core.sample import PHOTOS, load_photo
from ..core.stage1 import DEFAULT_READ_AHEAD, analyse_collection
from ..core.store import LocalFolderStore
from ..core.text import help_text


COLLECTION = "photos"
TARGET_DECODE_RATIO = 0.8
TARGET_PEER_RATIO = 3.0
RSS_METHOD = (
    "psutil: sum of RSS over the bench's stage-1 process and all its descendants (workers, "
    "forkserver), sampled every 0.5 s (rarely, not to steal CPU from the timed run); "
    "per-process peaks from Linux /proc/PID/status VmHWM. "
    "RSS counts shared library pages once per process, so tree sums overstate real use."
)


# --------------------------------------------------------------------------- photos


def _default_photo_dir() -> Path | None:
    here = Path(__file__).resolve().parents[2]
    for base in (os.environ.get("DEDUP_DATASETS"), here.parent / "shared" / "datasets"):
        if base and (Path(base) / "food-originals" / "images").is_dir():
            return Path(base) / "food-originals" / "images"
    return None


def _sources(photo_dir: Path | None, limit: int = 48) -> list[tuple[str, str]]:
    out = [("skimage", name) for name in PHOTOS]
    if photo_dir is not None:
        files = sorted(p for p in photo_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        step = max(1, len(files) // limit)
        out += [("file", str(p)) for p in files[::step][:limit]]
    return out


@lru_cache(maxsize=64)
def _load(kind: str, ref: str) -> np.ndarray:
    img = load_photo(ref) if kind == "skimage" else Image.open(ref)
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


@lru_cache(maxsize=4)
def _grain_tile(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    luma = rng.normal(0.0, 3.0, (512, 512, 1))
    chroma = rng.normal(0.0, 1.0, (512, 512, 3))
    return np.round(luma + chroma).astype(np.int16)


def _make_jpeg(item: tuple[str, tuple[str, str], int, int, int, int]) -> int:
    """Write one varied, upscaled JPEG; returns its size in bytes."""
    out, (kind, ref), width, height, quality, seed = item
    rng = np.random.default_rng(seed)
    src = _load(kind, ref)
    h0, w0 = src.shape[:2]
    aspect = width / height
    ch = min(h0, int(w0 / aspect))
    cw = int(ch * aspect)
    frac = rng.uniform(0.75, 1.0)
    ch, cw = max(16, int(ch * frac)), max(16, int(cw * frac))
    y = int(rng.integers(0, h0 - ch + 1))
    x = int(rng.integers(0, w0 - cw + 1))
    crop = src[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    big = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_CUBIC)
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-10, 10)
    tile = _grain_tile()
    oy, ox = (int(v) for v in rng.integers(0, 512, 2))
    reps = (height + oy) // 512 + 1, (width + ox) // 512 + 1, 1
    grain = np.tile(tile, reps)[oy : oy + height, ox : ox + width]
    arr = big.astype(np.int16)
    arr = np.clip(arr * gain + offset, 0, 255).astype(np.int16) + grain
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    Path(out).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def _dims(mp: float) -> tuple[int, int]:
    """3:2 landscape size of ``mp`` megapixels, multiples of 16."""
    w = int(round((mp * 1e6 * 1.5) ** 0.5 / 16)) * 16
    h = int(round(w / 1.5 / 16)) * 16
    return w, h


def _generate(workers: int, folder: Path, n: int, width: int, height: int, quality: int, sources, seed: int) -> list[str]:
    """Generate ``n`` JPEGs into ``folder`` (on a pool of its own, closed afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"img_{i:05d}.jpg" for i in range(n)]
    items = [
        (str(folder / name), sources[i % len(sources)], width, height, quality, seed * 1_000_003 + i)
        for i, name in enumerate(names)
    ]
    sizes = list(ordered_map(_make_jpeg, items, workers=workers, chunk_size=2))
    assert len(sizes) == n
    return names


# --------------------------------------------------------------------------- subjects


def _decode_only(store: LocalFolderStore, collection: str, target_side: int, path: str) -> tuple[int, ...]:
    """The limit: read through the store, parse the header, decode the pixels exactly as
    stage 1 does (``decode_jpeg_pixels``: libjpeg-turbo, the same DCT scale)."""
    data = store.read_bytes(collection, path)
    with Image.open(io.BytesIO(data)) as im:
        width, height, mode = im.width, im.height, im.mode
    return decode_jpeg_pixels(data, width, height, mode == "L", target_side).shape


def _decode_image(store: LocalFolderStore, collection: str, target_side: int, path: str) -> tuple[int, ...]:
    return decode_image(store.read_bytes(collection, path), target_side=target_side, exact=False).rgb.shape


def _peer(method: str, folder: str, path: str) -> str:
    import imagehash  # the peer: a dev dependency, imported only by the peer's workers

    with Image.open(os.path.join(folder, path)) as im:
        return str(getattr(imagehash, method)(im))


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class _RssSampler(threading.Thread):
    """Peak RSS of this process and its descendants (sampled), plus per-process VmHWM."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.root = psutil.Process()
        self.peak_tree = 0
        self.hwm: dict[int, int] = {}
        self._halt = threading.Event()

    @staticmethod
    def _vmhwm(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except psutil.Error:
            pass
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
            self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), self._vmhwm(p.pid))
        self.peak_tree = max(self.peak_tree, total)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        self.sample()
        own = self.hwm.get(self.root.pid, 0)
        others = [v for pid, v in self.hwm.items() if pid != self.root.pid]
        mb = 1 / 2**20
        return {
            "tree_sampled_mb": round(self.peak_tree * mb, 1),
            "parent_vmhwm_mb": round(own * mb, 1),
            "max_child_vmhwm_mb": round(max(others, default=0) * mb, 1),
            "tree_vmhwm_sum_mb": round((own + sum(others)) * mb, 1),
        }


def _timed(run) -> float:
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


# --------------------------------------------------------------------------- throughput


def _throughput(args, workdir: Path, sources) -> list[dict]:
    store = LocalFolderStore(str(workdir))
    results = []
    for mp in args.sizes:
        width, height = _dims(mp)
        label = f"{mp:g}MP"
        coll = f"{COLLECTION}_{label}"
        folder = workdir / coll
        t0 = time.perf_counter()
        names = _generate(args.workers, folder, args.images, width, height, args.quality, sources, seed=int(mp * 10))
        gen_s = time.perf_counter() - t0
        sizes = [(folder / n).stat().st_size for n in names]
        n = len(names)
        subjects = {
            "decode": functools.partial(_decode_only, store, coll, args.target_side),
            "decode_image": functools.partial(_decode_image, store, coll, args.target_side),
        }
        statuses: Counter = Counter()

        def run_stage1(pool) -> None:
            statuses.clear()
            for row in analyse_collection(
                store, coll, names, workers=args.workers, target_side=args.target_side, pool=pool
            ):
                statuses[row["status"] if row["status"] == "ok" else f"error:{row['error_reason']}"] += 1

        def run_map(fn, pool) -> None:
            for _ in ordered_map(fn, names, workers=args.workers, pool=pool):
                pass

        few = names[: 4 * args.workers]
        rounds: dict[str, list[float]] = {"stage1": [], "decode": [], "decode_image": []}
        rss = None
        order = ["decode", "stage1", "decode_image"]
        with worker_pool(args.workers, analyse_collection) as pool:  # stage 1 and its limit
            # warm-up: every subject once on a few files (worker start, lazy imports, caches)
            for fn in subjects.values():
                list(ordered_map(fn, few, workers=args.workers, pool=pool))
            list(analyse_collection(store, coll, few, workers=args.workers, target_side=args.target_side, pool=pool))
            for r in range(args.rounds):
                for name in order[r % 3 :] + order[: r % 3]:
                    if name == "stage1":
                        sampler = _RssSampler()
                        sampler.start()
                        secs = _timed(lambda: run_stage1(pool))
                        peak = sampler.stop()
                        if rss is None or peak["tree_sampled_mb"] > rss["tree_sampled_mb"]:
                            rss = peak
                    else:
                        secs = _timed(lambda fn=subjects[name]: run_map(fn, pool))
                    rounds[name].append(n / secs)
        rates = {k: statistics.median(v) for k, v in rounds.items()}
        peers = {f"peer_{m}": functools.partial(_peer, m, str(folder)) for m in args.peers}
        with worker_pool(args.workers) as pool:  # the peer, on as many fresh workers
            for name, fn in peers.items():
                list(ordered_map(fn, few[: 2 * args.workers], workers=args.workers, pool=pool))
                rates[name] = n / _timed(lambda fn=fn: run_map(fn, pool))
        ratios = {"stage1_vs_decode": rates["stage1"] / rates["decode"]}
        for name in peers:
            ratios[f"stage1_vs_{name}"] = rates["stage1"] / rates[name]
        peer_ratios = [v for k, v in ratios.items() if "peer" in k]
        results.append(
            {
                "label": label,
                "width": width,
                "height": height,
                "images": n,
                "jpeg_quality": args.quality,
                "mean_file_mb": round(statistics.mean(sizes) / 1e6, 3),
                "bytes_per_pixel": round(statistics.mean(sizes) / (width * height), 3),
                "generate_s": round(gen_s, 1),
                "images_per_s": {k: round(v, 1) for k, v in rates.items()},
                "images_per_s_per_worker": {k: round(v / args.workers, 1) for k, v in rates.items()},
                "rounds_images_per_s": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
                "meets_targets": {
                    f"stage1_vs_decode>={TARGET_DECODE_RATIO}": ratios["stage1_vs_decode"] >= TARGET_DECODE_RATIO,
                    f"stage1_vs_peers>={TARGET_PEER_RATIO}": bool(peer_ratios)
                    and min(peer_ratios) >= TARGET_PEER_RATIO,
                },
                "stage1_statuses": dict(statuses),
                "stage1_peak_rss": rss,
            }
        )
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return results


# --------------------------------------------------------------------------- store latency


@dataclass(frozen=True)
class _LatencyStore(LocalFolderStore):
    """The local folder store with a fixed delay per read: what a remote store's GET
    latency does to stage 1 (the delay is a sleep, so it costs no CPU, like a network wait)."""

    latency_ms: float = 20.0

    def read_bytes(self, collection: str, path: str) -> bytes:
        time.sleep(self.latency_ms / 1000.0)
        return super().read_bytes(collection, path)


def _latency(args, workdir: Path, sources) -> dict:
    """Stage 1 on 2 MP files behind ``--latency-ms`` of delay per read, for several
    ``read_ahead`` settings, against the same files without delay."""
    width, height = _dims(2)
    coll = f"{COLLECTION}_latency"
    names = _generate(args.workers, workdir / coll, args.images, width, height, args.quality, sources, seed=7)
    plain = LocalFolderStore(str(workdir))
    slow = _LatencyStore(str(workdir), latency_ms=args.latency_ms)
    rates: dict[str, float] = {}
    with worker_pool(args.workers, analyse_collection) as pool:
        list(analyse_collection(plain, coll, names[:8], workers=args.workers, pool=pool))
        runs = [("no_delay", plain, DEFAULT_READ_AHEAD)] + [
            (f"read_ahead_{k}", slow, k) for k in (1, DEFAULT_READ_AHEAD, 2 * DEFAULT_READ_AHEAD)
        ]
        for label, store, k in runs:
            secs = _timed(
                lambda store=store, k=k: list(
                    analyse_collection(store, coll, names, workers=args.workers, read_ahead=k, pool=pool)
                )
            )
            rates[label] = round(len(names) / secs, 1)
    if not args.keep:
        shutil.rmtree(workdir / coll, ignore_errors=True)
    return {
        "latency_ms_per_read": args.latency_ms,
        "images": len(names),
        "images_per_s": rates,
        "default_read_ahead": DEFAULT_READ_AHEAD,
        "default_vs_no_delay": round(rates[f"read_ahead_{DEFAULT_READ_AHEAD}"] / rates["no_delay"], 3),
        "default_vs_read_ahead_1": round(rates[f"read_ahead_{DEFAULT_READ_AHEAD}"] / rates["read_ahead_1"], 3),
    }


# --------------------------------------------------------------------------- memory


def _rss_child(argv: list[str]) -> int:
    root, coll, n, workers, target_side = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    store = LocalFolderStore(root)
    paths = (f"img_{i:06d}.jpg" for i in range(n))  # a generator: nothing per image is kept
    sampler = _RssSampler()
    sampler.start()
    statuses: Counter = Counter()
    t = time.perf_counter()
    count = 0
    for row in analyse_collection(store, coll, paths, workers=workers, target_side=target_side):
        count += 1
        statuses[row["status"]] += 1
    secs = time.perf_counter() - t
    peak = sampler.stop()
    print(json.dumps({"images": n, "rows": count, "statuses": dict(statuses), "seconds": round(secs, 2),
                      "images_per_s": round(n / secs, 1), "peak_rss": peak}))
    return 0


def _memory(args, workdir: Path, sources) -> dict:
    base = workdir / "rss_distinct"
    distinct = _generate(args.workers, base, args.rss_distinct, 640, 480, 85, sources, seed=7)
    runs = []
    for n in args.rss_images:
        coll = f"rss_{n}"
        folder = workdir / coll
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            os.link(base / distinct[i % len(distinct)], folder / f"img_{i:06d}.jpg")
        cmd = [sys.executable, "-m", "dedup_assets.bench.stage1", "--_rss-child", str(workdir), coll, str(n),
               str(args.workers), str(args.target_side)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"RSS run for {n} images failed:\n{out.stderr[-4000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        shutil.rmtree(folder, ignore_errors=True)
    first, last = runs[0]["peak_rss"], runs[-1]["peak_rss"]
    growth = {k: round(last[k] / first[k], 3) for k in first if first[k]}
    return {
        "distinct_files": len(distinct),
        "image_size": "640x480 JPEG q85",
        "runs": runs,
        "growth_last_vs_first": growth,
    }


# --------------------------------------------------------------------------- output


def _table(report: dict) -> str:
    lines = []
    tp = report.get("throughput") or []
    if tp:
        lines.append(f"stage 1 throughput, {report['workers']} workers, images/s (median of {report['rounds']} rounds)")
        cols = ["stage1", "decode", "decode_image", *[f"peer_{m}" for m in report["peers"]]]
        lines.append(f"{'size':>6} {'MB/img':>7} " + " ".join(f"{c:>12}" for c in cols)
                     + f" {'s1/decode':>10} " + " ".join(f"{'s1/' + c[5:]:>10}" for c in cols[3:]))
        for r in tp:
            rates = r["images_per_s"]
            lines.append(
                f"{r['label']:>6} {r['mean_file_mb']:>7.2f} "
                + " ".join(f"{rates.get(c, float('nan')):>12.1f}" for c in cols)
                + f" {r['ratios']['stage1_vs_decode']:>10.2f} "
                + " ".join(f"{r['ratios'].get('stage1_vs_' + c, float('nan')):>10.1f}" for c in cols[3:])
            )
        for r in tp:
            p = r["stage1_peak_rss"]
            lines.append(f"{r['label']:>6} stage-1 peak RSS: tree {p['tree_sampled_mb']} MB sampled, parent "
                         f"{p['parent_vmhwm_mb']} MB, largest worker {p['max_child_vmhwm_mb']} MB; statuses "
                         f"{r['stage1_statuses']}; targets {r['meets_targets']}")
    lat = report.get("store_latency")
    if lat:
        lines.append(f"stage 1 behind {lat['latency_ms_per_read']:g} ms per read, 2 MP, images/s: {lat['images_per_s']}; "
                     f"default read-ahead vs none {lat['default_vs_read_ahead_1']}x, vs no delay {lat['default_vs_no_delay']}x")
    mem = report.get("memory")
    if mem:
        lines.append("stage 1 peak RSS vs collection size (fresh process each)")
        lines.append(f"{'images':>8} {'img/s':>8} {'tree MB':>9} {'parent MB':>10} {'worker MB':>10} {'rows':>8}")
        for r in mem["runs"]:
            p = r["peak_rss"]
            lines.append(f"{r['images']:>8} {r['images_per_s']:>8.1f} {p['tree_sampled_mb']:>9.1f} "
                         f"{p['parent_vmhwm_mb']:>10.1f} {p['max_child_vmhwm_mb']:>10.1f} {r['rows']:>8}")
        lines.append(f"growth (last/first): {mem['growth_last_vs_first']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dedup-assets bench stage1", description=help_text(__doc__.split("\n\n")[0]))
    p.add_argument("--images", type=int, default=160, help="images per size (default 160)")
    p.add_argument("--sizes", default="2,12", help="image sizes in megapixels (default 2,12)")
    p.add_argument("--workers", type=int, default=2, help="worker processes for every subject (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of stage1/decode (default 3)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated files")
    p.add_argument("--target-side", type=int, default=DEFAULT_TARGET_SIDE, help="stage-1 decode side")
    p.add_argument("--peers", default="whash,phash", help="imagehash methods to compare with")
    p.add_argument("--photos", default=None, help="extra source photos (default: food-originals if present)")
    p.add_argument("--rss-images", default="2000,20000", help="collection sizes for the memory run")
    p.add_argument("--rss-distinct", type=int, default=300, help="distinct files in the memory run")
    p.add_argument("--no-throughput", action="store_true", help="only the memory run")
    p.add_argument("--no-rss", action="store_true", help="skip the memory run")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="also run stage 1 behind this delay per read (a remote store), per read_ahead")
    p.add_argument("--workdir", default=None, help="where to write the generated files (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--json", default=None, help="write the JSON report here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_rss-child"]:
        return _rss_child(argv[1:])
    args = _parser().parse_args(argv)
    args.sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    args.peers = [m.strip() for m in args.peers.split(",") if m.strip()]
    args.rss_images = [int(s) for s in args.rss_images.split(",") if s.strip()]
    if importlib.util.find_spec("imagehash") is None and not args.no_throughput:
        raise SystemExit("bench stage1 compares with imagehash: pip install imagehash (or .[dev])")
    photo_dir = Path(args.photos) if args.photos else _default_photo_dir()
    sources = _sources(photo_dir)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_stage1_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "stage1",
        "workers": args.workers,
        "rounds": args.rounds,
        "target_side": args.target_side,
        "peers": args.peers,
        "sources": {"skimage_photos": len(PHOTOS), "photo_dir": str(photo_dir) if photo_dir else None,
                    "photos_used": len(sources)},
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
            "opencv": cv2.__version__,
            "imagehash": _version("imagehash"),
        },
        "rss_method": RSS_METHOD,
        "files": "generated into a local temp dir just before timing (page cache warm); reads included",
    }
    started = time.perf_counter()
    try:
        if not args.no_throughput:
            report["throughput"] = _throughput(args, workdir, sources)
        if args.latency_ms > 0:
            report["store_latency"] = _latency(args, workdir, sources)
        if not args.no_rss:
            report["memory"] = _memory(args, workdir, sources)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - started, 1)
    emit(report, _table(report), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
