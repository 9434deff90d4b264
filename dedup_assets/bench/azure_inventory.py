"""Inventory of an Azure collection: time and memory of the paged listing, by blob count.

``dedup-assets bench azure_inventory [--blobs 20000] [--page-sizes 5000,1000] [--json PATH]``
starts Azurite (from node_modules; see ``dedup_assets.azurite``), uploads ``--blobs`` small
JPEGs under nested prefixes (1 % without extension, so that they are sniffed by a ranged
read) so that ``big`` holds all of them, ``big/a0`` half, ``big/a0/b0`` a quarter, ... and
lists each of these collections in a fresh process:

- ``stream``: ``AzureBlobStore.iter_blobs`` consumed one BlobInfo at a time (what
  ``blob_inventory`` does, into columnar batches), for each page size;
- ``list`` (the baseline, same run, first page size): the whole listing kept as one Python
  list, as the replaced system kept its blob list.

Reported per collection: seconds, blobs/s, and the listing process's RSS growth (VmHWM after
minus VmRSS before). The streamed listing's growth is bounded by the page size, not by the
number of blobs.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import time
from concurrent.futures import ThreadPoolExecutor

from ..core.text import help_text


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _list_in_child(auth, container: str, collection: str, mode: str, page_size: int, q) -> None:
    from dedup_assets.core.azure_store import AzureBlobStore, AzureLimits

    store = AzureBlobStore(auth, container, limits=AzureLimits(page_size=page_size))
    store.list_collections()  # client and imports ready before measuring
    _reset_hwm()
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    if mode == "stream":
        n = 0
        for _ in store.iter_blobs(collection):
            n += 1
    else:
        everything = list(store.iter_blobs(collection))
        n = len(everything)
    seconds = time.perf_counter() - start
    q.put({"blobs": n, "seconds": seconds, "rss_growth_mb": (_status_kb("VmHWM") - before) / 1024})


def _measure(auth, container, collection, mode, page_size) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_list_in_child, args=(auth, container, collection, mode, page_size, q))
    p.start()
    out = q.get(timeout=3600)
    p.join()
    return out


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(buf, "JPEG")
    return buf.getvalue()


LEVELS = 4  # big, big/a0, big/a0/b0, big/a0/b0/c0


def _name(i: int, n: int) -> str:
    """Blob i of n: the first n/2 under big/a0, the first n/4 under big/a0/b0, ..."""
    parts = ["big"]
    for depth, letter in enumerate("abc"):
        block = n >> (depth + 1)
        parts.append(f"{letter}{(i // block) % 2}")
    name = "/".join(parts) + f"/folder {i % 37:02d}/IMG_{i:07d}"
    return name if i % 100 == 0 else name + ".jpg"


def _upload(service, container: str, count: int) -> float:
    data = _tiny_jpeg()
    client = service.get_container_client(container)
    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda i: client.upload_blob(_name(i, count), data, overwrite=True), range(count)))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dedup-assets bench azure_inventory", description=help_text(__doc__.splitlines()[0]))
    parser.add_argument("--blobs", type=int, default=20000, help="blobs in the largest collection")
    parser.add_argument("--page-sizes", default="5000,1000", help="listing page sizes to compare")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    page_sizes = [int(p) for p in args.page_sizes.split(",")]
    if args.blobs % (1 << LEVELS):
        raise SystemExit(f"--blobs must be a multiple of {1 << LEVELS}")

    from azure.storage.blob import BlobServiceClient

    from dedup_assets.azurite import Azurite

    results = []
    with Azurite() as azurite:
        service = BlobServiceClient.from_connection_string(azurite.connection_string())
        service.create_container("bench")
        upload_s = _upload(service, "bench", args.blobs)
        collections = ["big", "big/a0", "big/a0/b0", "big/a0/b0/c0"]
        for depth, collection in reversed(list(enumerate(collections))):
            count = args.blobs >> depth
            row: dict = {"collection": collection, "blobs": count}
            runs = [("stream", p) for p in page_sizes] + [("list", page_sizes[0])]
            for mode, page_size in runs:
                m = _measure(azurite.auth(), "bench", collection, mode, page_size)
                assert m["blobs"] == count, (m, count)
                key = f"{mode}_p{page_size}"
                row[f"{key}_seconds"] = round(m["seconds"], 2)
                row[f"{key}_blobs_per_s"] = round(count / m["seconds"], 1)
                row[f"{key}_rss_growth_mb"] = round(m["rss_growth_mb"], 1)
            results.append(row)
    report = {
        "benchmark": "azure_inventory",
        "blobs": args.blobs,
        "upload_seconds": round(upload_s, 1),
        "page_sizes": page_sizes,
        "results": results,
    }
    cols = ["blobs"] + [k for k in results[0] if k.endswith(("_seconds", "_rss_growth_mb"))]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
