"""``dedup-assets bench devset``: make a dev set of edited copies with ``ground_truth.json``.

From a folder of distinct originals (by default ``../shared/datasets/food-originals``) it picks
``--originals`` photos and writes each with ``--copies`` edited copies (a group), plus
``--distractors`` further originals left unedited (unique images: hard negatives, since many
food photos share one layout). Files under ``byte-identical`` groups of the source's own ground
truth are left out. The choice and the edits are deterministic for a seed.

Edits (one or two per copy, drawn per copy; see ``EDITS``):

- ``crop``: keep 78-92 % of width and height at a random offset;
- ``mirror``: horizontal flip;
- ``rotate90``: 90, 180 or 270 degrees;
- ``tilt``: rotation by 2-6 degrees, black corners, same canvas;
- ``letterbox``: padded to 16:9 or 1:1 with black or white bars;
- ``caption``: a text band over the bottom 12-18 % (random words);
- ``recolour``: hue rotation, saturation x0.3-1.8, grayscale or sepia;
- ``recompress``: JPEG quality 18-40;
- ``resize``: down to 35-70 % (also as WebP or PNG for some copies);
- ``upscale``: up to 150-250 % (a copy with more pixels and no more detail);
- ``resave``: the original's pixels saved as PNG (lossless: equal in content).

``--source skimage`` takes the originals from the photos scikit-image ships (no data set needed:
whole photos, or their halves with ``--split halves``; photos over 700 px in quadrants).
``ground_truth.json`` records ``originals`` (per group, the unedited file) and ``equivalent``
(per group, the copies equal in content to it: mirror, rotation, lossless re-save), which
``bench accuracy`` uses to score the keeper of each group.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from ..core.text import help_text

DEFAULT_SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "food-originals"
WORDS = "fresh daily special menu chef taste lunch dinner recipe kitchen market organic".split()


def crop(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    fw, fh = rng.uniform(0.78, 0.92), rng.uniform(0.78, 0.92)
    cw, ch = int(w * fw), int(h * fh)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def mirror(im: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(im)


def rotate90(im: Image.Image, rng: random.Random) -> Image.Image:
    return im.rotate(rng.choice([90, 180, 270]), expand=True)


def tilt(im: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.uniform(2, 6) * rng.choice([-1, 1])
    return im.rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def letterbox(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    ratio = rng.choice([16 / 9, 1.0])
    if w / h < ratio:
        size = (int(round(h * ratio)), h)
    else:
        size = (w, int(round(w / ratio)))
        if size[1] <= h:  # already wider than 16:9: pad top and bottom to 1:1 instead
            size = (w, w)
    colour = rng.choice([(0, 0, 0), (255, 255, 255)])
    canvas = Image.new("RGB", size, colour)
    canvas.paste(im, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


def caption(im: Image.Image, rng: random.Random) -> Image.Image:
    im = im.copy()
    w, h = im.size
    band = int(h * rng.uniform(0.12, 0.18))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, h - band, w, h), fill=(20, 20, 20))
    text = " ".join(rng.sample(WORDS, 3)).upper()
    try:
        font = ImageFont.load_default(size=max(10, int(band * 0.55)))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((int(w * 0.05), h - band + band // 5), text, fill=(255, 255, 255), font=font)
    return im


def recolour(im: Image.Image, rng: random.Random) -> Image.Image:
    kind = rng.choice(["hue", "saturation", "gray", "sepia"])
    if kind == "gray":
        return ImageOps.grayscale(im).convert("RGB")
    if kind == "sepia":
        g = np.asarray(ImageOps.grayscale(im), dtype=np.float32)
        tone = np.stack([g * 1.07, g * 0.74, g * 0.43], axis=-1) + np.array([20, 10, 0])
        return Image.fromarray(np.clip(tone, 0, 255).astype(np.uint8))
    if kind == "saturation":
        return ImageEnhance.Color(im).enhance(rng.choice([rng.uniform(0.3, 0.6), rng.uniform(1.4, 1.8)]))
    hsv = np.asarray(im.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + rng.randint(25, 70)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def resize(im: Image.Image, rng: random.Random) -> Image.Image:
    f = rng.uniform(0.35, 0.7)
    return im.resize((max(1, int(im.width * f)), max(1, int(im.height * f))), Image.LANCZOS)


def upscale(im: Image.Image, rng: random.Random) -> Image.Image:
    f = rng.uniform(1.5, 2.5)
    return im.resize((int(im.width * f), int(im.height * f)), Image.BICUBIC)


def resave(im: Image.Image, rng: random.Random) -> Image.Image:
    return im  # saved as PNG (see _save)


#: edits that leave a copy equal in content to its original
EQUAL_CONTENT = frozenset({"mirror", "rotate90", "resave"})


def recompress(im: Image.Image, rng: random.Random) -> Image.Image:
    return im  # the quality is applied when saving (see _save)


EDITS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "crop": crop,
    "mirror": mirror,
    "rotate90": rotate90,
    "tilt": tilt,
    "letterbox": letterbox,
    "caption": caption,
    "recolour": recolour,
    "recompress": recompress,
    "resize": resize,
    "upscale": upscale,
    "resave": resave,
}
# second edits stacked on some copies: the ones a re-share typically adds
FOLLOW_UPS = ["resize", "recompress", "recolour", "mirror"]


def _save(im: Image.Image, path: Path, edits: list[str], rng: random.Random) -> Path:
    if edits == ["resave"]:
        path = path.with_suffix(".png")
        im.save(path, "PNG")
    elif "recompress" in edits:
        path = path.with_suffix(".jpg")
        im.save(path, "JPEG", quality=rng.randint(18, 40))
    elif "resize" in edits and rng.random() < 0.4:
        fmt = rng.choice(["WEBP", "PNG"])
        path = path.with_suffix("." + fmt.lower())
        im.save(path, fmt, **({"quality": 80} if fmt == "WEBP" else {}))
    else:
        path = path.with_suffix(".jpg")
        im.save(path, "JPEG", quality=rng.randint(80, 95))
    return path


def make_devset(
    source: Path, out: Path, originals: int, copies: int, distractors: int, seed: int
) -> dict:
    truth_path = source / "ground_truth.json"
    skip = set()
    if truth_path.exists():
        skip = {p for g in json.loads(truth_path.read_text()).get("groups", []) for p in g}
    files = sorted(
        p for p in source.rglob("*")
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and str(p.relative_to(source)) not in skip
    )
    rng = random.Random(seed)
    chosen = rng.sample(files, min(len(files), originals + distractors))
    out.mkdir(parents=True, exist_ok=True)
    groups, edits_used, equivalent = [], {}, []
    kinds = list(EDITS)
    for n, src in enumerate(chosen[:originals]):
        im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
        stem = f"g{n:04d}"
        orig = out / "originals" / f"{stem}.jpg"
        orig.parent.mkdir(parents=True, exist_ok=True)
        im.save(orig, "JPEG", quality=95)
        group = [str(orig.relative_to(out))]
        for c, kind in enumerate(rng.sample(kinds, copies)):
            edits = [kind]
            if kind != "resave" and rng.random() < 0.35:
                edits.append(rng.choice([k for k in FOLLOW_UPS if k != kind]))
            edited = im
            for e in edits:
                edited = EDITS[e](edited, rng)
            dest = _save(edited, out / "copies" / f"{stem}_{c}_{'+'.join(edits)}", edits, rng)
            group.append(str(dest.relative_to(out)))
            edits_used[group[-1]] = edits
        groups.append(group)
        equivalent.append([p for p in group[1:] if set(edits_used[p]) <= EQUAL_CONTENT])
    for n, src in enumerate(chosen[originals:]):
        dest = out / "distractors" / f"d{n:04d}{src.suffix.lower()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    truth = {
        "dataset": out.name,
        "source": str(source),
        "seed": seed,
        "groups": groups,
        "unreadable": [],
        "ambiguous": [],
        "edits": edits_used,
        "originals": [g[0] for g in groups],
        "equivalent": equivalent,
        "notes": {"edits": "see dedup_assets/bench/devset.py"},
    }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
    "camera", "coins", "moon", "brick", "clock", "cell",
)


def skimage_originals(dest: Path, split: str = "whole") -> Path:
    """Distinct originals from scikit-image's photos, as PNG files in ``dest``: each photo
    whole (``split="whole"``) or as its left and right halves (``"halves"``); photos over
    700 px in quadrants either way (pieces never overlap: no two are copies)."""
    from ..core.sample import load_photo

    dest.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_PHOTOS:
        im = load_photo(name).convert("RGB")
        w, h = im.size
        if max(w, h) > 700:
            boxes = [(x, y, x + w // 2, y + h // 2) for y in (0, h // 2) for x in (0, w // 2)]
        elif split == "halves":
            boxes = [(0, 0, w // 2, h), (w // 2, 0, w, h)]
        else:
            boxes = [(0, 0, w, h)]
        for n, box in enumerate(boxes):
            im.crop(box).save(dest / f"{name}_{n}.png")
    return dest


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dedup-assets bench devset", description=help_text(__doc__.split("\n")[0]))
    p.add_argument("out", type=Path, help="folder to write (images + ground_truth.json)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                   help="folder of distinct originals, or 'skimage' (scikit-image's photos)")
    p.add_argument("--split", choices=("whole", "halves"), default="whole",
                   help="with --source skimage: whole photos or their halves")
    p.add_argument("--originals", type=int, default=200)
    p.add_argument("--copies", type=int, default=2, help="edited copies per original")
    p.add_argument("--distractors", type=int, default=400)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="devset-originals-") as tmp:
        if str(args.source) == "skimage":
            args.source = skimage_originals(Path(tmp), args.split)
        if not args.source.is_dir():
            raise SystemExit(f"no originals at {args.source}")
        (args.out / "copies").mkdir(parents=True, exist_ok=True)
        truth = make_devset(args.source, args.out, args.originals, args.copies, args.distractors, args.seed)
    n = sum(len(g) for g in truth["groups"]) + args.distractors
    print(f"wrote {n} images ({len(truth['groups'])} groups) and ground_truth.json to {args.out}")
    return 0
