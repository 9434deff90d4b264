"""Imported by the worker processes' forkserver (:mod:`dedup_assets.core.parallel`) before it
forks any worker: the modules of every stage's worker functions and stage 1's compiled
kernels are loaded there once per process, and every worker of every pool starts with them.

Without it each new worker loads the numba kernels from their cache on its first image
(~0.7 s on a loaded 2-core machine), for every pool: stage 1, the global and local stages and
the gallery each start one. Nothing is written anywhere; a failure here only costs that time
back (the workers load what they need themselves).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from . import analyse, gallery, stage1, verify  # noqa: F401 - the worker functions' modules

logger = logging.getLogger(__name__)


def sample_images() -> list[bytes]:
    """A textured colour JPEG (DCT-scaled decode, area resize) and a gray PNG (the other
    decode path): between them they reach stage 1's kernels."""
    y, x = np.mgrid[0:480, 0:640]
    rng = np.random.default_rng(0)
    rgb = np.stack([x % 256, y % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    rgb = cv2.add(rgb, rng.integers(0, 40, rgb.shape, dtype=np.uint8))
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:300, :200])[1].tobytes()
    return [jpeg, png]


def warm_up() -> None:
    """Analyse the sample images once (loads the compiled kernels into this process)."""
    try:
        for data in sample_images():
            row = analyse.analyse_bytes(data)
            if row["status"] != "ok":
                logger.debug("warm-up image not analysed: %s", row["error_message"])
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        logger.debug("warm-up failed: %s", exc)


warm_up()
