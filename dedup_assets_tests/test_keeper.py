"""The keeper rule (core/keeper.py) on real photos: each edited copy loses to its original.

Each copy is compared with its original as the pipeline does it: the local stage's relation
of the pair (``local_inliers(..., relations=)``) and stage 1's row of each file. Copies are
named so that they sort before the original (``a_…`` < ``original…``) and tie preferences are
off unless a test is about them: the content rules alone must pick the original.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup_assets.bench import devset
from dedup_assets.core.analyse import analyse_bytes
from dedup_assets.core.candidates import Pair
from dedup_assets.core.keeper import KeeperPreference, Member, Relation, choose_keeper
from dedup_assets.core.local_features import DEFAULT_MIN_INLIERS
from dedup_assets.core.sample import load_photo
from dedup_assets.core.store import LocalFolderStore
from dedup_assets.core.verify import RELATION_FIELDS, local_inliers

NO_TIE_PREFERENCE = KeeperPreference(prefer_folders=(), oldest_first=False)


def _save(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" and not kw else kw))
    return buf.getvalue()


def _copies() -> dict[str, tuple[str, bytes, bytes]]:
    """name -> (original path, original bytes, copy bytes)."""
    rng = random.Random(5)
    coffee, astro, cat = load_photo("coffee"), load_photo("astronaut"), load_photo("chelsea")
    small = astro.resize((256, 256), Image.LANCZOS)
    lossy = _save(coffee, quality=80)
    return {
        "upscale": ("original_small.jpg", _save(small), _save(small.resize((560, 560), Image.BICUBIC))),
        "downscale": ("original.jpg", _save(coffee), _save(coffee.resize((300, 200), Image.LANCZOS))),
        "crop": ("original.jpg", _save(coffee), _save(coffee.crop((40, 30, 560, 370)))),
        "crop_png": ("original.jpg", _save(coffee), _save(coffee.crop((40, 30, 560, 370)), "PNG")),
        "greyscale": ("original.jpg", _save(astro), _save(astro.convert("L"))),
        "letterbox": ("original.jpg", _save(cat), _save(devset.letterbox(cat, rng))),
        "tilt": ("original.jpg", _save(coffee), _save(devset.tilt(coffee, random.Random(2)))),
        "caption": ("original.jpg", _save(cat), _save(devset.caption(cat, rng))),
        "recompressed": ("original.jpg", _save(astro), _save(astro, quality=25)),
        "resave_png": ("originals/x.jpg", lossy, _save(Image.open(io.BytesIO(lossy)), "PNG")),
        "mirror": ("originals/x.jpg", _save(astro), _save(ImageOps.mirror(astro))),
    }


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """name -> (members [copy, original], {(0, 1): Relation}, inliers)."""
    root = tmp_path_factory.mktemp("keeper")
    paths, pairs = [], []
    for name, (orig, orig_bytes, copy_bytes) in _copies().items():
        for rel, data, mtime in ((f"{name}/a_copy", copy_bytes, 2_000_000), (f"{name}/{orig}", orig_bytes, 1_000_000)):
            f = root / "c" / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
            os.utime(f, (mtime, mtime))
            paths.append(rel)
        pairs.append(Pair(len(paths) - 2, len(paths) - 1, "global", -1, 1 if name == "mirror" else 0))
    relations = np.full((len(pairs), len(RELATION_FIELDS)), np.nan)
    inliers, _, _ = local_inliers(pairs, paths, LocalFolderStore(str(root)), "c", workers=1, relations=relations)
    out = {}
    for name, pair, n, rel in zip(_copies(), pairs, inliers, relations):
        members = []
        for i in (pair.a, pair.b):
            row = analyse_bytes((root / "c" / paths[i]).read_bytes())
            members.append(
                Member(paths[i], row["is_gray"], row["q_compression"], row["format"], (root / "c" / paths[i]).stat().st_mtime)
            )
        values = [None if np.isnan(v) else float(v) for v in rel]
        values[5:] = [None if v is None else bool(v) for v in values[5:]]
        out[name] = (members, {(0, 1): Relation(*values)}, int(n))
    return out


@pytest.mark.parametrize(
    "name, reason",
    [
        ("upscale", "the other is an upscale of it"),
        ("downscale", "larger than the other and not an upscale"),
        ("crop", "the other is a crop of it"),
        ("crop_png", "the other is a crop of it"),  # not kept for being lossless
        ("greyscale", "colour; the other is greyscale"),
        ("letterbox", "the other has an added border or caption band"),
        ("tilt", "the other is a crop of it"),  # its corners are lost (and black ones added)
        ("caption", "the other has an added border or caption band"),
        ("recompressed", "less compressed; the other is re-compressed"),
    ],
)
def test_the_original_is_kept_over_an_edited_copy(judged, name, reason):
    members, relations, inliers = judged[name]
    assert inliers >= DEFAULT_MIN_INLIERS  # a verified pair, as in the pipeline
    best, reasons = choose_keeper(members, relations, NO_TIE_PREFERENCE)
    assert members[best].path.split("/", 1)[1].startswith("original"), (name, relations, reasons)
    assert reasons[best] == reason
    assert reasons[1 - best]  # the copy says why it is not kept


def test_a_larger_copy_that_holds_more_detail_is_no_upscale(judged):
    """The downscale pair seen from the other side: the original is 2x larger and is kept
    because its detail is real (the detail profile), not because of its pixel count."""
    members, relations, _ = judged["downscale"]
    rel = relations[(0, 1)]
    assert rel.scale > 1.9 and rel.upscale_b is False
    members_up, relations_up, _ = judged["upscale"]
    assert relations_up[(0, 1)].scale < 0.5 and relations_up[(0, 1)].upscale_a is True


def test_copies_equal_in_content_are_ordered_by_the_preference(judged):
    """A mirror and a lossless re-save of a JPEG are equal in content to their original:
    the preference decides (folder, then oldest, then path); a PNG re-save is not preferred
    for being lossless."""
    for name in ("mirror", "resave_png"):
        members, relations, _ = judged[name]
        assert members[0].path.endswith("a_copy") and members[1].path.endswith("originals/x.jpg")
        best, reasons = choose_keeper(members, relations, NO_TIE_PREFERENCE)
        assert best == 0 and reasons[0] == "equal in content to the other; first by path"
        best, reasons = choose_keeper(members, relations, KeeperPreference(oldest_first=True))
        assert best == 1 and reasons[1] == "equal in content to the other; the oldest file"
        assert reasons[0] == "equal in content to the keeper, which is the oldest file"
        best, reasons = choose_keeper(members, relations, KeeperPreference(("originals",), oldest_first=False))
        assert best == 1 and reasons[1] == "equal in content to the other; in a preferred folder"


def test_relations_unknown_fall_back_to_the_preference():
    """Byte-identical pairs and analyst links carry no relation: the tie preference decides."""
    members = [Member("b/x.jpg", last_modified=5.0), Member("a/x.jpg", last_modified=9.0)]
    best, reasons = choose_keeper(members, {(0, 1): Relation()})
    assert best == 0 and reasons == ["equal in content to the other; the oldest file",
                                     "equal in content to the keeper, which is the oldest file"]
    assert choose_keeper(members, {}, NO_TIE_PREFERENCE)[0] == 1


def test_a_degenerate_homography_gives_no_relation():
    """RANSAC can return a homography that collapses the picture (scale 0): no relation, no
    division by zero (seen on a dev set)."""
    from dedup_assets.core.local_features import LocalFeatures
    from dedup_assets.core.verify import pair_relations

    gray = np.asarray(load_photo("camera"))
    view = (LocalFeatures.empty(), gray[:256, :256], (512, 512), (512, 512, np.ones(32, np.float32)))
    assert all(np.isnan(pair_relations(view, view, np.zeros((3, 3)))))
