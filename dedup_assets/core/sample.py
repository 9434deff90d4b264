"""A sample collection built from the photos that scikit-image ships, plus edited copies.

Used by ``dedup-assets demo`` and by the tests: it needs no network and no data set outside
the installed packages. A ``ground_truth.json`` (the benchmark format) is written beside the
images: ``groups`` are the copies of one picture, ``unreadable`` the corrupt files.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

#: modification time of the originals (2024-01-01 UTC); every other file is a day younger
ORIGINALS_MTIME = 1_704_067_200

#: scikit-image photos that are distinct pictures (loaded from the installed package).
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "coins",
)


def load_photo(name: str) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        return Image.fromarray(arr).convert("L")
    return Image.fromarray(arr[..., :3]).convert("RGB")


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _crop(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * frac), int(h * frac)
    return img.crop((dx, dy, w - dx, h - dy))


def _recolour(img: Image.Image) -> Image.Image:
    arr = np.asarray(img.convert("RGB")).astype(np.float32)
    arr *= np.array([1.08, 1.0, 0.9], dtype=np.float32)  # warmer white balance
    warm = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return ImageEnhance.Color(warm).enhance(1.25)


def make_sample_collection(dest: str | Path) -> dict:
    """Write the sample collection into ``dest`` (created) and return its ground truth."""
    dest = Path(dest)
    files: dict[str, bytes] = {}
    groups: list[list[str]] = []

    for name in PHOTOS:
        files[f"originals/{name}.jpg"] = _jpeg(load_photo(name))

    astro = load_photo("astronaut")
    files["edits/astronaut_small.png"] = _encode(
        astro.resize((astro.width // 2, astro.height // 2), Image.LANCZOS), "PNG"
    )
    files["edits/astronaut_q30.jpg"] = _jpeg(astro, quality=30)
    files["edits/astronaut_mirror.jpg"] = _jpeg(ImageOps.mirror(astro))
    files["edits/astronaut_gray.jpg"] = _jpeg(astro.convert("L"))
    files["backup/2024/originals/astronaut.jpg"] = files["originals/astronaut.jpg"]
    groups.append(
        [
            "originals/astronaut.jpg",
            "edits/astronaut_small.png",
            "edits/astronaut_q30.jpg",
            "edits/astronaut_mirror.jpg",
            "edits/astronaut_gray.jpg",
            "backup/2024/originals/astronaut.jpg",
        ]
    )

    coffee = load_photo("coffee")
    files["edits/coffee_crop.jpg"] = _jpeg(_crop(coffee, 0.04))
    files["edits/coffee_warm.jpg"] = _jpeg(_recolour(coffee))
    files["edits/coffee_rot90.jpg"] = _jpeg(coffee.transpose(Image.Transpose.ROTATE_90))
    groups.append(
        [
            "originals/coffee.jpg",
            "edits/coffee_crop.jpg",
            "edits/coffee_warm.jpg",
            "edits/coffee_rot90.jpg",
        ]
    )

    cat = load_photo("chelsea")
    thumb = cat.copy()
    thumb.thumbnail((160, 160), Image.LANCZOS)
    files["thumbs/chelsea.jpg"] = _jpeg(thumb, quality=85)
    files["backup/2024/chelsea.jpg"] = files["originals/chelsea.jpg"]
    groups.append(["originals/chelsea.jpg", "thumbs/chelsea.jpg", "backup/2024/chelsea.jpg"])

    rocket = load_photo("rocket")
    files["edits/rocket.webp"] = _encode(rocket, "WEBP", quality=80)
    files["edits/rocket_bright.jpg"] = _jpeg(ImageEnhance.Brightness(rocket).enhance(1.15))
    groups.append(["originals/rocket.jpg", "edits/rocket.webp", "edits/rocket_bright.jpg"])

    hubble = files["originals/hubble_deep_field.jpg"]
    files["broken/truncated.jpg"] = hubble[: len(hubble) // 3]
    files["broken/empty.png"] = b""
    files["notes/readme.txt"] = b"not an image: excluded from the inventory\n"

    for rel, data in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        # the originals were there first: edits, thumbnails and backups a day later
        mtime = ORIGINALS_MTIME + (0 if rel.startswith("originals/") else 86_400)
        os.utime(path, (mtime, mtime))
    truth = {
        "dataset": "dedup-assets-sample",
        "groups": groups,
        "unreadable": ["broken/empty.png", "broken/truncated.jpg"],
        "ambiguous": [],
        "originals": [g[0] for g in groups],
        "equivalent": [  # copies equal in content to the original (a keeper as good as it)
            ["edits/astronaut_mirror.jpg", "backup/2024/originals/astronaut.jpg"],
            ["edits/coffee_rot90.jpg"],
            ["backup/2024/chelsea.jpg"],
            [],
        ],
        "notes": {"source": "scikit-image sample photos; edits generated by dedup_assets.core.sample"},
    }
    (dest / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth
