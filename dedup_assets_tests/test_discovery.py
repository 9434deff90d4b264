"""Discovery of copies the hash misses: letterbox trimming, rotation-invariant descriptor,
embedding kNN, then keypoint verification — on real photos with generated edits."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from dedup_assets.core.borders import border_box, trim_uniform_borders
from dedup_assets.core.embeddings import DescriptorEmbedder
from dedup_assets.core.local_features import DEFAULT_MIN_INLIERS
from dedup_assets.core.rotation import rotation_descriptor
from dedup_assets.core.store import LocalFolderStore
from dedup_assets.core.verify import global_similarities, local_inliers


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _letterbox(im: Image.Image, colour=(0, 0, 0)) -> Image.Image:
    canvas = Image.new("RGB", (im.width, int(im.width * 1.4)), colour)
    canvas.paste(im, (0, (canvas.height - im.height) // 2))
    return canvas


def test_uniform_borders_are_trimmed_and_content_is_kept():
    im = _photo("astronaut")
    for colour in ((0, 0, 0), (255, 255, 255)):
        boxed = np.asarray(_letterbox(im, colour))
        top, bottom, left, right = border_box(boxed)
        pad = (boxed.shape[0] - im.height) // 2
        assert abs(top - pad) <= 2 and abs(boxed.shape[0] - bottom - pad) <= 2
        assert (left, right) == (0, boxed.shape[1])
    plain = np.asarray(im)
    assert trim_uniform_borders(plain).shape == plain.shape  # a photo loses nothing
    flat = np.full((50, 80, 3), 128, np.uint8)
    assert trim_uniform_borders(flat).shape == flat.shape  # never trimmed to nothing


def test_rotation_descriptor_is_rotation_and_mirror_invariant():
    im = _photo("astronaut")
    e = rotation_descriptor(np.asarray(im))
    for angle in (10, 30, 77):
        turned = np.asarray(im.rotate(angle, fillcolor=(0, 0, 0)))
        assert float(e @ rotation_descriptor(turned)) > 0.93
    assert float(e @ rotation_descriptor(np.asarray(im.transpose(Image.FLIP_LEFT_RIGHT)))) > 0.95
    for other in ("chelsea", "coffee", "rocket"):
        assert float(e @ rotation_descriptor(np.asarray(_photo(other)))) < 0.8


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    root = tmp_path_factory.mktemp("disc")
    src = root / "c"
    src.mkdir()
    astro = _photo("astronaut")
    files = {
        "astronaut.jpg": astro,
        "astronaut_turned30.jpg": astro.rotate(30, fillcolor=(0, 0, 0)),
        "astronaut_letterbox.jpg": _letterbox(astro.crop((20, 10, 500, 490))),
        "chelsea.jpg": _photo("chelsea"),
        "coffee.jpg": _photo("coffee"),
    }
    for name, im in files.items():
        im.save(src / name, quality=90)
    return LocalFolderStore(str(root), str(root / "out")), "c", sorted(files)


def test_discovery_finds_rotated_and_letterboxed_copies_and_keypoints_confirm(edited):
    store, collection, paths = edited
    hashes = np.zeros(len(paths), dtype=np.int64)
    res = global_similarities(
        [], paths, store, collection, DescriptorEmbedder(), hashes=hashes,
        discover_from=range(len(paths)), discover_k=4, discover_threshold=0.5,
        rotation_k=2, rotation_threshold=0.93, workers=1,
    )
    found = {(paths[p.a], paths[p.b]): p.source for p in res.found}
    assert ("astronaut.jpg", "astronaut_letterbox.jpg") in found
    assert found.get(("astronaut.jpg", "astronaut_turned30.jpg")) == "rotation"
    assert res.stats.images_read == len(paths)
    inliers, _, _ = local_inliers(res.found, paths, store, collection, workers=1)
    confirmed = {k for k, n in zip(found, inliers) if n >= DEFAULT_MIN_INLIERS}
    astro = {p for p in paths if p.startswith("astronaut")}
    assert {p for k in confirmed for p in k} == astro  # every copy joined, nothing else
    assert all(set(k) <= astro for k in confirmed)


def _cutout(photo: Image.Image, background: Image.Image) -> Image.Image:
    """``photo``'s centre (an ellipse over ~45 % of it) pasted onto ``background``."""
    from PIL import ImageDraw

    mask = Image.new("L", photo.size, 0)
    w, h = photo.size
    ImageDraw.Draw(mask).ellipse((w * 0.2, h * 0.12, w * 0.8, h * 0.88), fill=255)
    out = background.resize(photo.size).copy()
    out.paste(photo, (0, 0), mask)
    return out


