"""Stage-1 per-image analysis: bytes -> one flat row (decode once, derive everything).

One reduced decode (JPEG DCT scaling, integer-factor reductions only: long side in
``[target_side, 2 * target_side)``), then one gray image at the fixed quality scale
(``quality.WORK_SIDE``) from which both the hash and the quality components are
computed, and a colour signature from a small copy of the colour image.

``analyse_bytes`` never raises: any failure becomes ``status="error"`` with an
``error_reason`` code (see ``decode.ERROR_REASONS``; unexpected failures after a
successful decode are reported as ``"decode_failed"`` with an
``"analysis failed: ..."`` message).
"""

from __future__ import annotations

import cv2
import numpy as np

from .color import color_signature
from .content import content_hash
from .decode import ImageDecodeError, decode_image
from .hashing import hash_variants, to_signed64
from .quality import QUALITY_COMPONENTS, quality_components, quality_score, working_gray

__all__ = ["DEFAULT_TARGET_SIDE", "ROW_KEYS", "ROW_VERSION", "analyse_bytes", "analysis_gray", "empty_row"]

#: long side (px) of the reduced decode of stage 1 (>= quality.WORK_SIDE)
DEFAULT_TARGET_SIDE = 256

#: Version of the row (its keys and what they mean): bump on a change, and every shard
#: analysed by another version is stale (re-analysed by the next run). 2: XXH3 content_hash.
ROW_VERSION = 2

ROW_KEYS = (
    "status",
    "error_reason",
    "error_message",
    "content_hash",
    "file_size",
    "format",
    "mode",
    "width",
    "height",
    "has_alpha",
    "whash",
    "hash_variants",
    "quality_score",
    *QUALITY_COMPONENTS,
    "color_hist",
    "color_thumb",
    "dominant_colors",
    "is_gray",
)


def empty_row() -> dict:
    """A row with every key present and set to ``None``."""
    return dict.fromkeys(ROW_KEYS)


def analysis_gray(rgb: np.ndarray) -> np.ndarray:
    """The gray image (long side <= ``quality.WORK_SIDE``) that stage 1 hashes and scores."""
    return working_gray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def analyse_bytes(
    data: bytes, target_side: int = DEFAULT_TARGET_SIDE, max_pixels: int = 150_000_000
) -> dict:
    """Analyse one image file's bytes and return the flat row dict (keys: ``ROW_KEYS``).

    ``whash``/``hash_variants`` are signed int64 (``hashing.to_signed64``) of
    ``analysis_gray(decode_image(data, target_side, exact=False).rgb)``;
    ``hash_variants[k]`` is the hash of the image transformed by dihedral ``k``.
    """
    row = empty_row()
    try:
        data = b"" if data is None else bytes(data)
    except Exception as exc:  # noqa: BLE001 - never raise
        row.update(status="error", error_reason="decode_failed", error_message=f"bad input: {exc}")
        return row
    row["content_hash"] = content_hash(data)
    row["file_size"] = len(data)

    try:
        img = decode_image(data, target_side=target_side, max_pixels=max_pixels, exact=False)
    except ImageDecodeError as exc:
        row.update(status="error", error_reason=exc.reason, error_message=exc.message)
        return row
    except Exception as exc:  # noqa: BLE001 - never raise
        row.update(status="error", error_reason="decode_failed", error_message=f"{type(exc).__name__}: {exc}")
        return row

    row.update(
        format=img.format,
        mode=img.mode,
        width=img.width,
        height=img.height,
        has_alpha=img.has_alpha,
    )
    try:
        gray = cv2.cvtColor(img.rgb, cv2.COLOR_RGB2GRAY)
        work = working_gray(gray)
        variants = [to_signed64(h) for h in hash_variants(work)]
        comps = quality_components(gray, img.width, img.height, img.jpeg_quality, img.lossy, work=work)
        sig = color_signature(img.rgb)
        hist_b, thumb_b = sig.to_bytes()
    except Exception as exc:  # noqa: BLE001 - never raise
        row.update(
            status="error", error_reason="decode_failed", error_message=f"analysis failed: {type(exc).__name__}: {exc}"
        )
        return row

    row.update(
        status="ok",
        whash=variants[0],
        hash_variants=variants,
        quality_score=quality_score(comps),
        color_hist=hist_b,
        color_thumb=thumb_b,
        dominant_colors=",".join(sig.dominant),
        is_gray=sig.is_gray,
        **{k: float(comps[k]) for k in QUALITY_COMPONENTS},
    )
    return row


def _self_timing() -> None:  # pragma: no cover - manual benchmark
    """``python -m dedup_assets.core.analyse``: decode vs analyse time for a 12 MP JPEG."""
    import io
    import time

    from PIL import Image
    from skimage import data as skdata

    big = Image.fromarray(skdata.astronaut()).resize((4000, 3000), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()

    def once(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000

    def bench(fn, n=30):  # median: robust to other load on the machine
        fn()
        return sorted(once(fn) for _ in range(n))[n // 2]

    dec, ana = [], []
    for _ in range(40):  # interleaved so both see the same machine load
        dec.append(once(lambda: decode_image(jpeg)))
        ana.append(once(lambda: analyse_bytes(jpeg)))
    t_dec, t_all = sorted(dec)[20], sorted(ana)[20]
    print(f"12 MP JPEG ({len(jpeg) / 1e6:.2f} MB, q90): decode_image {t_dec:.1f} ms, "
          f"analyse_bytes {t_all:.1f} ms (+{t_all - t_dec:.1f} ms) [medians]")
    img = decode_image(jpeg)
    gray = cv2.cvtColor(img.rgb, cv2.COLOR_RGB2GRAY)
    print(f"  content hash {bench(lambda: content_hash(jpeg)):.2f} ms, "
          f"hash_variants {bench(lambda: hash_variants(gray)):.2f} ms, "
          f"quality {bench(lambda: quality_components(img.rgb, img.width, img.height, img.jpeg_quality)):.2f} ms, "
          f"color {bench(lambda: color_signature(img.rgb)):.2f} ms")


if __name__ == "__main__":  # pragma: no cover
    _self_timing()
