"""A corpus of good, odd and bad files, generated here, run through the real stage-1 path
(``LocalFolderStore`` inventory + ``analyse_collection`` on worker processes): every file gets
exactly one row with the expected status and reason, nothing crashes, and bombs of several
formats are refused from their headers without allocating their declared size."""

from __future__ import annotations

import io
import struct
import threading
import tracemalloc
import zlib
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from dedup_assets.core.analyse import analyse_bytes, analysis_gray
from dedup_assets.core.decode import decode_image
from dedup_assets.core.hashing import from_signed64, hamming, hash_variants
from dedup_assets.core.stage1 import analyse_collection
from dedup_assets.core.store import LocalFolderStore


def enc(img, fmt="JPEG", **kw) -> bytes:
    img = img if isinstance(img, Image.Image) else Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def png_rgb16(a16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = a16.shape
    raw = b"".join(b"\x00" + a16[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def png_bomb(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def gif_bomb(w: int = 65535, h: int = 65535) -> bytes:
    lsd = struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + lsd + image + b"\x3b"


def jpeg_bomb(w: int = 65000, h: int = 65000) -> bytes:
    dqt = b"\xff\xdb\x00\x43\x00" + bytes([1] * 64)
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", h, w) + b"\x03\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + dqt + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def bmp_bomb(w: int = 200_000, h: int = 200_000) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + header + b"\0" * 16


def _photo() -> np.ndarray:
    return np.ascontiguousarray(skdata.chelsea()[:240, :320])  # 320x240 RGB


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def corpus() -> dict[str, tuple[bytes, str, str | None, str | None]]:
    """name -> (bytes, expected status, expected reason or format, expected Pillow mode)."""
    rgb = _photo()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(gray.shape, 160, np.uint8)])
    pal = Image.fromarray(rgb).quantize(colors=64)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    frames = [Image.fromarray(rgb).quantize(colors=64), Image.fromarray(rgb[::-1].copy()).quantize(colors=64)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    jpeg = enc(rgb, quality=90)
    png = enc(rgb, "PNG")
    ok = "ok"
    c = {
        "jpeg.jpg": (jpeg, ok, "JPEG", "RGB"),
        "jpeg_progressive.jpg": (enc(rgb, quality=90, progressive=True), ok, "JPEG", "RGB"),
        "jpeg_gray.jpg": (enc(gray, quality=90), ok, "JPEG", "L"),
        "jpeg_cmyk.jpg": (enc(Image.fromarray(rgb).convert("CMYK"), quality=90), ok, "JPEG", "CMYK"),
        "jpeg_exif_rot6.jpg": (enc(np.rot90(rgb, 1).copy(), quality=90, exif=_exif(6)), ok, "JPEG", "RGB"),
        "png.png": (png, ok, "PNG", "RGB"),
        "png_rgba.png": (enc(rgba, "PNG"), ok, "PNG", "RGBA"),
        "png_la.png": (enc(Image.fromarray(np.dstack([gray, gray // 2]), "LA"), "PNG"), ok, "PNG", "LA"),
        "png_palette.png": (enc(pal, "PNG"), ok, "PNG", "P"),
        "png_palette_transparent.png": (enc(pal_t, "PNG", transparency=0), ok, "PNG", "P"),
        "png_gray16.png": (enc(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), ok, "PNG", "I;16"),
        "png_rgb16.png": (png_rgb16(rgb.astype(np.uint16) * 257), ok, "PNG", "RGB"),
        "webp_lossy.webp": (enc(rgb, "WEBP", quality=80), ok, "WEBP", "RGB"),
        "webp_lossless.webp": (enc(rgb, "WEBP", lossless=True), ok, "WEBP", "RGB"),
        "webp_alpha.webp": (enc(rgba, "WEBP", quality=80), ok, "WEBP", "RGBA"),
        "gif_animated.gif": (gif.getvalue(), ok, "GIF", "P"),
        "bmp.bmp": (enc(rgb, "BMP"), ok, "BMP", "RGB"),
        "tiff.tif": (enc(rgb, "TIFF"), ok, "TIFF", "RGB"),
        "tiff_gray16.tiff": (enc(Image.fromarray(gray.astype(np.uint16) * 257), "TIFF"), ok, "TIFF", "I;16"),
        "ppm.ppm": (enc(rgb, "PPM"), ok, "PPM", "RGB"),
        "pgm.pgm": (enc(gray, "PPM"), ok, "PPM", "L"),
        "pbm.pbm": (enc(Image.fromarray(gray > 128).convert("1"), "PPM"), ok, "PPM", "1"),
        "png_named.jpg": (png, ok, "PNG", "RGB"),  # wrong extension
        "jpeg_named.png": (jpeg, ok, "JPEG", "RGB"),
        "jpeg_named.bmp": (jpeg, ok, "JPEG", "RGB"),
        "jpeg_no_extension": (jpeg, ok, "JPEG", "RGB"),
        "tiny_8x8.png": (enc(np.zeros((8, 8, 3), np.uint8), "PNG"), ok, "PNG", "RGB"),
        # bad or refused
        "zero_bytes.jpg": (b"", "error", "empty", None),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "error", "truncated", None),
        "truncated.png": (png[: len(png) // 2], "error", "truncated", None),
        "truncated.webp": (enc(rgb, "WEBP", quality=80)[:300], "error", "truncated", None),
        "random_bytes.jpg": (np.random.default_rng(1).bytes(5000), "error", "not_an_image", None),
        "text_named.png": (b"hello, not an image\n" * 20, "error", "unsupported_format", None),
        "vector.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "error",
                       "unsupported_format", None),
        "one_pixel.png": (enc(np.zeros((1, 1, 3), np.uint8), "PNG"), "error", "too_small", None),
        "one_pixel.gif": (enc(Image.new("P", (1, 1)), "GIF"), "error", "too_small", None),
        "extreme_aspect.png": (enc(np.zeros((10, 2000, 3), np.uint8), "PNG"), "error", "extreme_aspect", None),
        "extreme_aspect_tall.jpg": (enc(np.zeros((3000, 40, 3), np.uint8), quality=80), "error",
                                    "extreme_aspect", None),
        "bomb.png": (png_bomb(100_000, 100_000), "error", "decompression_bomb", None),
        "bomb.gif": (gif_bomb(), "error", "decompression_bomb", None),
        "bomb.jpg": (jpeg_bomb(), "error", "decompression_bomb", None),
        "bomb.bmp": (bmp_bomb(), "error", "decompression_bomb", None),
    }
    return c


CORPUS = corpus()


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("store")
    folder = root / "odd"
    folder.mkdir()
    for name, (data, *_) in CORPUS.items():
        (folder / name).write_bytes(data)
    (folder / "vanished.jpg").write_bytes(b"x")
    store = LocalFolderStore(str(root))
    paths = [b.path for b in store.iter_blobs("odd")]
    assert sorted(paths) == sorted([*CORPUS, "vanished.jpg"])  # the inventory lists every file
    (folder / "vanished.jpg").unlink()  # gone between inventory and read
    out = list(analyse_collection(store, "odd", paths, workers=2))
    assert [r["path"] for r in out] == paths  # one row per path, in order
    return {r["path"]: r for r in out}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_file_gets_its_row(rows, name):
    data, status, expected, mode = CORPUS[name]
    row = rows[name]
    assert row["status"] == status, (name, row["error_reason"], row["error_message"])
    assert row["file_size"] == len(data)
    if status == "ok":
        assert row["error_reason"] is None and row["format"] == expected and row["mode"] == mode
        assert len(row["hash_variants"]) == 8 and row["hash_variants"][0] == row["whash"]
        assert 0 <= row["quality_score"] <= 100
        assert len(row["color_thumb"]) == 16 * 16 * 3
    else:
        assert row["error_reason"] == expected, (name, row["error_message"])
        assert row["error_message"]
        assert row["whash"] is None and row["quality_score"] is None


def test_vanished_file_reported(rows):
    row = rows["vanished.jpg"]
    assert (row["status"], row["error_reason"]) == ("error", "read_failed")
    assert "vanished.jpg" in row["error_message"]


def test_odd_files_decoded_right(rows):
    # EXIF orientation 6: stored portrait, shown landscape 320x240
    assert (rows["jpeg_exif_rot6.jpg"]["width"], rows["jpeg_exif_rot6.jpg"]["height"]) == (320, 240)
    assert hamming(rows["jpeg_exif_rot6.jpg"]["whash"], rows["jpeg.jpg"]["whash"]) <= 4
    # the animated GIF is analysed on its first frame
    gif = CORPUS["gif_animated.gif"][0]
    first = np.asarray(Image.open(io.BytesIO(gif)).convert("RGB"))
    expected = hash_variants(analysis_gray(first))
    assert [from_signed64(v) for v in rows["gif_animated.gif"]["hash_variants"]] == expected
    # alpha and transparency are flagged; 16-bit images keep their tones
    for name in ("png_rgba.png", "png_la.png", "png_palette_transparent.png", "webp_alpha.webp"):
        assert rows[name]["has_alpha"] is True, name
    assert rows["png_rgb16.png"]["whash"] == rows["png.png"]["whash"]
    assert rows["png_gray16.png"]["is_gray"] and rows["pbm.pbm"]["is_gray"]
    # wrong extensions change nothing
    assert rows["png_named.jpg"]["whash"] == rows["png.png"]["whash"]
    assert rows["jpeg_named.png"]["content_hash"] == rows["jpeg.jpg"]["content_hash"]


@pytest.mark.parametrize("name", ["bomb.png", "bomb.gif", "bomb.jpg", "bomb.bmp"])
def test_bombs_refused_without_allocating(name):
    data = CORPUS[name][0]
    tracemalloc.start()
    try:
        row = analyse_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert row["error_reason"] == "decompression_bomb", row["error_message"]
    assert peak < 2 * 2**20, f"{name}: {peak} bytes traced while refusing it"


def test_lossy_webp_scored_as_lossy():
    rgb = np.ascontiguousarray(skdata.astronaut())
    comps = {}
    for label, data in {
        "webp_q10": enc(rgb, "WEBP", quality=10),
        "webp_q50": enc(rgb, "WEBP", quality=50),
        "webp_q95": enc(rgb, "WEBP", quality=95),
        "webp_lossless": enc(rgb, "WEBP", lossless=True),
        "png": enc(rgb, "PNG"),
        "jpeg_q50": enc(rgb, quality=50),
    }.items():
        img = decode_image(data)
        assert img.lossy == (label not in ("webp_lossless", "png")), label
        comps[label] = analyse_bytes(data)["q_compression"]
    assert comps["webp_lossless"] == comps["png"] == 100.0
    assert comps["webp_q10"] < comps["webp_q50"] < comps["webp_q95"] <= 100.0
    assert comps["webp_q10"] < 20 and comps["webp_q50"] < 70
    assert abs(comps["webp_q50"] - comps["jpeg_q50"]) < 15  # same scale as JPEG


def test_webp_quality_estimate_from_vp8_quantiser():
    from dedup_assets.core.decode import webp_compression

    rgb = np.ascontiguousarray(skdata.coffee())
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    for q in (10, 30, 50, 75, 90):
        lossy, est = webp_compression(enc(rgb, "WEBP", quality=q))
        assert lossy and abs(est - q) <= 8, (q, est)
        lossy, est = webp_compression(enc(rgba, "WEBP", quality=q))  # VP8X + ALPH + VP8
        assert lossy and abs(est - q) <= 8, (q, est)
    assert webp_compression(enc(rgb, "WEBP", lossless=True)) == (False, None)
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1].copy())]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], quality=40)
    lossy, est = webp_compression(buf.getvalue())  # animated: ANMF frames
    assert lossy and abs(est - 40) <= 12  # the animation encoder tunes segments differently
    assert webp_compression(b"RIFF\x04\x00\x00\x00WEBP") == (False, None)  # no image chunk


class _CountingStore(LocalFolderStore):
    """The real folder store, counting reads in flight; the first ``wait_for`` reads wait
    for each other (a barrier), so the test fails unless that many run at once."""

    def __init__(self, root: str, wait_for: int) -> None:
        super().__init__(root)
        import threading

        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_barrier", threading.Barrier(wait_for, timeout=10))
        object.__setattr__(self, "stats", {"now": 0, "max": 0, "reads": 0})

    def read_bytes(self, collection: str, path: str) -> bytes:
        with self._lock:
            self.stats["now"] += 1
            self.stats["reads"] += 1
            self.stats["max"] = max(self.stats["max"], self.stats["now"])
            first = self.stats["reads"] <= self._barrier.parties
        try:
            if first:
                self._barrier.wait()  # BrokenBarrierError unless the reads overlap
            return super().read_bytes(collection, path)
        finally:
            with self._lock:
                self.stats["now"] -= 1


def test_reads_run_ahead_of_the_analysis_in_order_and_bounded(tmp_path):
    from dedup_assets.core.parallel import read_ahead_chunk
    from dedup_assets.core.stage1 import analyse_path

    folder = tmp_path / "c"
    folder.mkdir()
    photo = skdata.astronaut()
    paths = []
    for i in range(12):
        name = f"img_{i:02d}.jpg"
        (folder / name).write_bytes(enc(np.roll(photo, 17 * i, axis=1), quality=90))
        paths.append(name)
    paths.insert(5, "missing.jpg")  # fails to read in the middle of the chunk
    store = _CountingStore(str(tmp_path), wait_for=4)
    rows = read_ahead_chunk(analyse_path, (256, 150_000_000), store, "c", 4, paths)
    assert [r["path"] for r in rows] == paths
    assert store.stats["max"] == 4 and store.stats["reads"] == len(paths)
    assert rows[5]["status"] == "error" and rows[5]["error_reason"] == "read_failed"
    assert all(r["status"] == "ok" for i, r in enumerate(rows) if i != 5)
    # the same rows as reading one file after the other
    plain = [analyse_bytes((folder / p).read_bytes()) for p in paths if p != "missing.jpg"]
    assert [r["whash"] for i, r in enumerate(rows) if i != 5] == [p["whash"] for p in plain]


@dataclass(frozen=True)
class _ThreadNoteStore(LocalFolderStore):
    """Notes which thread read each file (a class attribute: the store is frozen)."""

    readers: ClassVar[list] = []

    def read_bytes(self, collection: str, path: str) -> bytes:
        type(self).readers.append(threading.current_thread().name)
        return super().read_bytes(collection, path)


def test_read_ahead_defaults_to_the_store_s_setting(tmp_path):
    from dedup_assets.core.azure_store import AzureBlobStore
    from dedup_assets.core.parallel import DEFAULT_READ_AHEAD

    folder = tmp_path / "c"
    folder.mkdir()
    paths = []
    for i in range(6):
        (folder / f"img_{i}.jpg").write_bytes(enc(np.roll(skdata.astronaut(), 9 * i, axis=1), quality=85))
        paths.append(f"img_{i}.jpg")
    assert LocalFolderStore.read_ahead == 1 and AzureBlobStore.read_ahead == DEFAULT_READ_AHEAD > 1
    store = _ThreadNoteStore(str(tmp_path))
    rows = list(analyse_collection(store, "c", paths, workers=1))  # inline: threads visible here
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert _ThreadNoteStore.readers == ["MainThread"] * 6  # a local folder reads inline
    _ThreadNoteStore.readers.clear()
    list(analyse_collection(store, "c", paths, workers=1, read_ahead=3))
    assert all(name.startswith("read-ahead") for name in _ThreadNoteStore.readers)
