"""The compiled stage-1 kernels against the OpenCV / numpy definitions they replace."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from dedup_assets.core import color, hashing, kernels, quality
from dedup_assets.core.decode import ImageDecodeError, _validate_jpeg_structure


def _photo_rgb(name: str = "astronaut") -> np.ndarray:
    img = getattr(skdata, name)()
    return img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


@pytest.mark.parametrize("shape", [(288, 432), (432, 288), (300, 300), (511, 300), (257, 3), (3, 300)])
def test_area_resize_matches_opencv_inter_area(shape):
    gray = cv2.resize(cv2.cvtColor(_photo_rgb(), cv2.COLOR_RGB2GRAY), shape[::-1], interpolation=cv2.INTER_AREA)
    h, w = shape
    s = 256 / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    got = kernels.area_resize_gray(gray, *size)
    ref = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    assert got.shape == ref.shape
    diff = np.abs(got.astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # rounding of exact .5 means only


def test_area_resize_refuses_factors_outside_1_to_2():
    with pytest.raises(ValueError):
        kernels.area_resize_gray(np.zeros((600, 600), np.uint8), 256, 256)


def test_working_gray_matches_opencv_on_either_path():
    rgb = _photo_rgb()
    for side in (300, 480, 700, 1200):  # 1-2x the work side: the kernel; beyond: OpenCV
        img = cv2.resize(rgb, (side, side * 2 // 3), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        got = quality.working_gray(img)
        ref = cv2.resize(gray, got.shape[::-1], interpolation=cv2.INTER_AREA)
        assert max(got.shape) == quality.WORK_SIDE
        assert np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("k", [2, 3, 6, 16])
def test_reduce_rgb_is_the_rounded_block_mean(k):
    rgb = _photo_rgb("coffee")[: 97 + k, : 131 + k]
    got = kernels.reduce_rgb(rgb, k)
    h, w = rgb.shape[:2]
    oh, ow = h // k, w // k
    y, x = (h - oh * k) // 2, (w - ow * k) // 2
    block = rgb[y : y + oh * k, x : x + ow * k].reshape(oh, k, ow, k, 3).astype(np.int64)
    ref = (block.sum(axis=(1, 3)) + k * k // 2) // (k * k)
    np.testing.assert_array_equal(got, ref)
    cv = cv2.resize(np.ascontiguousarray(rgb[y : y + oh * k, x : x + ow * k]), (ow, oh), interpolation=cv2.INTER_AREA)
    assert np.abs(got.astype(int) - cv).max() <= 1


def test_hash_grid_is_the_exact_area_grid():
    gray = cv2.cvtColor(_photo_rgb(), cv2.COLOR_RGB2GRAY)
    for g in (gray, gray[:171, :256], gray[:100, :37], gray[:64, :64], gray[:5, :300]):
        np.testing.assert_array_equal(kernels.hash_grid64(g), hashing._grid64(g).astype(np.int64))


def test_dihedral_hashes_equal_the_hash_of_the_transformed_image():
    gray = quality.working_gray(_photo_rgb("chelsea"))
    variants = hashing.hash_variants(gray)
    for k in range(8):
        moved = np.ascontiguousarray(hashing.apply_dihedral(gray, k))
        assert hashing.wavelet_hash(moved) == variants[k]
    # and the bits are the textbook ones: block sums of the grid above their median
    grid = hashing._grid64(gray)
    blocks = grid.reshape(8, 8, 8, 8).sum(axis=(1, 3))
    bits = (blocks > np.median(blocks)).ravel()
    assert variants[0] == int("".join("1" if b else "0" for b in bits), 2)


def _markers_reference(data: bytes):
    buf = np.frombuffer(data, np.uint8)
    ff = np.flatnonzero(buf[:-1] == 0xFF)
    nxt = buf[ff + 1]
    real = (nxt != 0x00) & (nxt != 0xFF)
    return ff[real], nxt[real]


def test_jpeg_markers_match_a_byte_by_byte_scan():
    buf = io.BytesIO()
    Image.fromarray(_photo_rgb()).save(buf, "JPEG", quality=90, restart_marker_blocks=4)
    jpeg = buf.getvalue()
    rng = np.random.default_rng(1)
    noisy = bytes(rng.choice(np.array([0x00, 0xFF, 0xD0, 0x12], np.uint8), 4099))
    samples = [jpeg, jpeg[:-1], jpeg[:1001], noisy, b"\xff\xd8\xff\xd9", b"\xff\xff\xff\xc4", b"\xff", b"\x00" * 15 + b"\xff\xd9"]
    samples += [jpeg[: 1000 + i] for i in range(9)]  # every tail length
    for sample in samples:
        pos, code = kernels.jpeg_markers(sample)
        ref_pos, ref_code = _markers_reference(sample)
        np.testing.assert_array_equal(pos, ref_pos)
        np.testing.assert_array_equal(code, ref_code)
    assert len(kernels.jpeg_markers(noisy)[0]) > 256  # past the first buffer: grown


def test_restart_markers_out_of_sequence_are_still_caught():
    buf = io.BytesIO()
    Image.fromarray(_photo_rgb()).save(buf, "JPEG", quality=90, restart_marker_blocks=4)
    jpeg = bytearray(buf.getvalue())
    _validate_jpeg_structure(bytes(jpeg))
    pos, code = kernels.jpeg_markers(bytes(jpeg))
    rst = pos[(code >= 0xD0) & (code <= 0xD7)]
    jpeg[rst[3] + 1] = 0xD0 + (jpeg[rst[3] + 1] - 0xD0 + 3) % 8
    with pytest.raises(ImageDecodeError, match="restart markers out of sequence"):
        _validate_jpeg_structure(bytes(jpeg))


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "moon", "text", "checkerboard"])
def test_structure_kernel_matches_the_opencv_definitions(name):
    """The compiled pass against the OpenCV calls that define the measures (the code
    before the kernel, kept as the path for non-uint8 and tiny images)."""
    rgb = _photo_rgb(name)
    rng = np.random.default_rng(3)
    noisy = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    for img in (rgb, noisy, cv2.GaussianBlur(rgb, (0, 0), 3), rgb[:3, :40], rgb[:40, :3]):
        gray = quality.working_gray(img)
        sharp, noise, hist = quality._structure(gray)
        ref_sharp, ref_noise = quality._structure_opencv(gray, *quality._gradient(gray))
        assert sharp == pytest.approx(ref_sharp, abs=1e-9)
        assert noise == pytest.approx(ref_noise, abs=1e-9)
        np.testing.assert_array_equal(hist, quality._u8_hist(gray))


def test_color_stats_match_opencv_histogram_and_masks():
    small = color._small(_photo_rgb("coffee"))
    counts, sums, spread_sum, spread_high = kernels.color_stats(small, 20)
    ref = cv2.calcHist([small], [0, 1, 2], None, [4, 4, 4], [0, 256, 0, 256, 0, 256]).ravel()
    np.testing.assert_array_equal(counts, ref.astype(np.int64))
    idx = ((small[..., 0] >> 6) << 4) | ((small[..., 1] >> 6) << 2) | (small[..., 2] >> 6)
    for i in np.flatnonzero(counts):
        np.testing.assert_array_equal(sums[i], small[idx == i].astype(np.int64).sum(axis=0))
    spread = small.max(axis=2).astype(int) - small.min(axis=2)
    assert spread_sum == spread.sum() and spread_high == (spread > 20).sum()


def test_hamming_knn2_is_opencvs_knn_match():
    """The keypoint stage's matcher gives OpenCV's brute-force k=2 Hamming matches: the same
    nearest row where it is unique, the same two distances always (real ORB features, and
    random descriptors with many ties)."""
    from dedup_assets.core.local_features import extract_features

    bf = cv2.BFMatcher(cv2.NORM_HAMMING)
    gray = cv2.cvtColor(_photo_rgb("astronaut"), cv2.COLOR_RGB2GRAY)
    real = [
        (extract_features(gray).descriptors, extract_features(gray[40:470, 30:480]).descriptors),
        (extract_features(gray).descriptors, extract_features(cv2.cvtColor(_photo_rgb("coffee"), cv2.COLOR_RGB2GRAY)).descriptors),
    ]
    rng = np.random.default_rng(0)
    coarse = [(rng.integers(0, 2, (50, 32), dtype=np.uint8), rng.integers(0, 2, (70, 32), dtype=np.uint8))]
    for a, b in real + coarse + [(a[:7], b[:2]) for a, b in real]:
        best, d1, d2 = kernels.hamming_knn2(a, b)
        knn = bf.knnMatch(a, b, k=2)
        assert d1.tolist() == [int(m[0].distance) for m in knn]
        assert d2.tolist() == [int(m[1].distance) for m in knn]
        unique = d1 < d2
        assert best[unique].tolist() == [m[0].trainIdx for m, u in zip(knn, unique) if u]
        assert (d1 == d2).any() or b is not coarse[0][1]  # the coarse case has ties
    with pytest.raises(ValueError, match="at least 2 rows"):
        kernels.hamming_knn2(real[0][0], real[0][1][:1])
