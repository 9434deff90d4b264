"""Global image embeddings used to verify near-duplicate candidate pairs.

Two implementations share the :class:`Embedder` interface:

* :class:`ClipEmbedder` -- an ``open_clip`` image tower (e.g. ``ViT-B-32`` with
  the ``openai`` weights).  Created through :func:`load_embedder`, which never
  downloads anything: weights must already be in the open_clip / Hugging Face
  cache, or be given as a local checkpoint file.
* :class:`DescriptorEmbedder` -- a weight-free, hand-crafted global descriptor
  (see its docstring).  It is what :func:`load_embedder` falls back to when no
  CLIP weights can be loaded; ``info.fallback_reason`` then says why.

Both take RGB ``uint8`` arrays of shape ``(H, W, 3)`` of any size and return
``float32`` arrays of shape ``(n, dim)`` whose rows are L2-normalised, so the
dot product of two rows is their cosine similarity.

This module is pure Python / numpy / torch (no Dagster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

logger = logging.getLogger("dedup_assets.embeddings")

#: Folder with the open_clip model configs shipped with this package
#: (``dedup-tiny.json``: a tiny random-init ViT used by tests / smoke runs).
MODEL_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "model_configs"

DESCRIPTOR_MODEL_NAME = "weight-free-descriptor-v1"

_RANDOM_TAGS = ("", "none", "random")


@dataclass
class EmbedderInfo:
    kind: str  # "clip" or "descriptor"
    model: str  # e.g. "ViT-B-32" / "dedup-tiny" / "weight-free-descriptor-v1"
    weights: str  # "openai" / checkpoint path / "random (test only)" / "none"
    device: str  # "cpu" / "cuda" ...
    precision: str  # "fp32" / "bf16" / "fp16"
    fallback_reason: str | None  # why CLIP was not used (human readable); None if CLIP is used
    dim: int
    #: min cosine, on a probe batch of real photos, of this precision's embeddings against fp32
    #: (None: fp32, or not measured)
    precision_cosine: float | None = None
    #: version of the input preprocessing (part of the embedding-cache key)
    preprocess: str = ""
    #: fingerprint of the weights (sampled parameter values; part of the embedding-cache key)
    weights_fingerprint: str = ""

    def cache_key(self) -> str:
        """What embeddings depend on: model, weights, precision, preprocessing."""
        return "|".join(
            (self.kind, self.model, self.weights, self.weights_fingerprint, self.precision, self.preprocess)
        )


class Embedder(ABC):
    """Maps images to L2-normalised float32 vectors (cosine = dot product)."""

    info: EmbedderInfo

    @abstractmethod
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``images``: RGB uint8 ``(H, W, 3)`` arrays of any size.

        Returns a float32 array of shape ``(len(images), info.dim)`` with unit rows.
        """

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def input_transform(self) -> Any:
        """A picklable per-image uint8 transform decode workers may apply before
        :meth:`embed_uint8` (None: ``embed`` takes the decoded images as they are)."""
        return None

    def embed_uint8(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of images already through :attr:`input_transform`."""
        return self.embed(list(batch))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0.0 if either is all zeros)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accepts (H, W, 3) RGB uint8 (the contract); tolerates gray (H, W),
    (H, W, 1), RGBA (alpha dropped) and float/other integer dtypes (clipped to 0..255)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an image of shape (H, W, 3), got {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.shape[2] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _blur121(x: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing of a (n, H, W) stack (edges replicated)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    v = 0.25 * p[:, :-2, :] + 0.5 * p[:, 1:-1, :] + 0.25 * p[:, 2:, :]
    return 0.25 * v[:, :, :-2] + 0.5 * v[:, :, 1:-1] + 0.25 * v[:, :, 2:]


# --------------------------------------------------------------------------------------
# Weight-free descriptor
# --------------------------------------------------------------------------------------


class DescriptorEmbedder(Embedder):
    """Weight-free global descriptor (``weight-free-descriptor-v1``, 480 dims).

    Every image is first area-resized (``cv2.INTER_AREA``) to a 64x64 RGB
    thumbnail -- the aspect ratio is deliberately ignored, so resized copies of
    any aspect give the same thumbnail.  From the thumbnail's luminance
    ``Y = 0.299 R + 0.587 G + 0.114 B`` and chroma four blocks are built:

    ====================  =====  ======  ==============================================
    block                 dims   weight  content
    ====================  =====  ======  ==============================================
    luminance 16x16       256    1.0     area-downsampled Y, zero-mean, unit-norm
    luminance 8x8         64     0.7     area-downsampled Y, zero-mean, unit-norm
    gradient orientation  128    1.0     4x4 grid of cells x 8 signed orientation bins
                                         (HOG-like: magnitude-weighted, linear
                                         interpolation between bins), Hellinger
                                         (sqrt of L1-normalised) then zero-mean,
                                         unit-norm
    chroma                32     0.35    4x4 grid of mean (Cb, Cr), direction
                                         unit-norm, scaled by min(1, rms/0.05) so
                                         gray / near-gray images have ~0 chroma
    ====================  =====  ======  ==============================================

    The weighted blocks are concatenated and the whole vector L2-normalised.
    Because the three luminance blocks are zero-mean and unit-norm, the cosine
    of two descriptors is (up to the small chroma term) the weighted average of
    the per-block Pearson correlations, with weights ``w**2`` (1, 0.49, 1).

    Invariances: resize / aspect change (fixed thumbnail), recompression and
    noise (area averaging), brightness / contrast change (zero-mean, unit-norm
    luminance; gradient histograms normalised), gray copies (chroma carries only
    ~5% of the squared norm), small crops (coarse grids, 4x4 HOG cells).  It is
    not invariant to mirroring, rotation beyond a few degrees or large crops --
    those are left to the local-feature verification.

    A perfectly uniform image has no luminance structure; it is mapped to its
    chroma block, or -- if that is zero too -- to a fixed unit vector, so all
    blank images are mutual duplicates.
    """

    THUMB = 64
    WEIGHTS = {"y16": 1.0, "y8": 0.7, "hog": 1.0, "chroma": 0.35}
    CHROMA_RMS_REF = 0.05  # chroma rms (fraction of 255) at which the chroma block gets full weight

    def __init__(self, batch_size: int = 256, fallback_reason: str | None = None) -> None:
        self.batch_size = max(1, int(batch_size))
        self.info = EmbedderInfo(
            kind="descriptor",
            model=DESCRIPTOR_MODEL_NAME,
            weights="none",
            device="cpu",
            precision="fp32",
            fallback_reason=fallback_reason,
            dim=256 + 64 + 128 + 32,
        )

    # -- public ------------------------------------------------------------------------
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        n = len(images)
        out = np.empty((n, self.info.dim), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            chunk = images[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._embed_batch(chunk)
        return out

    # -- internals ---------------------------------------------------------------------
    def _thumbnails(self, images: Sequence[np.ndarray]) -> np.ndarray:
        t = self.THUMB
        thumbs = np.empty((len(images), t, t, 3), dtype=np.uint8)
        for i, img in enumerate(images):
            rgb = _as_rgb_uint8(img)
            h, w = rgb.shape[:2]
            if (h, w) == (t, t):
                thumbs[i] = rgb
            else:
                interp = cv2.INTER_AREA if (h >= t and w >= t) else cv2.INTER_LINEAR
                thumbs[i] = cv2.resize(rgb, (t, t), interpolation=interp)
        return thumbs

    @staticmethod
    def _zero_mean_unit(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
        x = x - x.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.where(norms > eps, x / np.maximum(norms, eps), 0.0).astype(np.float32)

    def _embed_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        n = len(images)
        if n == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        t = self.THUMB
        rgb = self._thumbnails(images).astype(np.float32) / 255.0  # (n, 64, 64, 3)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b  # (n, 64, 64)

        # (a) multi-scale luminance thumbnails (area averages of the 64x64 luminance)
        y16 = y.reshape(n, 16, t // 16, 16, t // 16).mean(axis=(2, 4))
        y8 = y16.reshape(n, 8, 2, 8, 2).mean(axis=(2, 4))
        f16 = self._zero_mean_unit(y16.reshape(n, -1))
        f8 = self._zero_mean_unit(y8.reshape(n, -1))

        # (b) HOG-like gradient orientation histograms on a 4x4 grid, 8 signed bins
        ys = _blur121(y)
        gx = np.zeros_like(ys)
        gy = np.zeros_like(ys)
        gx[:, :, 1:-1] = ys[:, :, 2:] - ys[:, :, :-2]
        gy[:, 1:-1, :] = ys[:, 2:, :] - ys[:, :-2, :]
        mag = np.sqrt(gx * gx + gy * gy)
        pos = (np.arctan2(gy, gx) + np.pi) * (8.0 / (2.0 * np.pi))  # [0, 8]
        b0 = np.floor(pos)
        frac = pos - b0
        b0 = b0.astype(np.int64) % 8
        b1 = (b0 + 1) % 8
        w0 = mag * (1.0 - frac)
        w1 = mag * frac
        cell = t // 4
        hist = np.empty((n, 4, 4, 8), dtype=np.float32)
        for k in range(8):
            contrib = np.where(b0 == k, w0, 0.0) + np.where(b1 == k, w1, 0.0)
            hist[..., k] = contrib.reshape(n, 4, cell, 4, cell).sum(axis=(2, 4))
        hist = hist.reshape(n, -1)
        hist = np.sqrt(hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12))
        fh = self._zero_mean_unit(hist)

        # (c) chroma on a 4x4 grid, small weight, fades out for (near-)gray images
        cb = 0.564 * (b - y)
        cr = 0.713 * (r - y)
        chroma = np.stack([cb, cr], axis=-1).reshape(n, 4, cell, 4, cell, 2).mean(axis=(2, 4))
        chroma = chroma.reshape(n, -1)
        cnorm = np.linalg.norm(chroma, axis=1, keepdims=True)
        rms = cnorm / np.sqrt(chroma.shape[1])
        gain = np.minimum(1.0, rms / self.CHROMA_RMS_REF)
        fc = np.where(cnorm > 1e-9, chroma / np.maximum(cnorm, 1e-9) * gain, 0.0)

        w = self.WEIGHTS
        v = np.concatenate([w["y16"] * f16, w["y8"] * f8, w["hog"] * fh, w["chroma"] * fc], axis=1)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        blank = norms[:, 0] < 1e-9
        if blank.any():
            v[blank] = 0.0
            v[blank, 0] = 1.0
            norms[blank] = 1.0
        return (v / norms).astype(np.float32)


# --------------------------------------------------------------------------------------
# open_clip embedder
# --------------------------------------------------------------------------------------


#: Version of :class:`ClipInput` (embedding-cache key): bump when its pixels change.
CLIP_PREPROCESS_VERSION = "cv2-cubic-crop-v1"


@dataclass(frozen=True)
class ClipInput:
    """The model's eval transform on ``uint8`` pixels, in OpenCV (picklable: decode workers run it).

    ``resize_mode`` ``shortest`` (open_clip's default): the shorter side is resized to the
    model's size (torchvision ``Resize(int)`` rule: the longer side truncated) and the centre
    cropped; ``longest``: fit inside and pad with ``fill_color``; ``squash``: resize to the size.
    Resizing is ``cv2.INTER_CUBIC`` (``INTER_AREA`` when shrinking by 2 or more, where cubic
    would alias), on uint8, which is within ~1 grey level (mean absolute error) of open_clip's
    PIL bicubic. The decode pipeline gives it a JPEG decoded at reduced DCT scale whose short
    side still covers the size (:meth:`cover_short_side`), so a 2 MP JPEG is never decoded at
    full resolution. Normalisation (mean / std) is left to the batched tensor op in
    :meth:`ClipEmbedder.embed_uint8`.
    """

    size: tuple[int, int] = (224, 224)
    resize_mode: str = "shortest"
    fill_color: int = 0

    @property
    def cover_short_side(self) -> int:
        """Short side an input needs so that this transform never upscales (``shortest``)."""
        return max(self.size)

    def _resize(self, rgb: np.ndarray, nw: int, nh: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        if (h, w) == (nh, nw):
            return rgb
        interp = cv2.INTER_AREA if (h >= 2 * nh and w >= 2 * nw) else cv2.INTER_CUBIC
        return cv2.resize(rgb, (nw, nh), interpolation=interp)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rgb = _as_rgb_uint8(image)
        th, tw = self.size
        h, w = rgb.shape[:2]
        if self.resize_mode == "squash":
            return np.ascontiguousarray(self._resize(rgb, tw, th))
        if self.resize_mode == "longest":
            s = min(th / h, tw / w)
            nh, nw = max(1, min(th, round(h * s))), max(1, min(tw, round(w * s)))
            out = np.full((th, tw, 3), self.fill_color, np.uint8)
            top, left = (th - nh) // 2, (tw - nw) // 2
            out[top : top + nh, left : left + nw] = self._resize(rgb, nw, nh)
            return out
        if th == tw:  # torchvision Resize(int): shorter side -> size, longer side truncated
            nh, nw = (th, max(th, int(th * w / h))) if h <= w else (max(th, int(th * h / w)), th)
        else:
            s = max(th / h, tw / w)
            nh, nw = max(th, round(h * s)), max(tw, round(w * s))
        r = self._resize(rgb, nw, nh)
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        return np.ascontiguousarray(r[top : top + th, left : left + tw])


class ClipEmbedder(Embedder):
    """Image tower of an ``open_clip`` model.  Create it with :func:`load_embedder`.

    Preprocessing (``fast_preprocess=True``, the default): :class:`ClipInput` (OpenCV resize
    and centre crop on uint8, per image, usually already done in the decode workers), then one
    batched tensor op per batch scales to [0, 1] and normalises with the model's mean / std
    (:meth:`embed_uint8`). ``fast_preprocess=False`` uses open_clip's PIL transform.
    """

    def __init__(
        self,
        model: Any,
        preprocess: Any,
        info: EmbedderInfo,
        batch_size: int = 32,
        fast_preprocess: bool = True,
    ) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.preprocess = preprocess
        self.info = info
        self.batch_size = max(1, int(batch_size))
        self.fast_preprocess = fast_preprocess
        self.device = torch.device(info.device)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[info.precision]

        from open_clip.model import get_model_preprocess_cfg

        cfg = dict(get_model_preprocess_cfg(model))
        size = cfg.get("size", 224)
        if isinstance(size, int):
            size = (size, size)
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))
        mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=torch.float32)
        self.mean, self.std = mean, std
        # x_norm = (x / 255 - mean) / std = x * scale - shift  (one fused op per batch)
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        self._shift = (mean / std).view(1, 3, 1, 1)
        resize_mode = cfg.get("resize_mode", "shortest") or "shortest"
        interpolation = cfg.get("interpolation", "bicubic") or "bicubic"
        if resize_mode not in ("shortest", "longest", "squash") or interpolation not in ("bicubic", "bilinear"):
            self.fast_preprocess = False
        self.input = ClipInput(self.size, resize_mode, int(cfg.get("fill_color", 0) or 0))
        if not self.info.preprocess:
            self.info.preprocess = CLIP_PREPROCESS_VERSION if self.fast_preprocess else "open_clip-pil"

    @property
    def input_transform(self) -> ClipInput | None:
        """Per-image uint8 transform the decode workers apply (None: give ``embed`` raw images)."""
        return self.input if self.fast_preprocess else None

    # -- preprocessing -----------------------------------------------------------------
    def _normalise(self, batch: np.ndarray) -> "Any":
        """(n, H, W, 3) uint8 -> (n, 3, H, W) normalised tensor on the device, model dtype."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            scale, shift = self._scale.to(self.device), self._shift.to(self.device)
        else:
            scale, shift = self._scale, self._shift
        x = torch.addcmul(-shift, x.float(), scale)
        return x.to(dtype=self.dtype).contiguous()

    def _prepare(self, images: Sequence[np.ndarray]) -> "Any":
        torch = self._torch
        if self.fast_preprocess:
            return self._normalise(np.stack([self.input(im) for im in images]))
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(_as_rgb_uint8(im))) for im in images])
        return batch.to(self.device, dtype=self.dtype)

    # -- embedding ---------------------------------------------------------------------
    def _encode(self, x: "Any") -> np.ndarray:
        torch = self._torch
        feats = self.model.encode_image(x).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()

    def _batched(self, items: Sequence, to_tensor: Callable[[Sequence], "Any"]) -> np.ndarray:
        """Unit embeddings of ``items``, ``batch_size`` at a time through ``to_tensor``."""
        out = np.empty((len(items), self.info.dim), dtype=np.float32)
        with self._torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                out[start : start + len(chunk)] = self._encode(to_tensor(chunk))
        return out

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._batched(images, self._prepare)

    def embed_uint8(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of ``(n, H, W, 3)`` uint8 inputs already through :attr:`input`."""
        return self._batched(batch, self._normalise)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

_CONFIG_LOCK = threading.Lock()
_CONFIGS_REGISTERED = False


def _register_model_configs() -> None:
    """Registers :data:`MODEL_CONFIGS_DIR` with open_clip (once per process)."""
    global _CONFIGS_REGISTERED
    with _CONFIG_LOCK:
        if _CONFIGS_REGISTERED:
            return
        import open_clip

        if MODEL_CONFIGS_DIR.is_dir():
            open_clip.add_model_config(MODEL_CONFIGS_DIR)
        _CONFIGS_REGISTERED = True


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` if available, else ``mps`` if available, else ``cpu``."""
    import torch

    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matrix products natively (AMX tiles or AVX512-BF16)."""
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(getattr(torch, "cpu", None), probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - defensive
            pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return " amx_bf16" in flags or " avx512_bf16" in flags
    except OSError:  # pragma: no cover - not Linux
        return False


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> fp16 on CUDA, bf16 on a CPU with fast bf16 (AMX / AVX512-BF16), else fp32;
    :func:`load_embedder` then keeps a reduced precision only if its embeddings stay within
    cosine :data:`MIN_PRECISION_COSINE` of fp32 on a probe batch."""
    p = (precision or "auto").lower()
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "amp": "auto"}
    p = aliases.get(p, p)
    if p == "auto":
        if device.startswith("cuda"):
            return "fp16"
        if device == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if p not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r} (use auto, fp32, bf16 or fp16)")
    if p == "fp16" and device == "cpu":
        logger.warning("fp16 on CPU is slow / partly unsupported; using fp32 instead")
        return "fp32"
    return p


