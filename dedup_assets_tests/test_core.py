"""Unit tests of the pure modules: store, candidates, grouping, parallel map."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup_assets.core.analyse import analyse_bytes
from dedup_assets.core.candidates import (
    Pair,
    colour_scores,
    exact_pairs,
    hash_neighbour_pairs,
    hashes_to_codes,
)
from dedup_assets.core.color import ColorSignature
from dedup_assets.core.content import content_hash
from dedup_assets.core.grouping import components, mean_correlation_in_groups, select_keepers
from dedup_assets.core.hashing import hamming
from dedup_assets.core.parallel import ordered_map
from dedup_assets.core.sample import load_photo
from dedup_assets.core.store import LocalFolderStore, StoreError, collection_slug, looks_like_image


def _square(x: int) -> int:
    return x * x


def test_ordered_map_keeps_order_and_is_lazy():
    consumed = []

    def gen():
        for i in range(200):
            consumed.append(i)
            yield i

    it = ordered_map(_square, gen(), workers=2, chunk_size=4, max_in_flight_chunks=2)
    assert next(it) == 0
    assert len(consumed) <= 3 * 4  # only a bounded number of items was pulled
    assert list(it) == [i * i for i in range(1, 200)]


def _kernels_loaded(_: int) -> list[str]:
    from dedup_assets.core import kernels

    return sorted(n for n, f in vars(kernels).items() if getattr(f, "signatures", None))


def test_pool_workers_start_with_the_stage1_kernels_loaded():
    """The forkserver loads stage 1's compiled kernels once (dedup_assets.core.warm) before it
    forks workers: every worker of every new pool has them before its first image, instead of
    loading them from numba's cache itself (~0.7 s per worker and pool)."""
    for _ in range(2):  # two pools
        loaded = list(ordered_map(_kernels_loaded, [0, 1, 2, 3], workers=2, chunk_size=1))
        for names in loaded:
            assert {"_area3", "_color_stats", "_grid", "_scan_markers", "_structure_stats"} <= set(names)


def test_collection_slug_is_safe_and_distinct():
    assert collection_slug("holiday-2024") == "holiday-2024"
    weird = ["Holiday 2024", "holiday 2024", "x'; DROP TABLE t; --", "Ünïcode ☃", "a/b"]
    slugs = [collection_slug(w) for w in weird]
    assert len(set(slugs)) == len(slugs)
    for s in slugs:
        assert s and all(c.isascii() and (c.isalnum() or c in "-_") for c in s)
        assert s == s.lower() and len(s) <= 64


def test_local_store_lists_reads_and_copies(tmp_path):
    root = tmp_path / "root"
    (root / "c1" / "sub").mkdir(parents=True)
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(jpeg, "JPEG")
    (root / "c1" / "a.jpg").write_bytes(jpeg.getvalue())
    (root / "c1" / "sub" / "a.jpg").write_bytes(jpeg.getvalue())
    (root / "c1" / "noext").write_bytes(jpeg.getvalue())  # an image by its content
    (root / "c1" / "LICENSE").write_text("text")  # not an image
    (root / "c1" / ".hidden.jpg").write_bytes(b"x")
    (root / "c1_deduplicated").mkdir()
    store = LocalFolderStore(str(root), str(tmp_path / "out"))
    assert store.list_collections() == ["c1"]
    assert [b.path for b in store.iter_blobs("c1")] == ["a.jpg", "noext", "sub/a.jpg"]
    key = content_hash(jpeg.getvalue())
    assert store.copy_to_output("c1", "sub/a.jpg", "best/sub/a.jpg", key) == "copied"
    assert store.copy_to_output("c1", "sub/a.jpg", "best/sub/a.jpg", key) == "skipped"
    assert store.list_outputs("c1", "best") == ["best/sub/a.jpg"]
    assert (tmp_path / "out" / "c1_deduplicated" / "best" / "sub" / "a.jpg").exists()
    with pytest.raises(StoreError):
        store.copy_to_output("c1", "a.jpg", "best/a.jpg", "0" * 32)  # verification fails
    assert not (tmp_path / "out" / "c1_deduplicated" / "best" / "a.jpg").exists()
    with pytest.raises(StoreError):
        store.read_bytes("c1", "../c1/a.jpg")
    with pytest.raises(StoreError):
        store.read_bytes("c1", "missing.jpg")


