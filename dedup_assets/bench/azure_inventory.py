"""Inventory of an Azure collection: time and memory of the paged listing, by blob count.

``dedup-assets bench azure_inventory [--counts 2500,5000,20000] [--json PATH]`` starts Azurite
(from node_modules; see ``dedup_assets.azurite``), uploads one collection per count (small
JPEGs under nested prefixes, 1 % without extension so that they are sniffed by a ranged
read), then lists each collection in a fresh process:

- ``stream``: ``AzureBlobStore.iter_blobs`` consumed one BlobInfo at a time (what
  ``blob_inventory`` does, into columnar batches);
- ``list`` (the baseline, same run): the whole listing kept as one Python list, as the
  replaced system did with its blob-list JSON.

Reported per count: seconds, blobs/s, and the process's RSS growth during the listing
(VmHWM minus VmRSS before it). The streamed listing's growth should not depend on the count.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import time
from concurrent.futures import ThreadPoolExecutor


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


def _upload(service, container: str, collection: str, count: int) -> float:
    data = _tiny_jpeg()
    client = service.get_container_client(container)

    def put(i: int) -> None:
        name = f"{collection}/folder {i % 37:02d}/sub {i % 5}/IMG_{i:07d}"
        client.upload_blob(name if i % 100 == 0 else name + ".jpg", data, overwrite=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(count)))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dedup-assets bench azure_inventory", description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="2500,5000,20000", help="blobs per collection")
    parser.add_argument("--page-size", type=int, default=5000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]

    from azure.storage.blob import BlobServiceClient

    from dedup_assets.azurite import Azurite

    results = []
    with Azurite() as azurite:
        service = BlobServiceClient.from_connection_string(azurite.connection_string())
        service.create_container("bench")
        for count in counts:
            collection = f"c{count}"
            upload_s = _upload(service, "bench", collection, count)
            row = {"blobs": count, "upload_seconds": round(upload_s, 2)}
            for mode in ("stream", "list"):
                m = _measure(azurite.auth(), "bench", collection, mode, args.page_size)
                assert m["blobs"] == count, (m, count)
                row[f"{mode}_seconds"] = round(m["seconds"], 2)
                row[f"{mode}_blobs_per_s"] = round(count / m["seconds"], 1)
                row[f"{mode}_rss_growth_mb"] = round(m["rss_growth_mb"], 1)
            results.append(row)
    report = {"benchmark": "azure_inventory", "page_size": args.page_size, "results": results}
    cols = ["blobs", "stream_seconds", "stream_blobs_per_s", "stream_rss_growth_mb", "list_seconds", "list_rss_growth_mb"]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