#: a reduced precision chosen by ``precision="auto"`` must keep at least this cosine to fp32
MIN_PRECISION_COSINE = 0.999


def _probe_batch(size: tuple[int, int], n: int = 4) -> np.ndarray:
    """(n, H, W, 3) uint8 real photos (scikit-image's samples; noise if unavailable)."""
    imgs = []
    try:
        from .sample import PHOTOS, load_photo

        for name in PHOTOS[:n]:
            rgb = np.asarray(load_photo(name).convert("RGB"))
            imgs.append(ClipInput(size)(rgb))
    except Exception as exc:  # pragma: no cover - skimage data missing
        logger.debug("probe photos unavailable (%s); using noise", exc)
    rng = np.random.default_rng(0)
    while len(imgs) < n:
        imgs.append(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return np.stack(imgs)


def _weights_fingerprint(model: Any) -> str:
    """sha1 of ~64 sampled values of every parameter (tells weights apart, in milliseconds)."""
    import hashlib

    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            if not flat.is_floating_point() or flat.numel() == 0:
                continue
            step = max(1, flat.numel() // 64)
            h.update(name.encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Forbids Hugging Face Hub network access for the duration of the block.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` at import time, so besides the
    environment variable its ``constants.HF_HUB_OFFLINE`` flag is patched too.
    """
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = None
    old_flag = None
    try:
        from huggingface_hub import constants as _constants  # type: ignore

        constants = _constants
        old_flag = getattr(constants, "HF_HUB_OFFLINE", None)
        constants.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - huggingface_hub missing
        constants = None
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_flag


def _cached_pretrained_file(pcfg: dict, cache_dir: str | None) -> str | None:
    """Local file holding the weights of an open_clip pretrained tag, or None.

    Looks only at the local caches open_clip would use (Hugging Face hub cache
    for ``hf_hub`` entries, ``cache_dir`` or ``~/.cache/clip`` for URL
    entries); never touches the network.
    """
    if pcfg.get("file"):
        return pcfg["file"] if os.path.isfile(pcfg["file"]) else None
    hf_hub = pcfg.get("hf_hub", "")
    if hf_hub:
        try:
            from huggingface_hub import try_to_load_from_cache
            from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

            model_id, filename = os.path.split(hf_hub)
            filename = filename or HF_WEIGHTS_NAME
            candidates = []
            if filename == HF_WEIGHTS_NAME:
                candidates.append(HF_SAFE_WEIGHTS_NAME)
            elif filename.endswith((".bin", ".pth")):
                candidates.append(filename[:-4] + ".safetensors")
            candidates.append(filename)
            for fname in candidates:
                hit = try_to_load_from_cache(repo_id=model_id, filename=fname, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        except Exception as exc:  # pragma: no cover - defensive
            logger.debug("HF cache lookup failed: %s", exc)
    url = pcfg.get("url", "")
    if url:
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        target = os.path.join(root, os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


def _no_cached_weights(cache_dir: str | None) -> bool:
    """True when the caches :func:`_cached_pretrained_file` looks in hold no weights of any
    model at all (no Hugging Face model folder, no file in the ``~/.cache/clip`` folder), so
    that no pretrained tag can load: decided without importing torch or open_clip (seconds)."""
    try:
        from huggingface_hub import constants

        hub = Path(cache_dir or constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub missing: open_clip decides
        return False
    clip = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
    try:
        if hub.is_dir() and any(p.name.startswith("models--") for p in hub.iterdir()):
            return False
        return not (clip.is_dir() and any(p.is_file() for p in clip.iterdir()))
    except OSError:  # unreadable: let open_clip look
        return False


def _describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (torch errors can be very long)."""
    lines = str(exc).strip().splitlines()
    msg = lines[0] if lines else ""
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _fallback(reason: str) -> DescriptorEmbedder:
    logger.warning("CLIP embeddings unavailable, using the weight-free descriptor instead: %s", reason)
    return DescriptorEmbedder(fallback_reason=reason)


def load_embedder(
    model_name: str = "ViT-B-32",
    pretrained: str = "openai",
    checkpoint_path: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    threads: int | None = None,
    allow_random_weights: bool = False,
    cache_dir: str | None = None,
) -> Embedder:
    """Builds the global embedder; never downloads anything.

    * ``checkpoint_path`` given: build ``model_name`` without weights and load
      that file (raw state dict or ``{"state_dict": ...}``; ``.safetensors``
      too).  ``info.weights`` is the path.
    * else ``pretrained`` is an open_clip tag (``openai``, ``laion2b_s34b_b79k``,
      ...) or a local weights file: the weights must already be in the local
      cache (``cache_dir``, or the default Hugging Face / ``~/.cache/clip``
      caches).  Network access is disabled.
    * ``pretrained`` in ``("", "none", "random")``: random init -- only with
      ``allow_random_weights=True`` (tests / smoke runs), ``info.weights`` is
      ``"random (test only)"``.

    When the caches hold no weights of any model (a fresh install), a tag cannot
    load whatever it names: the fallback is decided without importing torch and
    open_clip (seconds per run), so the model name and tag are checked only once
    some weights are cached.

    Whenever the CLIP model cannot be built a :class:`DescriptorEmbedder` is
    returned instead, with ``info.fallback_reason`` saying why (and a WARNING
    logged on ``dedup_assets.embeddings``).
    """
    pretrained = (pretrained or "").strip()
    weights_label = pretrained
    is_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if (
        not checkpoint_path
        and not is_schema
        and pretrained.lower() not in _RANDOM_TAGS
        and not os.path.isfile(pretrained)
        and _no_cached_weights(cache_dir)
    ):  # the default install: no weights anywhere, so no need to import torch and open_clip
        where = cache_dir or "the default open_clip / Hugging Face caches"
        return _fallback(
            f"no weights for {model_name}/{pretrained}: the open_clip cache ({where}) holds no "
            "model weights at all, and downloads are disabled"
        )
    try:
        import open_clip
        import torch
    except Exception as exc:  # pragma: no cover - deps missing
        return _fallback(f"open_clip / torch cannot be imported: {_describe_error(exc)}")

    try:
        _register_model_configs()
    except Exception as exc:  # pragma: no cover - defensive
        logger.debug("could not register packaged model configs: %s", exc)

    if threads is not None and threads > 0:
        torch.set_num_threads(int(threads))

    try:
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
    except Exception as exc:
        return _fallback(f"invalid device/precision ({device!r}, {precision!r}): {exc}")

    if not is_schema and open_clip.get_model_config(model_name) is None:
        return _fallback(f"unknown open_clip model architecture {model_name!r}")

    create_kwargs: dict[str, Any] = {}
    load_file: str | None = None
    if checkpoint_path:
        ckpt = str(checkpoint_path)
        if not os.path.isfile(ckpt):
            return _fallback(f"checkpoint {ckpt} for {model_name} does not exist or is not a file")
        load_file = ckpt
        weights_label = ckpt
        create_pretrained: str | None = None
    elif is_schema:
        create_pretrained = None  # the schema carries the weights; open_clip ignores `pretrained`
        weights_label = model_name
    elif pretrained.lower() in _RANDOM_TAGS:
        if not allow_random_weights:
            return _fallback(
                f"pretrained={pretrained!r} would give a randomly initialised {model_name}, "
                "which is only allowed with allow_random_weights=True (tests / smoke runs)"
            )
        create_pretrained = None
        weights_label = "random (test only)"
    else:
        pcfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if pcfg:
            local = _cached_pretrained_file(pcfg, cache_dir)
            if local is None:
                where = cache_dir or "the default open_clip / Hugging Face caches"
                return _fallback(
                    f"no weights for {model_name}/{pretrained} in the open_clip cache ({where}) "
                    "and downloads are disabled"
                )
            create_pretrained = local
            create_kwargs.update(
                force_quick_gelu=bool(pcfg.get("quick_gelu", False)),
                image_mean=pcfg.get("mean"),
                image_std=pcfg.get("std"),
                image_interpolation=pcfg.get("interpolation"),
                image_resize_mode=pcfg.get("resize_mode"),
            )
        elif os.path.isfile(pretrained):
            create_pretrained = pretrained
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            return _fallback(
                f"{pretrained!r} is neither a known open_clip pretrained tag for {model_name} "
                f"(known: {', '.join(tags) or 'none'}) nor an existing weights file"
            )

    try:
        with _hf_offline():
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=create_pretrained, cache_dir=cache_dir, **create_kwargs
            )
            if load_file is not None:
                open_clip.load_checkpoint(model, load_file, strict=True)
    except Exception as exc:
        what = f"checkpoint {load_file}" if load_file else f"weights {weights_label or 'none'}"
        return _fallback(f"could not build {model_name} with {what}: {_describe_error(exc)}")

    try:
        model = model.to(device=dev).eval()
        fingerprint = _weights_fingerprint(model)
    except Exception as exc:
        return _fallback(f"could not move {model_name} to {dev}: {_describe_error(exc)}")

    info = EmbedderInfo(
        kind="clip",
        model=model_name,
        weights=weights_label,
        device=dev,
        precision="fp32",
        fallback_reason=None,
        dim=int(getattr(getattr(model, "visual", None), "output_dim", 0) or 0),
        weights_fingerprint=fingerprint,
    )
    embedder = ClipEmbedder(model, preprocess, info, batch_size=batch_size)
    probe = _probe_batch(embedder.size) if (not info.dim or prec != "fp32") else None
    if not info.dim:
        with torch.inference_mode():
            info.dim = int(model.encode_image(embedder._normalise(probe[:1])).shape[-1])
    if prec != "fp32":
        ref = embedder.embed_uint8(probe)  # the fp32 reference of the probe
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        try:
            model.to(dtype=dtype)
            embedder.dtype = dtype
            info.precision = prec
            got = embedder.embed_uint8(probe)
            info.precision_cosine = round(float(np.min(np.sum(got * ref, axis=1))), 6)
        except Exception as exc:
            logger.warning("%s in %s failed on %s (%s); using fp32", model_name, prec, dev, _describe_error(exc))
            got, info.precision_cosine = None, None
        ok = got is not None and info.precision_cosine >= MIN_PRECISION_COSINE
        if not ok and (precision or "auto").lower() in ("auto", "amp"):
            if got is not None:
                logger.warning(
                    "%s in %s keeps only cosine %.5f to fp32 (< %s); using fp32",
                    model_name, prec, info.precision_cosine, MIN_PRECISION_COSINE,
                )
            model.to(dtype=torch.float32)
            embedder.dtype = torch.float32
            info.precision = "fp32"
        elif got is None:
            return _fallback(f"could not run {model_name} in {prec} on {dev}")
    logger.info("CLIP embedder ready: %s", info)
    return embedder
