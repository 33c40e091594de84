"""Night and weather, made from daylight frames (training augmentation for the density head).

The Hongyadong peak is a floodlit night view; the development photos are daylight. Each
function takes a BGR uint8 frame and a numpy Generator and returns a new frame:

* :func:`low_light`:  dusk/night exposure — a darkening gamma curve, a colder white balance,
  a lower signal, the sensor noise a camera adds when it raises gain, and JPEG-like blockiness;
* :func:`floodlight`: a dark scene lit by a few warm (sodium / LED) light pools and bright
  lamps with bloom, as the cliff façade and the bridge are lit at night;
* :func:`rain`:      slanted rain streaks, a wet-lens blur and a veil of haze.

``scripts/train_density_head.py --augment`` adds one such version per training frame;
tests/test_night_weather.py checks that the counter's count on darkened, noisy dev frames stays
near its daylight count (with its own degradations, not these functions).
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("low_light", "floodlight", "rain")


def _noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    n = rng.normal(0.0, sigma, img.shape[:2] + (1,)) + rng.normal(0.0, sigma * 0.4, img.shape)
    return np.clip(img.astype(np.float32) + n, 0, 255)


def low_light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    x = x ** rng.uniform(1.6, 2.8) * rng.uniform(0.35, 0.7)
    x *= np.array([rng.uniform(1.0, 1.25), 1.0, rng.uniform(0.8, 1.0)], np.float32)  # BGR: colder
    out = _noise(x * 255.0, rng, rng.uniform(3.0, 10.0))
    q = int(rng.integers(35, 75))
    ok, enc = cv2.imencode(".jpg", out.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR) if ok else out.astype(np.uint8)


def floodlight(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    x = (img.astype(np.float32) / 255.0) ** rng.uniform(1.8, 2.6) * rng.uniform(0.25, 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = np.full((h, w), rng.uniform(0.1, 0.3), np.float32)
    for _ in range(int(rng.integers(1, 4))):  # pools of light on the ground and the façade
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.15, 0.45) * max(h, w)
        light += rng.uniform(0.6, 1.6) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    warm = np.array([rng.uniform(0.35, 0.7), rng.uniform(0.7, 0.9), 1.0], np.float32)  # BGR: sodium orange
    y = x * (1.0 + 2.2 * light[..., None] * warm)
    lamps = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 8))):  # bright lamps with bloom
        cv2.circle(lamps, (int(rng.uniform(0, w)), int(rng.uniform(0, h * 0.6))), int(rng.integers(2, 6)), 1.0, -1)
    bloom = cv2.GaussianBlur(lamps, (0, 0), max(h, w) * 0.012) * 3.0 + lamps
    y += bloom[..., None] * warm
    out = _noise(np.clip(y, 0, 1) * 255.0, rng, rng.uniform(2.0, 7.0))
    return out.astype(np.uint8)


def rain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    haze = rng.uniform(0.1, 0.35)
    x = x * (1 - haze) + haze * rng.uniform(150, 210)
    streaks = np.zeros((h, w), np.float32)
    n = int(h * w / rng.uniform(250, 900))
    ys, xs = rng.uniform(0, h, n).astype(int), rng.uniform(0, w, n).astype(int)
    streaks[ys, xs] = rng.uniform(0.5, 1.0, n)
    length = int(max(h, w) * rng.uniform(0.015, 0.04)) | 1
    k = np.zeros((length, length), np.float32)
    k[:, length // 2] = 1.0
    rot = cv2.getRotationMatrix2D((length / 2, length / 2), rng.uniform(-25, 25), 1.0)
    k = cv2.warpAffine(k, rot, (length, length))
    streaks = cv2.filter2D(streaks, -1, k / max(float(k.sum()), 1e-6)) * length * 0.5
    x = x + np.clip(streaks, 0, 1)[..., None] * rng.uniform(60, 120)
    x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.6, 1.6))
    return np.clip(_noise(x, rng, rng.uniform(1.0, 4.0)), 0, 255).astype(np.uint8)


def degrade(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    return {"low_light": low_light, "floodlight": floodlight, "rain": rain}[kind](img, rng)