def _caption(photo: Image.Image) -> Image.Image:
    from PIL import ImageDraw

    out = photo.copy()
    d = ImageDraw.Draw(out)
    band = int(photo.height * 0.14)
    d.rectangle((0, photo.height - band, photo.width, photo.height), fill=(250, 250, 250))
    for x in range(10, photo.width - 40, 46):
        d.text((x, photo.height - band + band // 3), "SALE", fill=(20, 20, 20))
    return out


def _edited_and_composites(tmp_path) -> list[str]:
    folder = tmp_path / "c"
    folder.mkdir()
    astro = _photo("astronaut")  # 512 x 512
    files = {
        "a.jpg": astro,
        "a_caption.jpg": _caption(astro),
        "a_crop_small.jpg": astro.crop((40, 30, 470, 440)).resize((330, 315)),
        "a_recolour.jpg": Image.fromarray(np.asarray(astro)[:, :, ::-1].copy()),
        "a_on_rocket.jpg": _cutout(astro, _photo("rocket")),
        "a_on_coffee_small.jpg": _cutout(astro, _photo("coffee")).resize((400, 400)),
    }
    for name, im in files.items():
        im.save(folder / name, quality=92)
    paths = sorted(files)
    return paths


def test_a_cutout_on_another_background_is_not_a_copy_but_edited_copies_are(tmp_path):
    """The overlap check: keypoints on a shared object are not enough when the rest of the
    overlapping picture disagrees; captions, recolouring and crops of one picture agree.
    Images smaller than the keypoint frame are included (their features are upscaled)."""
    from dedup_assets.core.candidates import Pair
    from dedup_assets.core.local_features import DEFAULT_MAX_DISAGREEMENT

    paths = _edited_and_composites(tmp_path)
    i = {p: n for n, p in enumerate(paths)}
    pairs = [Pair(i["a.jpg"], i[p], "global", -1, 0) for p in paths if p != "a.jpg"]
    inliers, disagreement, _ = local_inliers(pairs, paths, LocalFolderStore(str(tmp_path)), "c", workers=1)
    result = {paths[p.b]: (int(n), float(d)) for p, n, d in zip(pairs, inliers, disagreement)}
    for copy in ("a_caption.jpg", "a_crop_small.jpg", "a_recolour.jpg"):
        n, d = result[copy]
        assert n >= DEFAULT_MIN_INLIERS and d <= DEFAULT_MAX_DISAGREEMENT, (copy, result)
    for composite in ("a_on_rocket.jpg", "a_on_coffee_small.jpg"):
        n, d = result[composite]
        assert n >= DEFAULT_MIN_INLIERS, (composite, result)  # the shared object matches...
        assert d > DEFAULT_MAX_DISAGREEMENT, (composite, result)  # ...the pictures do not


def test_knn_index_is_exact_below_flat_max_and_ivf_above_finds_near_duplicates():
    import faiss

    from dedup_assets.core.verify import knn_index

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x[1500:1600] = x[:100] + 0.05 * rng.standard_normal((100, 64)).astype(np.float32)  # planted copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat = knn_index(x, flat_max=10_000)
    ivf = knn_index(x, flat_max=1_000)
    assert isinstance(flat, faiss.IndexFlatIP) and isinstance(ivf, faiss.IndexIVFFlat)
    assert ivf.nlist == min(int(4 * np.sqrt(len(x))), len(x) // 39) and ivf.nprobe == 16
    for index in (flat, ivf):
        sims, nn = index.search(x[:100], 2)
        assert (nn[:, 1] == np.arange(1500, 1600)).all() and (sims[:, 1] > 0.99).all()


def test_local_stage_memory_is_bounded_and_gives_the_same_answers(tmp_path):
    """With room for only 4 views the local stage reads some images again (counted) and
    returns exactly what it returns with everything in memory."""
    from dedup_assets.core.candidates import Pair
    from dedup_assets.core.verify import locality_order

    paths = _edited_and_composites(tmp_path)
    pairs = [Pair(a, b, "global", -1, t) for a in range(len(paths)) for b in range(a + 1, len(paths))
             for t in ((0, 1) if (a + b) % 3 == 0 else (0,))]
    assert sorted(locality_order(pairs)) == list(range(len(pairs)))
    store = LocalFolderStore(str(tmp_path))
    full, full_d, full_stats = local_inliers(pairs, paths, store, "c", workers=1)
    small, small_d, small_stats = local_inliers(pairs, paths, store, "c", workers=1, max_views=4)
    assert full_stats.images_read == len(paths)  # each image read once
    assert small_stats.images_read > len(paths)  # evicted views were read again
    assert full.tolist() == small.tolist() and (full >= 0).all()
    np.testing.assert_array_equal(full_d, small_d)


def _photo_set(tmp_path) -> tuple[list[str], list]:
    """Six photos with three edited copies each and a corrupt file; the pairs: every pair of
    one photo's files (some mirrored), plus distinct photos paired in a chain (one large
    component), plus pairs with the corrupt file."""
    from dedup_assets.core.candidates import Pair

    folder = tmp_path / "c"
    folder.mkdir()
    names = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry"):
        im = _photo(name)
        w, h = im.size
        files = {
            f"{name}.jpg": im,
            f"{name}_crop.jpg": im.crop((w // 10, h // 12, w - w // 10, h - h // 12)),
            f"{name}_small.jpg": im.resize((w * 3 // 4, h * 3 // 4)),
            f"{name}_mirror.jpg": im.transpose(Image.FLIP_LEFT_RIGHT),
        }
        for f, img in files.items():
            img.save(folder / f, quality=90)
        names += list(files)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    paths = sorted(names + ["broken.jpg"])
    i = {p: n for n, p in enumerate(paths)}
    pairs = []
    for g in range(6):
        group = names[4 * g : 4 * g + 4]
        for x in range(4):
            for y in range(x + 1, 4):
                a, b = sorted((i[group[x]], i[group[y]]))
                mirrored = group[x].endswith("_mirror.jpg") or group[y].endswith("_mirror.jpg")
                pairs.append(Pair(a, b, "global", -1, 1 if mirrored else 0))
        if g:
            pairs.append(Pair(*sorted((i[names[4 * g - 4]], i[names[4 * g]])), "global", -1, 0))
    pairs.append(Pair(*sorted((i["broken.jpg"], i["astronaut.jpg"])), "global", -1, 0))
    return paths, pairs


def test_local_stage_gives_the_same_answers_on_one_or_two_workers(tmp_path):
    """The keypoint stage in worker processes (pairs cut into chunks) answers exactly what it
    answers in this process, read errors included, and keeps copies apart from distinct photos."""
    from dedup_assets.core.verify import local_chunks

    paths, pairs = _photo_set(tmp_path)
    store = LocalFolderStore(str(tmp_path))
    one, one_d, one_stats = local_inliers(pairs, paths, store, "c", workers=1)
    two, two_d, two_stats = local_inliers(pairs, paths, store, "c", workers=2)
    assert len(local_chunks(pairs, 2)) > 1 and len(local_chunks(pairs, 1)) == 1
    assert one.tolist() == two.tolist()
    np.testing.assert_array_equal(one_d, two_d)  # NaN where no homography, in both
    assert list(one_stats.read_errors) == list(two_stats.read_errors) == ["broken.jpg"]
    assert one_stats.images_read == len(paths) <= two_stats.images_read
    for p, n in zip(pairs, one):
        a, b = paths[p.a], paths[p.b]
        if "broken" in a + b:
            assert n == -1
        elif a.split("_")[0].split(".")[0] == b.split("_")[0].split(".")[0]:
            assert n >= DEFAULT_MIN_INLIERS, (a, b, n)
        else:
            assert n < DEFAULT_MIN_INLIERS, (a, b, n)


def test_local_chunks_cover_every_pair_once_and_keep_small_components_whole():
    from dedup_assets.core.candidates import Pair
    from dedup_assets.core.verify import local_chunks, locality_order

    # 10 components of 3 pairs (triangles) and one chain of 30 pairs
    pairs = [Pair(3 * c + x, 3 * c + y, "global", -1, 0) for c in range(10) for x, y in ((0, 1), (0, 2), (1, 2))]
    pairs += [Pair(100 + k, 101 + k, "global", -1, 0) for k in range(30)]
    assert [len(c) for c in local_chunks(pairs, 2)] == [30, 30]  # one per worker: triangles, chain
    chunks = local_chunks(pairs, 2, per_worker=4)
    assert [n for c in chunks for n in c] == locality_order(pairs)
    target = -(-len(pairs) // 8)
    assert all(len(c) <= max(target, 3) for c in chunks) and len(chunks) >= 8
    for c in chunks:
        triangles = {pairs[n].a // 3 for n in c if pairs[n].a < 100}
        for t in triangles:  # a triangle lies in one chunk
            assert sum(pairs[n].a // 3 == t for n in c if pairs[n].a < 100) == 3


def test_a_pair_that_cannot_reach_min_inliers_gets_no_homography(tmp_path):
    """Distinct photos have a few dozen ratio-test matches: below ``min_inliers`` no RANSAC is
    run (0 inliers, no homography, no overlap check); copies are unaffected. The stage passes
    its threshold down."""
    import cv2

    from dedup_assets.core.candidates import Pair
    from dedup_assets.core.local_features import extract_features, match_homography

    def feats(im):
        return extract_features(cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2GRAY))

    astro, coffee = feats(_photo("astronaut")), feats(_photo("coffee"))
    fitted, good, H = match_homography(astro, coffee)
    assert 4 <= fitted <= good < DEFAULT_MIN_INLIERS and H is not None  # chance inliers
    assert match_homography(astro, coffee, min_inliers=DEFAULT_MIN_INLIERS) == (0, good, None)
    crop = feats(_photo("astronaut").crop((30, 30, 480, 470)))
    assert match_homography(astro, crop, min_inliers=DEFAULT_MIN_INLIERS)[0] == match_homography(astro, crop)[0]

    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        _photo(name).save(folder / f"{name}.jpg", quality=92)
    store, paths = LocalFolderStore(str(tmp_path)), ["astronaut.jpg", "coffee.jpg"]
    pair = [Pair(0, 1, "global", -1, 0)]
    low, low_d, _ = local_inliers(pair, paths, store, "c", workers=1, min_inliers=4)
    high, high_d, _ = local_inliers(pair, paths, store, "c", workers=1)
    assert low[0] >= 4 and not np.isnan(low_d[0])
    assert high[0] == 0 and np.isnan(high_d[0])
