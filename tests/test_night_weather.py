"""Night and weather: the counter's count on darkened, noisy and hazy versions of held-back
dev frames, against its daylight count.

The frames are the Beijing-BRT CCTV groups held back from training (edge.datasets
BRT_VAL_GROUPS) and held-back ShanghaiTech B street photos; the degradations are this test's
own (a gamma-and-gain dusk exposure with sensor noise, and a fog/rain veil), not the training
augmentation of edge.augment. Stated limits (docs/performance.md), as the mean and the largest
relative change of the count against daylight:

* street photos at dusk:            mean ≤ 10 %, each ≤ 20 %;
* haze/fog on both sets:            mean ≤ 15 %, each ≤ 35 % (auto-levels stretch low contrast);
* CCTV platforms at dusk:           a KNOWN GAP — the small, steeply seen heads of these
  360×640 frames drown in the noise: measured mean 48 %, largest 91 % (undercount; 9 frames,
  2026-12-03). Held to that (mean ≤ 55 %, each ≤ 95 %) so it cannot get worse unseen; brightening
  or denoising the dark frame first made the density count worse (45 % → gain 55 %, denoise +
  gain 59 %, inverse gamma 75 %: docs/performance.md).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge import datasets

from .conftest import SHARED, shared_path


def dusk(img, rng):
    x = (img.astype(np.float32) / 255.0) ** 2.0 * 0.45  # a dusk exposure: darker, flatter shadows
    x = x * 255.0 + rng.normal(0.0, 5.0, img.shape)  # the gain's sensor noise
    return np.clip(x, 0, 255).astype(np.uint8)


def veil(img, rng):
    x = img.astype(np.float32) * 0.7 + 0.3 * 180.0 + rng.normal(0.0, 3.0, img.shape)  # fog / rain haze
    return cv2.GaussianBlur(np.clip(x, 0, 255).astype(np.uint8), (0, 0), 1.0)


@pytest.fixture(scope="module")
def counter(detector, model_path):
    from edge.counter import CrowdCounter
    from edge.density import DEFAULT_HEAD, load_density_model

    return CrowdCounter(detector, load_density_model(DEFAULT_HEAD, model_path, threads=2))


def frames(name, step):
    shared_path("data", "beijing_brt_cctv" if name == "brt" else "shtech_b_train")
    return [s for s in datasets.load(name, SHARED) if s.part == "val"][::step]


def changes(counter, samples, degrade):
    rng = np.random.default_rng(0)
    out = []
    for s in samples:
        img = cv2.imread(str(s.path))
        day = counter.count(img).count
        out.append(abs(counter.count(degrade(img, rng)).count - day) / max(day, 1.0))
    return np.array(out)


@pytest.mark.parametrize("name,step,degrade,mean_limit,one_limit", [
    ("shtech", 16, dusk, 0.10, 0.20),
    ("shtech", 16, veil, 0.15, 0.35),
    ("brt", 20, veil, 0.15, 0.35),
    ("brt", 20, dusk, 0.55, 0.95),  # the known gap (module docstring)
])
def test_count_in_the_dark_and_haze_against_daylight(counter, name, step, degrade, mean_limit, one_limit):
    c = changes(counter, frames(name, step), degrade)
    assert len(c) >= 5
    assert c.mean() <= mean_limit and c.max() <= one_limit, np.round(c, 2)
