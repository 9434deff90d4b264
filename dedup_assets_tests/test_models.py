"""Tests of the pure image-model modules: global embedders and local features.

Uses only scikit-image's bundled sample photos; never touches the network
(HF_HUB_OFFLINE=1, and the offline-fallback test fails if a socket connects).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging
import socket
import time

import cv2
import numpy as np
import pytest
from skimage import data

from dedup_assets.core.embeddings import (
    DESCRIPTOR_MODEL_NAME,
    ClipEmbedder,
    DescriptorEmbedder,
    Embedder,
    EmbedderInfo,
    cosine,
    load_embedder,
)
from dedup_assets.core.local_features import (
    DEFAULT_MIN_INLIERS,
    LocalFeatures,
    extract_features,
    match_inliers,
)

# --------------------------------------------------------------------------------------
# sample photos and copy transformations
# --------------------------------------------------------------------------------------


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": _rgb(data.astronaut()),
        "coffee": _rgb(data.coffee()),
        "chelsea": _rgb(data.chelsea()),
        "rocket": _rgb(data.rocket()),
        "camera": _rgb(data.camera()),
        "coins": _rgb(data.coins()),
        "hubble": _rgb(data.hubble_deep_field()),
    }


def resize(img: np.ndarray, f: float) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def crop_each_side(img: np.ndarray, f: float) -> np.ndarray:
    h, w = img.shape[:2]
    dy, dx = round(h * f), round(w * f)
    return np.ascontiguousarray(img[dy : h - dy, dx : w - dx])


def brighten(img: np.ndarray, f: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * f, 0, 255).astype(np.uint8)


def gray_copy(img: np.ndarray) -> np.ndarray:
    return _rgb(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)  # black corners


def to_gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.dtype == np.float32
    assert x.shape == (n, dim)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------
# CLIP path (tiny random model from the packaged config)
# --------------------------------------------------------------------------------------


def test_tiny_clip_random_weights(photos):
    emb = load_embedder(
        model_name="dedup-tiny", pretrained="random", allow_random_weights=True, device="cpu", precision="fp32"
    )
    assert isinstance(emb, ClipEmbedder)
    assert emb.info.kind == "clip"
    assert emb.info.model == "dedup-tiny"
    assert emb.info.weights == "random (test only)"
    assert emb.info.fallback_reason is None
    assert emb.info.precision == "fp32"
    assert emb.info.dim == 64
    imgs = list(photos.values())
    emb.batch_size = 3  # exercise batching
    x = emb.embed(imgs)
    _assert_unit_rows(x, len(imgs), 64)
    # deterministic
    np.testing.assert_allclose(emb.embed(imgs[:2]), x[:2], atol=1e-6)
    assert emb.embed([]).shape == (0, 64)


def test_tiny_clip_fast_preprocess_matches_pil_transform(photos):
    emb = load_embedder(
        model_name="dedup-tiny", pretrained="random", allow_random_weights=True, device="cpu", precision="fp32"
    )
    imgs = list(photos.values())
    fast = emb.embed(imgs)
    emb.fast_preprocess = False
    pil = emb.embed(imgs)
    assert np.min(np.sum(fast * pil, axis=1)) > 0.999


def test_auto_precision_is_measured_against_fp32(photos):
    from dedup_assets.core.embeddings import MIN_PRECISION_COSINE, cpu_has_fast_bf16

    auto = load_embedder(model_name="dedup-tiny", pretrained="random", allow_random_weights=True, device="cpu")
    assert isinstance(auto, ClipEmbedder)
    if cpu_has_fast_bf16():
        assert auto.info.precision == "bf16"
        assert auto.info.precision_cosine >= MIN_PRECISION_COSINE
        # the recorded cosine is what the model really gives: same weights in fp32
        import torch

        imgs = list(photos.values())
        low = auto.embed(imgs)
        auto.model.to(torch.float32)
        auto.dtype = torch.float32
        assert np.min(np.sum(low * auto.embed(imgs), axis=1)) > 0.99
    else:
        assert auto.info.precision == "fp32" and auto.info.precision_cosine is None
    # an explicit bf16 request is honoured and measured too
    bf16 = load_embedder(
        model_name="dedup-tiny", pretrained="random", allow_random_weights=True, device="cpu", precision="bf16"
    )
    assert bf16.info.precision == "bf16" and 0.9 < bf16.info.precision_cosine <= 1.0 + 1e-6


def test_random_weights_need_explicit_permission(caplog):
    with caplog.at_level(logging.WARNING, logger="dedup_assets.embeddings"):
        emb = load_embedder(model_name="dedup-tiny", pretrained="random")
    assert isinstance(emb, DescriptorEmbedder)
    assert "allow_random_weights" in emb.info.fallback_reason
    assert any(r.name == "dedup_assets.embeddings" and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("wrap", ["raw", "state_dict"])
def test_checkpoint_roundtrip(tmp_path, photos, wrap):
    import open_clip
    import torch

    from dedup_assets.core.embeddings import _register_model_configs

    _register_model_configs()
    torch.manual_seed(1234)
    model, _, preprocess = open_clip.create_model_and_transforms("dedup-tiny", pretrained=None)
    model.eval()
    path = tmp_path / "tiny.pt"
    sd = model.state_dict()
    torch.save(sd if wrap == "raw" else {"state_dict": sd, "epoch": 3}, path)

    emb = load_embedder(model_name="dedup-tiny", checkpoint_path=str(path), device="cpu", precision="fp32")
    assert isinstance(emb, ClipEmbedder), emb.info.fallback_reason
    assert emb.info.kind == "clip"
    assert emb.info.weights == str(path)

    # reference: the saved model with open_clip's own (PIL) preprocessing
    from PIL import Image

    imgs = list(photos.values())
    with torch.inference_mode():
        batch = torch.stack([preprocess(Image.fromarray(im)) for im in imgs])
        ref = torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1).numpy()
    emb.fast_preprocess = False
    np.testing.assert_allclose(emb.embed(imgs), ref, atol=1e-5)

    # the documented setting (README: DEDUP_CLIP_CHECKPOINT -> EmbedderResource.checkpoint_path)
    from dedup_assets.resources import EmbedderResource

    res = EmbedderResource(model_name="dedup-tiny", checkpoint_path=str(path), device="cpu", precision="fp32")
    via_resource = res.get_embedder()
    assert isinstance(via_resource, ClipEmbedder), via_resource.info.fallback_reason
    assert via_resource.info.weights == str(path)
    assert via_resource.info.weights_fingerprint == emb.info.weights_fingerprint
    via_resource.fast_preprocess = False
    np.testing.assert_allclose(via_resource.embed(imgs), ref, atol=1e-5)

    # a different random init gives different embeddings (the weights really were loaded)
    other = load_embedder(model_name="dedup-tiny", pretrained="random", allow_random_weights=True, device="cpu")
    other.fast_preprocess = False
    assert np.abs(other.embed(imgs) - ref).max() > 1e-2


@pytest.fixture
def no_network(monkeypatch):
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_openai_weights_offline_fall_back_to_descriptor(tmp_path, no_network, caplog):
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dedup_assets.embeddings"):
        emb = load_embedder(model_name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path), device="cpu")
    elapsed = time.monotonic() - start
    assert elapsed < 10.0
    assert no_network == []
    assert isinstance(emb, DescriptorEmbedder)
    assert emb.info.kind == "descriptor"
    assert emb.info.model == DESCRIPTOR_MODEL_NAME
    reason = emb.info.fallback_reason
    assert reason and "ViT-B-32/openai" in reason and "downloads are disabled" in reason
    assert any("ViT-B-32/openai" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_empty_caches_fall_back_without_importing_torch(tmp_path):
    """A fresh install has no weights anywhere: the fallback is decided without importing
    torch and open_clip (seconds of every run); once some model is cached, open_clip decides."""
    import subprocess
    import sys

    probe = (
        "import sys; from dedup_assets.core.embeddings import load_embedder; "
        "e = load_embedder(model_name='ViT-B-32', pretrained='openai', cache_dir=sys.argv[1]); "
        "print(e.info.kind, 'torch' in sys.modules, 'open_clip' in sys.modules); "
        "print(e.info.fallback_reason)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def run(cache):
        out = subprocess.run(
            [sys.executable, "-c", probe, str(cache)], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.splitlines()

    empty = tmp_path / "empty"
    empty.mkdir()
    status, reason = run(empty)
    assert status == "descriptor False False"
    assert "ViT-B-32/openai" in reason and "downloads are disabled" in reason

    other = tmp_path / "other"
    (other / "models--someone--another-model" / "snapshots").mkdir(parents=True)
    status, reason = run(other)
    assert status == "descriptor True True"  # looked for the tag's own files
    assert "ViT-B-32/openai" in reason and "downloads are disabled" in reason


def test_broken_and_missing_checkpoints_fall_back(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a torch checkpoint")
    emb = load_embedder(model_name="dedup-tiny", checkpoint_path=str(broken), device="cpu")
    assert isinstance(emb, DescriptorEmbedder)
    assert str(broken) in emb.info.fallback_reason
    assert "could not build dedup-tiny" in emb.info.fallback_reason

    missing = tmp_path / "missing.pt"
    emb = load_embedder(model_name="dedup-tiny", checkpoint_path=str(missing), device="cpu")
    assert isinstance(emb, DescriptorEmbedder)
    assert "does not exist" in emb.info.fallback_reason

    # a checkpoint of another architecture
    import open_clip
    import torch

    from dedup_assets.core.embeddings import _register_model_configs

    _register_model_configs()
    model = open_clip.create_model("dedup-tiny", pretrained=None)
    wrong = tmp_path / "tiny_for_rn50.pt"
    torch.save(model.state_dict(), wrong)
    emb = load_embedder(model_name="RN50", checkpoint_path=str(wrong), device="cpu")
    assert isinstance(emb, DescriptorEmbedder)
    assert "could not build RN50" in emb.info.fallback_reason


def test_unknown_model_and_tag_fall_back():
    emb = load_embedder(model_name="no-such-model", pretrained="openai")
    assert isinstance(emb, DescriptorEmbedder)
    assert "no-such-model" in emb.info.fallback_reason
    emb = load_embedder(model_name="dedup-tiny", pretrained="no-such-tag")
    assert isinstance(emb, DescriptorEmbedder)
    assert "no-such-tag" in emb.info.fallback_reason


# --------------------------------------------------------------------------------------
# weight-free descriptor
# --------------------------------------------------------------------------------------

COPY_VARIANTS = {
    "resize50": lambda im: resize(im, 0.5),
    "jpeg30": lambda im: jpeg(im, 30),
    "crop5": lambda im: crop_each_side(im, 0.05),  # 5% off every border
    "bright+10": lambda im: brighten(im, 1.10),
    "gray": gray_copy,
}


def test_descriptor_shape_and_info(photos):
    emb = DescriptorEmbedder()
    assert isinstance(emb, Embedder)
    assert isinstance(emb.info, EmbedderInfo)
    assert emb.info.kind == "descriptor" and emb.info.weights == "none" and emb.info.fallback_reason is None
    imgs = list(photos.values()) + [
        np.zeros((10, 7, 3), np.uint8),  # blank, smaller than the thumbnail
        np.full((300, 200, 3), 200, np.uint8),  # blank, coloured gray
        to_gray(photos["astronaut"]),  # (H, W) gray is tolerated
    ]
    x = emb.embed(imgs)
    _assert_unit_rows(x, len(imgs), emb.info.dim)
    # batching does not change results
    emb_small = DescriptorEmbedder(batch_size=2)
    np.testing.assert_allclose(emb_small.embed(imgs), x, atol=1e-6)
    assert emb.embed([]).shape == (0, emb.info.dim)


def test_descriptor_copies_beat_other_photos(photos):
    emb = DescriptorEmbedder()
    names = list(photos)
    base = emb.embed([photos[n] for n in names])
    cross = base @ base.T
    np.fill_diagonal(cross, -1.0)
    max_other = cross.max(axis=1)
    assert max_other.max() < 0.45  # unrelated photos are far apart
    for vname, fn in COPY_VARIANTS.items():
        copies = emb.embed([fn(photos[n]) for n in names])
        for i, n in enumerate(names):
            c = cosine(base[i], copies[i])
            # clearly more similar to its copy than to any other photo
            assert c >= 0.65, (vname, n, c)
            assert c - max_other[i] >= 0.4, (vname, n, c, max_other[i])


def test_cosine():
    a = np.array([1.0, 0.0, 0.0])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, np.array([0.0, 2.0, 0.0])) == pytest.approx(0.0)
    assert cosine(a, -3 * a) == pytest.approx(-1.0)
    assert cosine(a, np.zeros(3)) == 0.0


# --------------------------------------------------------------------------------------
# local features
# --------------------------------------------------------------------------------------

LOCAL_COPY_VARIANTS = {
    "resize50": lambda im: resize(im, 0.5),
    "jpeg30": lambda im: jpeg(im, 30),
    "rot10": lambda im: rotate(im, 10.0),
    "crop10": lambda im: crop_each_side(im, 0.10),  # 10% off every border
}


@pytest.fixture(scope="module")
def local_photos(photos):
    return {k: photos[k] for k in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")}


def test_extract_features_shapes(local_photos):
    f = extract_features(to_gray(local_photos["astronaut"]), n_features=500)
    assert isinstance(f, LocalFeatures)
    assert f.points.dtype == np.float32 and f.points.shape[1] == 2
    assert f.descriptors.dtype == np.uint8 and f.descriptors.shape == (len(f.points), 32)
    assert 300 <= len(f.points) <= 500
    # long side resized to `side`: points lie inside a side x side frame
    assert f.points.max() < 512
    # small images are upscaled and still yield keypoints
    small = extract_features(to_gray(resize(local_photos["coffee"], 0.2)))
    assert len(small.points) > 100
    assert small.points[:, 0].max() > 256
    # a blank image has no keypoints
    empty = extract_features(np.zeros((64, 64), np.uint8))
    assert empty.points.shape == (0, 2) and empty.descriptors.shape == (0, 32)
    assert match_inliers(empty, f) == (0, 0)
    assert match_inliers(f, empty) == (0, 0)


def test_local_features_separate_copies_from_other_photos(local_photos):
    names = list(local_photos)
    feats = {n: extract_features(to_gray(local_photos[n])) for n in names}
    copy_inliers = {}
    for vname, fn in LOCAL_COPY_VARIANTS.items():
        for n in names:
            fc = extract_features(to_gray(fn(local_photos[n])))
            inl, good = match_inliers(feats[n], fc)
            assert inl <= good
            copy_inliers[(vname, n)] = inl
    other_inliers = {
        (a, b): match_inliers(feats[a], feats[b])[0] for a in names for b in names if a != b
    }
    print("copy inliers:", copy_inliers)
    print("other-photo inliers:", other_inliers)
    assert min(copy_inliers.values()) >= 2 * DEFAULT_MIN_INLIERS  # copies: 100s of inliers
    assert max(other_inliers.values()) < DEFAULT_MIN_INLIERS  # different photos: a handful


def test_match_inliers_few_matches():
    rng = np.random.default_rng(0)
    a = LocalFeatures(rng.random((3, 2), dtype=np.float32) * 100, rng.integers(0, 256, (3, 32), dtype=np.uint8))
    inl, good = match_inliers(a, a)
    assert inl == 0 and good <= 3


def test_bench_global_runs_on_a_tiny_model(tmp_path, capsys):
    import importlib
    import json

    bench = importlib.import_module("dedup_assets.bench.global")
    out = tmp_path / "g.json"
    assert bench.main([
        "--images", "4", "--mp", "0.5", "--rounds", "1", "--workers", "1", "--model", "dedup-tiny",
        "--stage-views", "0", "--precisions", "fp32", "--workdir", str(tmp_path / "w"), "--json", str(out),
    ]) == 0
    res = json.loads(out.read_text())
    assert res["weights"] == "random" and "speed only" in res["weights_note"]
    assert res["decode"]["decode_image"] > 0 and res["model"]["cpu/fp32"]["images_per_s"] > 0
    assert res["stage"]["cpu/fp32 views=0"]["images_per_s"] > 0
    assert res["fidelity_vs_open_clip_pil"]["cosine_min"] > 0.99
