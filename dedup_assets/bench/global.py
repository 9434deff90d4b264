"""``dedup-assets bench global``: the global (CLIP) stage against its two limits, and its memory.

On the same generated 2 MP JPEGs (scikit-image's real photos, cropped, flipped, re-exposed,
upscaled and given a sensor-like grain, as ``bench stage1`` makes them), in one run:

- ``decode``: the limit on the image side: read through the store and ``decode_image`` with
  the stage's own settings (libjpeg DCT scaling to the smallest scale whose short side still
  covers the model's input, EXIF orientation), on ``--workers`` processes;
- ``worker``: everything the stage's decode workers do per image (decode, border trim, the
  model's uint8 resize + centre crop for each view, the rotation descriptor);
- ``model`` per device and precision: the image tower alone on pre-made uint8 inputs
  (normalisation included: one batched tensor op), ``--threads`` torch threads;
- ``stage`` per device and precision: ``core.verify.global_similarities`` end to end (read,
  decode, preprocess, model, faiss discovery), with one view per image (``views=0``) and with
  the mirror view too (``views=0,1``, the asset's default ``discover_mirror=True``: two model
  passes per image);
- ``fidelity``: cosine between the stage's embeddings and open_clip's own pipeline (full PIL
  decode + EXIF transpose + open_clip's PIL transform), fp32, on the first 32 photos, with
  the cosine between *different* photos for scale, and the mean absolute pixel difference
  of the model inputs (0-255, model-independent).

The model has random weights (``pretrained=random``: nothing is downloaded), which does not
change its speed; give ``--pretrained``/``--checkpoint`` for real weights. Peak RSS of the
process tree is sampled while the stages run. ``loadavg`` before and after is reported: the
machine may be shared, and other processes' load lowers every rate.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.borders import trim_uniform_borders
from ..core.decode import decode_image
from ..core.parallel import ordered_map, worker_pool
from ..core.store import LocalFolderStore
from ..core.verify import GLOBAL_SIDE, _views_rgb, global_similarities
from ..core.text import help_text
from .stage1 import _RssSampler, _default_photo_dir, _dims, _generate, _sources

COLLECTION = "photos"
TARGET_RATE = 100.0  # images/s, 2 cores, CPU


def _decode_only(store: LocalFolderStore, cover: int, path: str) -> tuple[int, ...]:
    data = store.read_bytes(COLLECTION, path)
    return decode_image(data, target_side=GLOBAL_SIDE, exact=False, cover_short_side=cover).rgb.shape


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("nan")


def _loadavg() -> float | None:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:  # pragma: no cover
        return None


def _pool_rate(fn, items, workers: int, rounds: int) -> float:
    """Median images/s of ``fn`` over ``items`` on a warm pool of ``workers`` processes."""
    rates = []
    with worker_pool(workers, fn) as pool:
        list(ordered_map(fn, items[: 2 * workers], workers=workers, pool=pool, chunk_size=4))  # warm up
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in ordered_map(fn, items, workers=workers, pool=pool, chunk_size=4):
                pass
            rates.append(_rate(len(items), time.perf_counter() - t))
    return float(np.median(rates))


def _fidelity(emb, store: LocalFolderStore, paths: list[str]) -> dict:
    """The stage's fp32 embeddings vs open_clip's own preprocessing of the full-size photo."""
    import torch
    from PIL import Image, ImageOps

    transform = emb.input_transform
    ours, ref, pix = [], [], []
    trimmed = 0
    for p in paths:
        data = store.read_bytes(COLLECTION, p)
        # the stage's decode + transform (its border trim aside: it changes the content on
        # purpose, counted below)
        rgb = decode_image(data, target_side=GLOBAL_SIDE, exact=False, cover_short_side=transform.cover_short_side).rgb
        trimmed += trim_uniform_borders(rgb).shape != rgb.shape
        ours.append(transform(rgb))
        with Image.open(io.BytesIO(data)) as im:
            full = ImageOps.exif_transpose(im.convert("RGB"))
            ref.append(emb.preprocess(full))
    with torch.inference_mode():
        r = torch.stack(ref)
        ref_emb = torch.nn.functional.normalize(emb.model.encode_image(r.to(emb.dtype)).float(), dim=-1).numpy()
        ref_pix = (r * emb.std.view(1, 3, 1, 1) + emb.mean.view(1, 3, 1, 1)) * 255.0
    our = emb.embed_uint8(np.stack(ours))
    ours_pix = torch.from_numpy(np.stack(ours)).permute(0, 3, 1, 2).float()
    pix = (ours_pix - ref_pix).abs().mean(dim=(1, 2, 3)).numpy()
    same = np.sum(our * ref_emb, axis=1)
    other = ref_emb @ ref_emb.T
    off = other[~np.eye(len(paths), dtype=bool)]
    return {
        "photos": len(paths),
        "photos_with_borders_trimmed_by_the_stage": int(trimmed),
        "cosine_min": round(float(same.min()), 5),
        "cosine_mean": round(float(same.mean()), 5),
        "different_photos_cosine_mean": round(float(off.mean()), 5),
        "different_photos_cosine_max": round(float(off.max()), 5),
        "input_mean_abs_diff_0_255": round(float(pix.mean()), 3),
        "input_max_abs_diff_per_image_0_255": round(float(pix.max()), 3),
    }


def _faiss_crossover(sizes: list[int], dim: int = 512, k: int = 9, threads: int = 2) -> list[dict]:
    """Discovery's index, exact flat vs IVF (``core.verify.knn_index``), every vector a query:
    seconds (build + search) and the IVF's recall of the exact neighbours at cosine >= 0.85, on
    clustered unit vectors with 10 % planted near-copies."""
    import faiss

    from ..core.verify import knn_index

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        centres = rng.standard_normal((max(1, n // 50), dim)).astype(np.float32)
        x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
        dup = rng.choice(n, n // 10, replace=False)
        half = len(dup) // 2
        x[dup[:half]] = x[dup[half : 2 * half]] + 0.05 * rng.standard_normal((half, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t = time.perf_counter()
        sf, nf = knn_index(x, flat_max=n).search(x, k)
        flat_s = time.perf_counter() - t
        t = time.perf_counter()
        _, ni = knn_index(x, flat_max=0).search(x, k)
        ivf_s = time.perf_counter() - t
        true = hit = 0
        for q in range(n):
            want = {int(j) for s, j in zip(sf[q], nf[q]) if s >= 0.85 and j != q}
            true += len(want)
            hit += len(want & set(ni[q].tolist()))
        out.append({"n": n, "flat_s": round(flat_s, 2), "ivf_s": round(ivf_s, 2),
                    "ivf_recall_at_0_85": round(hit / max(true, 1), 4), "loadavg": _loadavg()})
    return out


def _devices(arg: str) -> list[str]:
    import torch

    if arg != "auto":
        return arg.split(",")
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dedup-assets bench global", description=help_text(__doc__.split("\n\n")[0]))
    ap.add_argument("--images", type=int, default=256, help="2 MP JPEGs to generate (default 256)")
    ap.add_argument("--mp", type=float, default=2.0, help="megapixels per image (default 2)")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--workers", type=int, default=2, help="decode processes (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the model (default 2)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random", help="open_clip tag (default: random weights)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list (cuda also runs fp16)")
    ap.add_argument("--devices", default="auto", help="auto: cpu, and cuda when present")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the decode / model measures")
    ap.add_argument("--stage-views", default="0;0,1", help="';'-separated view sets for the stage")
    ap.add_argument("--photos", default=None, help="folder of photos to add to scikit-image's")
    ap.add_argument("--workdir", default=None, help="where to write the JPEGs (default: a temp dir)")
    ap.add_argument("--faiss", default="", help="also time discovery's index, flat vs IVF, at these "
                    "sizes (e.g. 20000,50000,100000)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    import torch

    from ..core.embeddings import load_embedder

    load_before = _loadavg()
    tmp = tempfile.TemporaryDirectory(prefix="bench-global-") if args.workdir is None else None
    root = Path(args.workdir or tmp.name)
    width, height = _dims(args.mp)
    folder = root / COLLECTION
    sources = _sources(Path(args.photos) if args.photos else _default_photo_dir())
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) >= args.images:
        names = sorted(p.name for p in folder.glob("*.jpg"))[: args.images]
    else:
        names = _generate(args.workers, folder, args.images, width, height, args.quality, sources, seed=11)
    store = LocalFolderStore(str(root))
    torch.set_num_threads(args.threads)

    result: dict = {
        "benchmark": "global",
        "model_name": args.model,
        "weights": args.checkpoint or args.pretrained,
        "weights_note": "random weights: speed only (embeddings are not meaningful)"
        if (args.pretrained or "").lower() in ("random", "none", "") and not args.checkpoint
        else "",
        "images": len(names),
        "image_size": f"{width}x{height}",
        "jpeg_quality": args.quality,
        "workers": args.workers,
        "torch_threads": args.threads,
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "loadavg_before": load_before,
        "decode": {},
        "model": {},
        "stage": {},
    }

    sampler = _RssSampler()
    sampler.start()
    emb32 = load_embedder(
        args.model, args.pretrained, checkpoint_path=args.checkpoint, device="cpu", precision="fp32",
        batch_size=args.batch_size, threads=args.threads, allow_random_weights=True,
    )
    if emb32.info.kind != "clip":
        raise SystemExit(f"no CLIP model: {emb32.info.fallback_reason}")
    transform = emb32.input_transform
    cover = transform.cover_short_side

    # ---- image side: decode alone, and the stage's whole worker function
    result["decode"]["decode_image"] = _pool_rate(
        functools.partial(_decode_only, store, cover), names, args.workers, args.rounds
    )
    worker_fn = functools.partial(_views_rgb, store, COLLECTION, transform)
    result["decode"]["worker_views_0"] = _pool_rate(
        worker_fn, [(n, (0,)) for n in names], args.workers, args.rounds
    )
    crops = np.stack([v[0] for v in ordered_map(worker_fn, [(n, (0,)) for n in names], workers=args.workers)])
    # CPU time per image (load-independent; wall rates suffer when the machine is shared)
    import cv2

    cv2.setNumThreads(1)
    some = names[: min(len(names), 64)]
    c = time.process_time()
    for n in some:
        _views_rgb(store, COLLECTION, transform, (n, (0,)))
    result["cpu_ms_per_image"] = {"worker_views_0": round((time.process_time() - c) / len(some) * 1000, 2)}
    result["fidelity_vs_open_clip_pil"] = _fidelity(emb32, store, names[:32])
    del emb32

    paths = list(names)
    for device in _devices(args.devices):
        precisions = args.precisions.split(",") + (["fp16"] if device == "cuda" else [])
        for prec in precisions:
            emb = load_embedder(
                args.model, args.pretrained, checkpoint_path=args.checkpoint, device=device, precision=prec,
                batch_size=args.batch_size, threads=args.threads, allow_random_weights=True,
            )
            if emb.info.precision != prec:
                continue
            tag = f"{device}/{prec}"
            emb.embed_uint8(crops[: args.batch_size])  # warm up (oneDNN primitives, CUDA kernels)
            times, cpu = [], []
            for _ in range(args.rounds):
                t, c = time.perf_counter(), time.process_time()
                emb.embed_uint8(crops)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            if device == "cpu":
                model_ms = float(np.median(cpu)) / len(crops) * 1000
                worker_ms = result["cpu_ms_per_image"]["worker_views_0"]
                result["cpu_ms_per_image"][f"model {tag}"] = round(model_ms, 2)
                # what 2 otherwise idle cores would give: all CPU work of an image, over 2 cores
                result["cpu_ms_per_image"][f"implied_2_core_stage_images_per_s {tag} views=0"] = round(
                    2000.0 / (worker_ms + model_ms), 1
                )
            result["model"][tag] = {
                "images_per_s": _rate(len(crops), float(np.median(times))),
                "cosine_vs_fp32_probe": emb.info.precision_cosine,
            }
            for views_arg in args.stage_views.split(";"):
                views = tuple(int(v) for v in views_arg.split(","))
                t = time.perf_counter()
                res = global_similarities(
                    [], paths, store, COLLECTION, emb, hashes=np.zeros(len(paths), np.int64),
                    discover_from=range(len(paths)), discover_k=8, discover_threshold=0.85,
                    discover_views=views, rotation_k=4, rotation_threshold=0.93,
                    workers=args.workers, batch_size=args.batch_size,
                )
                dt = time.perf_counter() - t
                assert res.stats.images_embedded == len(paths), res.stats
                result["stage"][f"{tag} views={views_arg}"] = {
                    "images_per_s": _rate(len(paths), dt),
                    "model_passes_per_image": len(views),
                    "seconds": round(dt, 2),
                }
            del emb
    if args.faiss:
        result["faiss_flat_vs_ivf"] = _faiss_crossover([int(v) for v in args.faiss.split(",")])
    result["peak_rss"] = sampler.stop()
    result["loadavg_after"] = _loadavg()
    cpu_stage = [v["images_per_s"] for k, v in result["stage"].items() if k.startswith("cpu/") and k.endswith("=0")]
    result["cpu_target_images_per_s"] = TARGET_RATE
    result["cpu_best_stage_images_per_s_one_view"] = max(cpu_stage, default=None)

    print(f"global stage, {args.model} ({result['weights']}), {len(names)} JPEGs {width}x{height}, "
          f"{args.workers} decode workers, {args.threads} torch threads, batch {args.batch_size}")
    print(f"{'subject':36s} {'images/s':>10s}")
    for k, v in result["decode"].items():
        print(f"{'decode/' + k:36s} {v:10.1f}")
    for k, v in result["model"].items():
        print(f"{'model ' + k:36s} {v['images_per_s']:10.1f}   cosine vs fp32 {v['cosine_vs_fp32_probe']}")
    for k, v in result["stage"].items():
        print(f"{'stage ' + k:36s} {v['images_per_s']:10.1f}")
    f = result["fidelity_vs_open_clip_pil"]
    print(f"fidelity vs open_clip PIL (fp32): cosine min {f['cosine_min']} mean {f['cosine_mean']} "
          f"(different photos: mean {f['different_photos_cosine_mean']}), "
          f"input |diff| {f['input_mean_abs_diff_0_255']} / 255")
    print(f"peak RSS (tree, sampled): {result['peak_rss']['tree_sampled_mb']} MB; "
          f"loadavg {result['loadavg_before']} -> {result['loadavg_after']}")
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    if tmp is not None:
        tmp.cleanup()
    return 0
