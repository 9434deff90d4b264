"""Tests of the pure stage-1 image algorithms (decode, hashing, quality, colour, analyse).

All fixtures are generated in memory from ``skimage.data`` photos; no network and
no files outside ``tmp_path``.
"""

from __future__ import annotations

import io
import pickle
import resource
import struct
import time
import tracemalloc
import warnings
import zlib

import cv2
import numpy as np
import pytest
import pywt
from PIL import Image, ImageOps, features
from skimage import data as skdata

from dedup_assets.core.analyse import DEFAULT_TARGET_SIDE, ROW_KEYS, analyse_bytes, analysis_gray
from dedup_assets.core.color import (
    HIST_SIZE,
    ColorSignature,
    color_signature,
    color_similarity,
    histogram_correlation,
)
from dedup_assets.core.decode import DecodedImage, ImageDecodeError, decode_image, estimate_jpeg_quality
from dedup_assets.core.hashing import (
    DIHEDRAL_NAMES,
    apply_dihedral,
    compose_dihedral,
    from_signed64,
    hamming,
    hash_variants,
    invert_dihedral,
    to_signed64,
    wavelet_hash,
)
from dedup_assets.core.quality import (
    QUALITY_COMPONENTS,
    QUALITY_WEIGHTS,
    quality_components,
    quality_score,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


# --------------------------------------------------------------------------- #
# helpers / fixtures
# --------------------------------------------------------------------------- #
def enc(arr_or_img, fmt: str = "JPEG", **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(name: str, long_side: int | None = None) -> np.ndarray:
    """RGB uint8 skimage photo, optionally LANCZOS-resized to ``long_side``."""
    a = getattr(skdata, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    a = np.ascontiguousarray(a[..., :3])
    if long_side:
        h, w = a.shape[:2]
        s = long_side / max(h, w)
        a = np.asarray(Image.fromarray(a).resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS))
    return a


def gray_of(data: bytes) -> np.ndarray:
    return cv2.cvtColor(decode_image(data).rgb, cv2.COLOR_RGB2GRAY)


def hash_of(data: bytes) -> int:
    return wavelet_hash(gray_of(data))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def resize_to(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def big_photos() -> dict[str, np.ndarray]:
    """~1100 px versions of real photos (the 'originals')."""
    return {n: photo(n, 1100) for n in PHOTOS}


@pytest.fixture(scope="module")
def originals(big_photos) -> dict[str, bytes]:
    return {n: enc(a, quality=95) for n, a in big_photos.items()}


# --------------------------------------------------------------------------- #
# decode: formats and modes
# --------------------------------------------------------------------------- #
def _format_cases() -> dict[str, tuple[bytes, str, str, np.ndarray]]:
    """name -> (bytes, expected format, expected mode, expected RGB (approx))."""
    rgb = photo("chelsea")[:240, :320]  # 320x240
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray3 = np.stack([gray] * 3, -1)
    cases: dict[str, tuple[bytes, str, str, np.ndarray]] = {}
    cases["jpeg"] = (enc(rgb, quality=95), "JPEG", "RGB", rgb)
    cases["jpeg_gray"] = (enc(gray, quality=95), "JPEG", "L", gray3)
    cases["jpeg_progressive"] = (enc(rgb, quality=95, progressive=True), "JPEG", "RGB", rgb)
    cases["jpeg_cmyk"] = (enc(Image.fromarray(rgb).convert("CMYK"), quality=95), "JPEG", "CMYK", rgb)
    cases["png"] = (enc(rgb, "PNG"), "PNG", "RGB", rgb)
    cases["webp_lossy"] = (enc(rgb, "WEBP", quality=90), "WEBP", "RGB", rgb)
    cases["webp_lossless"] = (enc(rgb, "WEBP", lossless=True), "WEBP", "RGB", rgb)
    pal = Image.fromarray(rgb).quantize(colors=256)
    cases["gif"] = (enc(pal, "GIF"), "GIF", "P", np.asarray(pal.convert("RGB")))
    cases["bmp"] = (enc(rgb, "BMP"), "BMP", "RGB", rgb)
    cases["tiff"] = (enc(rgb, "TIFF"), "TIFF", "RGB", rgb)
    cases["tiff_lzw"] = (enc(rgb, "TIFF", compression="tiff_lzw"), "TIFF", "RGB", rgb)
    cases["ppm"] = (enc(rgb, "PPM"), "PPM", "RGB", rgb)
    cases["pgm"] = (enc(gray, "PPM"), "PPM", "L", gray3)
    bw = gray > 128
    bw_img = Image.fromarray(bw).convert("1")
    cases["pbm"] = (enc(bw_img, "PPM"), "PPM", "1", np.stack([bw.astype(np.uint8) * 255] * 3, -1))
    g16 = gray.astype(np.uint16) * 257
    cases["png_16bit_gray"] = (enc(Image.fromarray(g16), "PNG"), "PNG", "I;16", gray3)
    cases["tiff_16bit_big_endian"] = (
        enc(Image.fromarray(g16.astype(">u2")), "TIFF"),
        "TIFF",
        "I;16B",
        gray3,
    )
    cases["tiff_int32"] = (enc(Image.fromarray(g16.astype(np.int32)), "TIFF"), "TIFF", "I", gray3)
    f = gray.astype(np.float32) / 255.0 * 3.5 - 1.25  # arbitrary float range
    fs = np.rint((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8)
    cases["tiff_float"] = (enc(Image.fromarray(f), "TIFF"), "TIFF", "F", np.stack([fs] * 3, -1))
    if features.check("avif"):
        cases["avif"] = (enc(rgb, "AVIF", quality=90), "AVIF", "RGB", rgb)
    return cases


FORMAT_CASES = _format_cases()


@pytest.mark.parametrize("name", sorted(FORMAT_CASES))
def test_formats_decode(name):
    data, fmt, mode, expected = FORMAT_CASES[name]
    img = decode_image(data)
    assert isinstance(img, DecodedImage)
    assert img.format == fmt
    assert img.mode == mode
    assert (img.width, img.height) == (320, 240)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (240, 320, 3) and img.rgb.flags.c_contiguous
    assert not img.has_alpha
    diff = np.abs(img.rgb.astype(np.int16) - expected.astype(np.int16)).mean()
    assert diff < 8.0, f"{name}: mean abs diff {diff:.2f}"
    lossy = fmt == "JPEG" or name in ("webp_lossy", "avif")
    assert img.lossy == lossy
    assert (img.jpeg_quality is not None) == (fmt == "JPEG" or name == "webp_lossy")
    row = analyse_bytes(data)
    assert row["status"] == "ok", row["error_message"]
    assert row["format"] == fmt and row["mode"] == mode


def test_16bit_and_float_scaling_exact():
    gray = cv2.cvtColor(photo("coffee")[:200, :300], cv2.COLOR_RGB2GRAY)
    img = decode_image(enc(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"))
    assert np.abs(img.rgb[..., 0].astype(int) - gray).max() <= 1
    f = gray.astype(np.float32) * 0.01 + 7.0
    img = decode_image(enc(Image.fromarray(f), "TIFF"))
    assert img.rgb[..., 0].min() == 0 and img.rgb[..., 0].max() == 255
    assert corr(img.rgb[..., 0], gray) > 0.999


def _alpha_photo():
    rgb = photo("astronaut")[:200, :300].copy()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0  # left third fully transparent
    rgb[:, :100] = 0  # ...with black colour underneath
    return rgb, alpha


def test_rgba_composited_on_white():
    rgb, alpha = _alpha_photo()
    data = enc(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")
    img = decode_image(data)
    assert img.mode == "RGBA" and img.has_alpha
    assert img.rgb[:, :95].min() >= 250  # transparent -> white
    assert np.abs(img.rgb[:, 110:].astype(int) - rgb[:, 110:]).mean() < 1.0


def test_la_composited_on_white():
    rgb, alpha = _alpha_photo()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    img = decode_image(enc(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"))
    assert img.mode == "LA" and img.has_alpha
    assert img.rgb[:, :95].min() >= 250
    assert np.abs(img.rgb[:, 110:, 0].astype(int) - gray[:, 110:]).mean() < 1.0


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    rgb, _ = _alpha_photo()
    pal = Image.fromarray(rgb).quantize(colors=64)
    idx = np.asarray(pal).copy()
    idx[:, :100] = 63  # palette index 63 is the transparent one
    p = Image.fromarray(idx, "P")
    p.putpalette(pal.getpalette())
    p.info["transparency"] = 63
    data = enc(p, fmt, transparency=63)
    img = decode_image(data)
    assert img.mode == "P" and img.has_alpha
    assert img.rgb[:, :95].min() >= 250


def test_palette_transparency_bytes_no_warnings(capsys):
    rgb, _ = _alpha_photo()
    pal = Image.fromarray(rgb).convert("RGBA").quantize(colors=32)
    tr = bytes([255] * 31 + [0])
    data = enc(pal, "PNG", transparency=tr)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        img = decode_image(data)
    assert img.has_alpha
    assert not rec, [str(w.message) for w in rec]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_gif_first_frame():
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    blue = Image.new("RGB", (64, 48), (0, 0, 255))
    buf = io.BytesIO()
    red.save(buf, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    img = decode_image(buf.getvalue())
    assert img.format == "GIF"
    px = img.rgb.reshape(-1, 3).mean(axis=0)
    assert px[0] > 240 and px[2] < 15


def test_format_from_bytes_not_extension(tmp_path):
    rgb = photo("coffee")
    (tmp_path / "really_a_jpeg.png").write_bytes(enc(rgb, quality=90))
    (tmp_path / "really_a_png.jpg").write_bytes(enc(rgb, "PNG"))
    assert analyse_bytes((tmp_path / "really_a_jpeg.png").read_bytes())["format"] == "JPEG"
    assert analyse_bytes((tmp_path / "really_a_png.jpg").read_bytes())["format"] == "PNG"


def test_size_reduction_and_small_images():
    big = photo("astronaut", 2000)  # 2000x2000 JPEG: DCT-scaled decode
    img = decode_image(enc(big, quality=90))
    assert (img.width, img.height) == (2000, 2000)
    assert img.rgb.shape == (512, 512, 3)
    img = decode_image(enc(photo("coffee", 1500), "PNG"))  # reduce + resize path
    assert max(img.rgb.shape[:2]) == 512 and (img.width, img.height) == (1500, 1000)
    img = decode_image(enc(photo("coffee", 1500), quality=90), target_side=256)
    assert max(img.rgb.shape[:2]) == 256
    small = photo("chelsea")[:42, :34]
    img = decode_image(enc(small, "PNG"))
    assert img.rgb.shape == (42, 34, 3) and (img.width, img.height) == (34, 42)
    assert analyse_bytes(enc(small, quality=90))["status"] == "ok"
    assert analyse_bytes(enc(np.zeros((8, 8, 3), np.uint8), "PNG"))["status"] == "ok"


def test_jpeg_quality_estimate():
    rgb = photo("rocket")
    for q in (10, 15, 30, 50, 75, 90, 95, 100):
        assert decode_image(enc(rgb, quality=q)).jpeg_quality == pytest.approx(q, abs=1)
    assert estimate_jpeg_quality(None) is None
    assert decode_image(enc(rgb, "PNG")).jpeg_quality is None


# --------------------------------------------------------------------------- #
# decode: bad input
# --------------------------------------------------------------------------- #
def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _corrupt_middle(data: bytes, n: int = 4000, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    mid = len(out) // 2
    out[mid : mid + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(out)


def _bad_cases() -> dict[str, tuple[bytes, str]]:
    rgb = photo("coffee", 900)
    jpeg = enc(rgb, quality=90)
    prog = enc(rgb, quality=90, progressive=True)
    png = enc(rgb, "PNG")
    rng = np.random.default_rng(0)
    return {
        "zero_bytes": (b"", "empty"),
        "truncated_jpeg_60pct": (jpeg[: int(len(jpeg) * 0.6)], "truncated"),
        "truncated_progressive_jpeg": (prog[: int(len(prog) * 0.6)], "truncated"),
        "truncated_jpeg_no_eoi": (jpeg[:-2], "truncated"),
        "corrupt_middle_jpeg": (_corrupt_middle(jpeg), "truncated"),
        "corrupt_middle_progressive_jpeg": (_corrupt_middle(prog), "truncated"),
        "jpeg_header_only": (jpeg[:120], "truncated"),
        "truncated_png": (png[: int(len(png) * 0.6)], "truncated"),
        "random_bytes": (rng.integers(0, 256, 20000, dtype=np.uint8).tobytes(), "not_an_image"),
        "text_as_jpg": (b"This is not really a JPEG, just some text.\n" * 30, "unsupported_format"),
        "svg": (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
            b'width="100" height="100"><rect width="100" height="100" fill="red"/></svg>',
            "unsupported_format",
        ),
        "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "unsupported_format"),
        "one_pixel": (enc(np.zeros((1, 1, 3), np.uint8), "PNG"), "too_small"),
        "seven_by_hundred": (enc(np.zeros((100, 7, 3), np.uint8), "PNG"), "too_small"),
        "extreme_aspect_1000x2": (enc(np.zeros((2, 1000, 3), np.uint8), "PNG"), "extreme_aspect"),
        "extreme_aspect_20x1100": (enc(np.zeros((1100, 20, 3), np.uint8), quality=90), "extreme_aspect"),
        "decompression_bomb_png": (png_header_only(100_000, 100_000), "decompression_bomb"),
    }


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_files_report_reason(name):
    data, reason = BAD_CASES[name]
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data)
    assert ei.value.reason == reason, str(ei.value)
    assert str(ei.value).startswith(f"{reason}: ")
    row = analyse_bytes(data)
    assert set(row) == set(ROW_KEYS)
    assert row["status"] == "error"
    assert row["error_reason"] == reason
    assert row["error_message"]
    assert row["file_size"] == len(data)
    assert row["content_hash"] is not None and len(row["content_hash"]) == 32
    for k in ("whash", "hash_variants", "quality_score", "color_hist", "color_thumb", *QUALITY_COMPONENTS):
        assert row[k] is None


def test_decompression_bomb_refused_from_header_quickly():
    data = png_header_only(100_000, 100_000)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    row = analyse_bytes(data)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert row["error_reason"] == "decompression_bomb"
    assert elapsed < 0.5
    assert peak < 5 * 2**20
    assert (rss_after - rss_before) * 1024 < 100 * 2**20  # ru_maxrss is in KiB on Linux


def test_max_pixels_checked_on_header_by_our_code():
    # 3000x3000 = 9 MP is far below Pillow's own bomb limit: our header check must fire.
    data = png_header_only(3000, 3000)
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data, max_pixels=1_000_000)
    assert ei.value.reason == "decompression_bomb"
    assert "max_pixels" in ei.value.message
    real = enc(photo("coffee", 1500), quality=80)  # 1500x1000
    assert analyse_bytes(real, max_pixels=1_000_000)["error_reason"] == "decompression_bomb"
    assert analyse_bytes(real, max_pixels=1_500_000)["status"] == "ok"


def test_error_is_picklable_and_analyse_never_raises():
    e = pickle.loads(pickle.dumps(ImageDecodeError("truncated", "boom")))
    assert (e.reason, e.message, str(e)) == ("truncated", "boom", "truncated: boom")
    for weird in (None, bytearray(b"\x89PNG"), memoryview(b"abc"), b"\xff\xd8\xff"):
        row = analyse_bytes(weird)
        assert row["status"] == "error" and set(row) == set(ROW_KEYS)


# --------------------------------------------------------------------------- #
# EXIF orientation
# --------------------------------------------------------------------------- #
def _with_orientation(stored: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {}
    return enc(stored, fmt, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    stored = photo("chelsea")[:200, :300]
    data = _with_orientation(stored, orientation)
    img = decode_image(data)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(img.rgb, ref)
    assert (img.width, img.height) == ((200, 300) if orientation >= 5 else (300, 200))


def test_exif_orientation_6_same_hash_as_rotated(big_photos):
    display = big_photos["coffee"]  # 1100 x 733 landscape as displayed
    stored = np.ascontiguousarray(np.rot90(display, 1))  # camera stored it rotated (portrait)
    data = _with_orientation(stored, 6)
    img = decode_image(data)
    assert (img.width, img.height) == (display.shape[1], display.shape[0])
    assert img.rgb.shape[1] > img.rgb.shape[0]
    plain = enc(display, quality=95)
    assert hamming(hash_of(data), hash_of(plain)) <= 6
    assert np.abs(img.rgb.astype(int) - decode_image(plain).rgb.astype(int)).mean() < 3.0
    row = analyse_bytes(data)
    assert (row["width"], row["height"]) == (1100, 733)


# --------------------------------------------------------------------------- #
# hashing
# --------------------------------------------------------------------------- #
def test_dihedral_definitions():
    x = np.arange(12).reshape(3, 4)
    assert np.array_equal(apply_dihedral(x, DIHEDRAL_NAMES.index("rot90")), np.rot90(x, 1))
    assert np.array_equal(apply_dihedral(x, DIHEDRAL_NAMES.index("transpose")), x.T)
    assert np.array_equal(apply_dihedral(x, DIHEDRAL_NAMES.index("transverse")), np.rot90(np.fliplr(x), -1))
    pil = {
        1: Image.Transpose.FLIP_LEFT_RIGHT,
        2: Image.Transpose.ROTATE_90,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.ROTATE_270,
        5: Image.Transpose.FLIP_TOP_BOTTOM,
        6: Image.Transpose.TRANSPOSE,
        7: Image.Transpose.TRANSVERSE,
    }
    xi = Image.fromarray(x.astype(np.uint8))
    for k, op in pil.items():
        assert np.array_equal(apply_dihedral(x, k), np.asarray(xi.transpose(op))), DIHEDRAL_NAMES[k]
    outs = {apply_dihedral(x, k).tobytes() + bytes(apply_dihedral(x, k).shape) for k in range(8)}
    assert len(outs) == 8
    for k in range(8):
        assert np.array_equal(apply_dihedral(apply_dihedral(x, k), invert_dihedral(k)), x)
        assert compose_dihedral(k, invert_dihedral(k)) == 0
    with pytest.raises(ValueError):
        apply_dihedral(x, 8)


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket", "text", "page", "horse"])
def test_hash_variants_equal_slow_way(name):
    a = getattr(skdata, name)()
    g = a if a.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(a[..., :3]), cv2.COLOR_RGB2GRAY)
    g = (g.astype(np.uint8) * 255) if g.dtype == bool else g
    assert g.shape[0] != g.shape[1]
    for gray in (g, g[:, : g.shape[1] - 37], cv2.resize(g, (517, 283), interpolation=cv2.INTER_AREA)):
        fast = hash_variants(gray)
        slow = [wavelet_hash(apply_dihedral(gray, k)) for k in range(8)]
        slow_contig = [wavelet_hash(np.ascontiguousarray(apply_dihedral(gray, k))) for k in range(8)]
        assert fast == slow == slow_contig
        assert all(0 <= h < 2**64 for h in fast)


def test_hash_variants_exact_on_flat_and_random_images():
    rng = np.random.default_rng(3)
    imgs = [
        np.full((37, 91), 200, np.uint8),  # all ties
        np.pad(np.full((30, 50), 255, np.uint8), ((40, 10), (5, 80))),  # many ties
        rng.integers(0, 256, (123, 77), dtype=np.uint8),
        rng.random((50, 130)).astype(np.float32) * 255,
        rng.integers(0, 256, (5, 9), dtype=np.uint8),  # smaller than 64
    ]
    for g in imgs:
        assert hash_variants(g) == [wavelet_hash(apply_dihedral(g, k)) for k in range(8)]


def test_wavelet_hash_matches_cv2_pywt_reference():
    """Same bits as the textbook INTER_AREA + pywt haar level-3 definition."""
    for name in ("astronaut", "coffee", "camera", "rocket"):
        a = getattr(skdata, name)()
        g = a if a.ndim == 2 else cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
        x = cv2.resize(g.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
        ca = pywt.wavedec2(x, "haar", level=3)[0]
        bits = (ca > np.median(ca)).ravel()
        ref = int("".join("1" if b else "0" for b in bits), 2)
        assert hamming(wavelet_hash(g), ref) <= 1


def test_hash_of_transformed_copies(big_photos):
    for name in ("astronaut", "coffee", "chelsea"):
        a = big_photos[name]
        variants = hash_variants(gray_of(enc(a, quality=95)))
        for k in range(1, 8):
            copy = enc(np.ascontiguousarray(apply_dihedral(a, k)), quality=90)
            h = hash_of(copy)
            assert hamming(h, variants[k]) <= 4, (name, DIHEDRAL_NAMES[k])
            # and a transformed copy is *not* close to the untransformed hash (for these photos)
        assert hamming(hash_of(enc(a[:, ::-1].copy(), quality=90)), variants[0]) > 10


def test_hash_robust_to_resize_and_recompression(big_photos):
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        a = big_photos[name]
        h0 = hash_of(enc(a, quality=95))
        h, w = a.shape[:2]
        copies = [
            enc(resize_to(a, (h // 2, w // 2)), quality=85),
            enc(resize_to(a, (h // 4, w // 4)), quality=75),
            enc(a, quality=30),
            enc(a, "PNG"),
            enc(a, "WEBP", quality=70),
            enc(np.asarray(Image.fromarray(a).convert("L")), quality=90),
        ]
        for c in copies:
            assert hamming(hash_of(c), h0) <= 6, name


def test_different_photos_hash_far_apart(big_photos):
    hashes = {n: hash_of(enc(a, quality=95)) for n, a in big_photos.items()}
    names = list(hashes)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert hamming(hashes[x], hashes[y]) >= 16, (x, y)


def test_signed64_roundtrip():
    for h in (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0xDEADBEEFCAFEBABE):
        s = to_signed64(h)
        assert -(2**63) <= s < 2**63
        assert from_signed64(s) == h
        assert hamming(s, h) == 0
    assert hamming(0, 2**64 - 1) == 64 and hamming(to_signed64(2**64 - 1), 0) == 64


# --------------------------------------------------------------------------- #
# quality
# --------------------------------------------------------------------------- #
def _degraded(a: np.ndarray) -> dict[str, bytes]:
    rng = np.random.default_rng(42)
    f = a.astype(np.float32)
    h, w = a.shape[:2]
    return {
        "gaussian_blur_sigma3": enc(cv2.GaussianBlur(a, (0, 0), 3), quality=95),
        "jpeg_q15": enc(a, quality=15),
        "downscaled_25pct": enc(
            np.asarray(Image.fromarray(a).resize((w // 4, h // 4), Image.Resampling.LANCZOS)), quality=95
        ),
        "over_exposed_plus80": enc(np.clip(f + 80, 0, 255).astype(np.uint8), quality=95),
        "under_exposed_x0.3": enc(np.clip(f * 0.3, 0, 255).astype(np.uint8), quality=95),
        "gaussian_noise_sigma20": enc(np.clip(f + rng.normal(0, 20, f.shape), 0, 255).astype(np.uint8), quality=95),
    }


def test_quality_weights():
    assert set(QUALITY_WEIGHTS) == set(QUALITY_COMPONENTS)
    assert sum(QUALITY_WEIGHTS.values()) == pytest.approx(1.0)
    assert quality_score(dict.fromkeys(QUALITY_COMPONENTS, 100.0)) == 100.0
    assert quality_score(dict.fromkeys(QUALITY_COMPONENTS, 0.0)) == 0.0


@pytest.mark.parametrize("name", PHOTOS)
def test_quality_degradations_rank_lower(name, big_photos, originals):
    orig = analyse_bytes(originals[name])
    assert orig["status"] == "ok"
    for k in QUALITY_COMPONENTS:
        assert 0.0 <= orig[k] <= 100.0
    failures = []
    for label, data in _degraded(big_photos[name]).items():
        row = analyse_bytes(data)
        assert row["status"] == "ok"
        if not row["quality_score"] < orig["quality_score"]:
            failures.append((label, row["quality_score"], orig["quality_score"]))
    assert not failures, f"{name}: degraded copies not ranked lower: {failures}"


def test_quality_component_directions(big_photos):
    a = big_photos["astronaut"]
    d = _degraded(a)
    comps = {}
    for label, data in {"orig": enc(a, quality=95), **d}.items():
        img = decode_image(data)
        comps[label] = quality_components(img.rgb, img.width, img.height, img.jpeg_quality)
    o = comps["orig"]
    assert comps["gaussian_blur_sigma3"]["q_sharpness"] < o["q_sharpness"] - 20
    assert comps["jpeg_q15"]["q_compression"] < o["q_compression"] - 50
    assert comps["downscaled_25pct"]["q_resolution"] < o["q_resolution"] - 20
    assert comps["over_exposed_plus80"]["q_exposure"] < o["q_exposure"] - 30
    assert comps["under_exposed_x0.3"]["q_exposure"] < o["q_exposure"] - 30
    assert comps["gaussian_noise_sigma20"]["q_noise"] < o["q_noise"] - 15
    # PNG re-save of a heavily compressed JPEG: blockiness is seen at native size
    small = photo("astronaut")
    q15_png = enc(Image.open(io.BytesIO(enc(small, quality=15))).convert("RGB"), "PNG")
    img = decode_image(q15_png)
    c = quality_components(img.rgb, img.width, img.height, img.jpeg_quality)
    img = decode_image(enc(small, "PNG"))
    c0 = quality_components(img.rgb, img.width, img.height, img.jpeg_quality)
    assert c["q_compression"] < c0["q_compression"] - 30


# --------------------------------------------------------------------------- #
# colour
# --------------------------------------------------------------------------- #
def _sig(data: bytes) -> ColorSignature:
    return color_signature(decode_image(data).rgb)


def _hue_shift(a: np.ndarray, degrees: float) -> np.ndarray:
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(degrees * 256 / 360))) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def test_color_signature_fields_and_roundtrip(big_photos):
    sig = _sig(enc(big_photos["coffee"], quality=95))
    assert sig.hist.dtype == np.float32 and sig.hist.shape == (HIST_SIZE,)
    assert sig.hist.sum() == pytest.approx(1.0, abs=1e-5)
    assert sig.thumb.shape == (16, 16, 3) and sig.thumb.dtype == np.uint8
    assert 1 <= len(sig.dominant) <= 3 and all(len(c) == 7 and c.startswith("#") for c in sig.dominant)
    assert not sig.is_gray
    hist_b, thumb_b = sig.to_bytes()
    assert len(hist_b) == HIST_SIZE * 2 and len(thumb_b) == 16 * 16 * 3
    back = ColorSignature.from_bytes(hist_b, thumb_b, ",".join(sig.dominant), sig.is_gray)
    assert np.array_equal(back.thumb, sig.thumb)
    assert np.allclose(back.hist, sig.hist, atol=1e-3)
    assert back.dominant == sig.dominant and back.is_gray == sig.is_gray
    assert color_similarity(back, sig) > 0.99
    # dominant colours of a two-colour image
    two = np.zeros((100, 100, 3), np.uint8)
    two[:, :70] = (250, 10, 10)
    two[:, 70:] = (10, 10, 250)
    s2 = color_signature(two)
    assert len(s2.dominant) == 2
    got = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in s2.dominant]
    for g, e in zip(got, [(250, 10, 10), (10, 10, 250)]):
        assert max(abs(x - y) for x, y in zip(g, e)) <= 3, s2.dominant


def test_is_gray_detection(big_photos):
    a = big_photos["astronaut"]
    assert _sig(enc(np.asarray(Image.fromarray(a).convert("L")), quality=80)).is_gray
    assert _sig(enc(np.stack([cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)] * 3, -1), quality=70)).is_gray
    assert _sig(enc(Image.fromarray(a).convert("1"), "PNG")).is_gray
    assert not _sig(enc(a, quality=95)).is_gray
    assert not _sig(enc(big_photos["chelsea"], quality=95)).is_gray


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_color_similarity_copies_high(name, big_photos):
    a = big_photos[name]
    h, w = a.shape[:2]
    o = _sig(enc(a, quality=95))
    copies = {
        "resized": (_sig(enc(resize_to(a, (h // 3, w // 3)), quality=80)), 0),
        "recompressed": (_sig(enc(a, quality=35)), 0),
        "png": (_sig(enc(a, "PNG")), 0),
        "grayscale": (_sig(enc(np.asarray(Image.fromarray(a).convert("L")), quality=90)), 0),
        "mirrored": (_sig(enc(a[:, ::-1].copy(), quality=90)), 1),
        "rot90": (_sig(enc(np.rot90(a).copy(), quality=90)), 2),
    }
    for label, (s, t) in copies.items():
        sim = color_similarity(o, s, transform=t)
        assert -1.0 <= sim <= 1.0
        assert sim >= 0.85, (name, label, sim)
    assert histogram_correlation(o, copies["recompressed"][0]) > 0.95
    plain = color_similarity(o, copies["recompressed"][0])
    hue = color_similarity(o, _sig(enc(_hue_shift(a, 120), quality=95)))
    assert hue < plain - 0.2, (name, hue, plain)
    # mirrored copy without the transform is less similar than with it
    assert color_similarity(o, copies["mirrored"][0], 0) < color_similarity(o, copies["mirrored"][0], 1)


def test_color_similarity_different_photos_low(big_photos):
    sigs = {n: _sig(enc(a, quality=95)) for n, a in big_photos.items()}
    names = list(sigs)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert color_similarity(sigs[x], sigs[y]) < 0.5, (x, y)


# --------------------------------------------------------------------------- #
# analyse_bytes
# --------------------------------------------------------------------------- #
def test_analyse_row_ok(originals):
    data = originals["coffee"]
    row = analyse_bytes(data)
    assert tuple(row) == ROW_KEYS
    assert row["status"] == "ok" and row["error_reason"] is None and row["error_message"] is None
    import xxhash

    assert row["content_hash"] == xxhash.xxh3_128(data).hexdigest()
    assert row["file_size"] == len(data)
    assert (row["format"], row["mode"], row["width"], row["height"]) == ("JPEG", "RGB", 1100, 733)
    assert row["has_alpha"] is False
    assert isinstance(row["whash"], int) and -(2**63) <= row["whash"] < 2**63
    assert len(row["hash_variants"]) == 8 and row["hash_variants"][0] == row["whash"]
    reduced = decode_image(data, target_side=DEFAULT_TARGET_SIDE, exact=False)
    assert DEFAULT_TARGET_SIDE <= max(reduced.rgb.shape[:2]) < 2 * DEFAULT_TARGET_SIDE
    assert [from_signed64(v) for v in row["hash_variants"]] == hash_variants(analysis_gray(reduced.rgb))
    assert hamming(row["whash"], hash_of(data)) <= 4  # ~ the hash of the exact 512 px decode
    assert 0 <= row["quality_score"] <= 100
    comps = {k: row[k] for k in QUALITY_COMPONENTS}
    assert quality_score(comps) == row["quality_score"]
    assert isinstance(row["color_hist"], bytes) and isinstance(row["color_thumb"], bytes)
    assert row["dominant_colors"].count("#") >= 1 and row["is_gray"] is False
    sig = ColorSignature.from_bytes(row["color_hist"], row["color_thumb"], row["dominant_colors"], row["is_gray"])
    assert color_similarity(sig, color_signature(reduced.rgb)) > 0.999
    assert color_similarity(sig, color_signature(decode_image(data).rgb)) > 0.97
