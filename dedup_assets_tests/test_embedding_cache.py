"""Embeddings stored between runs (float16 Parquet) and reused only for unchanged images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.content import content_hash
from dedup_assets.core.embedding_cache import ROTATION_VIEW, EmbeddingCache
from dedup_assets.core.embeddings import ClipEmbedder, load_embedder
from dedup_assets.core.sample import PHOTOS, load_photo
from dedup_assets.core.store import LocalFolderStore
from dedup_assets.core.verify import global_similarities


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import open_clip
    import torch

    from dedup_assets.core.embeddings import _register_model_configs

    _register_model_configs()
    torch.manual_seed(7)
    model = open_clip.create_model("dedup-tiny", pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def _embedder(path) -> ClipEmbedder:
    emb = load_embedder(model_name="dedup-tiny", checkpoint_path=str(path), device="cpu", precision="fp32")
    assert isinstance(emb, ClipEmbedder), emb.info.fallback_reason
    return emb


class _Counter:
    """Counts the images that go through the model's image tower (a forward hook)."""

    def __init__(self, emb: ClipEmbedder):
        self.n = 0
        emb.model.visual.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.n += int(args[0].shape[0])


def _collection(root):
    folder = root / "c"
    folder.mkdir()
    names = []
    for i, name in enumerate(PHOTOS[:5]):
        img = load_photo(name).convert("RGB")
        img.save(folder / f"{i}_{name}.jpg", quality=90)
        names.append(f"{i}_{name}.jpg")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirror.jpg", quality=90)
    names.append("mirror.jpg")
    return LocalFolderStore(str(root)), "c", sorted(names)


def _keys(store, collection, paths):
    return [content_hash(store.read_bytes(collection, p)) for p in paths]


def _run(store, collection, paths, emb, cache):
    return global_similarities(
        [], paths, store, collection, emb, hashes=np.zeros(len(paths), np.int64),
        discover_from=range(len(paths)), discover_k=3, discover_threshold=0.0, rotation_k=2,
        rotation_threshold=0.0, workers=1, cache=cache, content_keys=_keys(store, collection, paths),
        shards=[str(i % 2) for i in range(len(paths))],
    )


def test_second_run_reuses_vectors_and_a_changed_image_is_embedded_again(tmp_path, tiny_checkpoint):
    store, collection, paths = _collection(tmp_path)
    emb = _embedder(tiny_checkpoint)
    counter = _Counter(emb)
    cache = EmbeddingCache(tmp_path / "emb", emb.info.cache_key(), collection)

    first = _run(store, collection, paths, emb, cache)
    n = len(paths)
    assert (first.stats.images_embedded, first.stats.images_cached) == (n, 0)
    assert counter.n == 2 * n  # identity + mirror view of each image
    files = sorted(p.name for p in cache.dir.glob("*.parquet"))
    assert files == ["shard-0.parquet", "shard-1.parquet"]
    stored = cache.load(_keys(store, collection, paths))
    v = next(iter(stored.values()))
    assert v[0].dtype == np.float16 and v[0].shape == (emb.info.dim,) and ROTATION_VIEW in v

    counter.n = 0
    second = _run(store, collection, paths, emb, cache2 := EmbeddingCache(tmp_path / "emb", emb.info.cache_key(), collection))
    assert (second.stats.images_embedded, second.stats.images_cached, second.stats.images_read) == (0, n, 0)
    assert counter.n == 0
    assert [(p.a, p.b, p.transform) for p in second.found] == [(p.a, p.b, p.transform) for p in first.found]
    np.testing.assert_allclose(second.found_similarity, first.found_similarity, atol=2e-3)

    # one image changes (new content, same name): only it is read and embedded again
    changed = paths[0]
    load_photo(PHOTOS[5]).convert("RGB").save(tmp_path / "c" / changed, quality=90)
    counter.n = 0
    third = _run(store, collection, paths, emb, cache2)
    assert (third.stats.images_embedded, third.stats.images_cached) == (1, n - 1)
    assert counter.n == 2

    # other weights: a different key, nothing reused
    other = load_embedder(model_name="dedup-tiny", pretrained="random", allow_random_weights=True, device="cpu")
    assert other.info.cache_key() != emb.info.cache_key()
    miss = _run(store, collection, paths, other, EmbeddingCache(tmp_path / "emb", other.info.cache_key(), collection))
    assert miss.stats.images_cached == 0 and miss.stats.images_embedded == n


def test_clip_views_are_decoded_small_and_honour_exif_orientation(tmp_path):
    from dedup_assets.core.embeddings import ClipInput
    from dedup_assets.core.verify import _views_rgb

    folder = tmp_path / "c"
    folder.mkdir()
    upright = load_photo("chelsea").convert("RGB").resize((1800, 1200))
    upright.save(folder / "upright.jpg", quality=92)
    # stored turned 90 degrees, with EXIF orientation 6 ("rotate 90 CW to display")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "exif6.jpg", quality=92, exif=exif)
    store = LocalFolderStore(str(tmp_path))
    transform = ClipInput((224, 224))
    a = _views_rgb(store, "c", transform, ("upright.jpg", (0, 1)))
    b = _views_rgb(store, "c", transform, ("exif6.jpg", (0,)))
    assert a[0].shape == (224, 224, 3) and a[0].dtype == np.uint8
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() < 3.0
    assert np.array_equal(a[1], a[0][:, ::-1])  # mirror view
    # the open_clip reference (full decode, PIL bicubic) is within ~1 grey level
    from open_clip.transform import image_transform

    ref = image_transform(224, is_train=False)(upright).numpy()  # what ViT-B-32 uses
    mean = np.array([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = np.array([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    ref = (ref * std + mean) * 255.0
    assert np.abs(a[0].transpose(2, 0, 1) - ref).mean() < 2.0