def test_local_store_follows_symlinks_lists_each_image_once_and_names_loops(tmp_path, caplog):
    root = tmp_path / "root"
    coll, sub, outside = root / "c1", root / "c1" / "sub", tmp_path / "elsewhere"
    for folder in (sub / "deeper", outside, coll / ".cache"):
        folder.mkdir(parents=True)
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(jpeg, "JPEG")
    for image in (coll / "a.jpg", sub / "b.jpg", outside / "c.jpg", coll / ".cache" / "d.jpg",
                  outside / "e.jpg"):
        image.write_bytes(jpeg.getvalue())
    (sub / "deeper" / "loop").symlink_to(sub)  # back to a folder being listed
    (sub / "up").symlink_to("..")  # back to the collection folder
    (coll / "parent").symlink_to(root)  # above the collection: would list it again
    (coll / "album").symlink_to(sub)  # a folder of the collection under another name
    (coll / "a-again.jpg").symlink_to("a.jpg")
    (coll / "cached.jpg").symlink_to(coll / ".cache" / "d.jpg")
    (coll / "ext").symlink_to(outside)  # outside the collection: followed
    (coll / "ext2").symlink_to(outside)
    (coll / "c-link.jpg").symlink_to(outside / "c.jpg")
    (coll / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (outside / "back").symlink_to(outside)
    store = LocalFolderStore(str(root), str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="dedup_assets.store"):
        blobs = list(store.iter_blobs("c1"))
    assert [b.path for b in blobs] == ["a.jpg", "c-link.jpg", "ext/e.jpg", "sub/b.jpg"]
    assert store.read_bytes("c1", "ext/e.jpg") == jpeg.getvalue()
    said = {r.args[1]: r.args[3] for r in caplog.records if r.name == "dedup_assets.store"}
    assert said == {
        "a-again.jpg": "inside the collection, listed as 'a.jpg'",
        "album": "inside the collection, listed as 'sub'",
        "ext/c.jpg": "listed already as 'c-link.jpg'",
        "cached.jpg": "inside the collection, in hidden '.cache/d.jpg' (not listed)",
        "ext/back": "a loop",
        "ext2": "listed already as 'ext'",
        "gone.jpg": "its target does not exist",
        "parent": "a loop",
        "sub/deeper/loop": "a loop",
        "sub/up": "a loop",
    }
    assert all(str(coll) in r.getMessage() for r in caplog.records)


def test_looks_like_image():
    assert looks_like_image("x", b"\xff\xd8\xff\xe0")
    assert looks_like_image("x", b"RIFF\0\0\0\0WEBPVP8 ")
    assert not looks_like_image("x", b"RIFF\0\0\0\0WAVEfmt ")
    assert not looks_like_image("LICENSE", b"Apache License")


def test_exact_pairs_are_stars():
    pairs, rep = exact_pairs(["a", "b", "a", "c", "a", "b"])
    assert [(p.a, p.b) for p in pairs] == [(0, 2), (0, 4), (1, 5)]
    assert rep.tolist() == [0, 1, 0, 3, 0, 1]
    pairs, rep = exact_pairs([None, "a", None, "a"])  # no hash: paired with nothing
    assert [(p.a, p.b) for p in pairs] == [(1, 3)] and rep.tolist() == [0, 1, 2, 1]


def test_hash_codes_roundtrip_hamming():
    rng = np.random.default_rng(0)
    h = rng.integers(-(2**63), 2**63 - 1, size=50, dtype=np.int64)
    codes = hashes_to_codes(h)
    bits = np.unpackbits(codes, axis=1)
    for i in range(10):
        for j in range(10):
            assert int((bits[i] != bits[j]).sum()) == hamming(int(h[i]), int(h[j]))


def _row(img: Image.Image, quality: int = 92) -> dict:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return analyse_bytes(buf.getvalue())


def test_hash_neighbours_find_mirrors_and_rotations_with_transform():
    photos = [load_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    coffee = photos[1]
    imgs = photos + [
        ImageOps.mirror(coffee),
        coffee.transpose(Image.Transpose.ROTATE_90),
        coffee.resize((coffee.width // 2, coffee.height // 2)),
    ]
    rows = [_row(im) for im in imgs]
    variants = np.array([r["hash_variants"] for r in rows], dtype=np.int64)
    pairs = hash_neighbour_pairs(variants, np.arange(len(rows)), radius=8, max_neighbours=8)
    found = {(p.a, p.b): p for p in pairs}
    assert set(found) >= {(1, 4), (1, 5), (1, 6), (4, 5), (4, 6), (5, 6)}
    assert all(a in (1, 4, 5, 6) and b in (1, 4, 5, 6) for a, b in found)  # nothing else
    assert found[(1, 4)].transform == 1  # mirror: image 4 ≈ flip_lr(image 1)
    assert found[(1, 6)].transform == 0
    sigs = [
        ColorSignature.from_bytes(r["color_hist"], r["color_thumb"], r["dominant_colors"], r["is_gray"])
        for r in rows
    ]
    scores = colour_scores(pairs, sigs)
    assert (scores > 0.8).all()
    other = colour_scores([Pair(0, 1, "hash", 12, 0), Pair(2, 3, "hash", 12, 0)], sigs)
    assert (other < scores.min()).all()


def test_components_and_keepers_are_deterministic():
    paths = ["a", "b", "c", "d", "e", "f"]
    ok = [True, True, True, True, False, True]
    quality = [50.0, 70.0, 70.0, 10.0, 0.0, 30.0]
    pixels = [100, 100, 200, 100, 0, 100]
    sizes = [1, 1, 1, 1, 1, 1]
    edges = [(0, 1), (1, 2), (3, 4), (4, 5)]  # e is unreadable: it joins nothing
    assert components(4, [(2, 3), (0, 1)]).tolist() == [0, 0, 2, 2]
    sel = select_keepers(paths, ok, quality, pixels, sizes, edges)
    assert sel.status == ["Duplicate", "Duplicate", "Best", "Unique", "Error", "Unique"]
    assert sel.keeper[:3] == ["c", "c", "c"]  # tie on quality broken by pixel count
    assert sel.group_size == [3, 3, 3, 1, 0, 1]
    assert sel.group_id[0] == sel.group_id[1] == sel.group_id[2] != sel.group_id[3]
    again = select_keepers(paths[::-1], ok[::-1], quality[::-1], pixels[::-1], sizes, [(5 - a, 5 - b) for a, b in edges])
    assert again.group_id[::-1] == sel.group_id


def test_mean_correlation_in_groups():
    h = np.array([[1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0], [1, 2, 3, 4]], dtype=float)
    out = mean_correlation_in_groups(h, ["g", "g", "g", None])
    assert out[0] == pytest.approx((1.0 + -1.0) / 2)
    assert out[2] == pytest.approx(-1.0)
    assert np.isnan(out[3])
