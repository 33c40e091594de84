"""Has a PTZ camera been turned away from its calibrated preset? ORB features (OpenCV).

Each preset has one or more reference views (day, night…), captured by ``crowdflow calibrate
--save-reference`` and stored beside the site file; a preset without one adopts the first
frame with enough texture. A frame is matched against them: ORB keypoints, Hamming
brute-force matching with Lowe's ratio test and a RANSAC similarity transform. The view is "at
the preset" when enough matches are inliers and the transform moves the image corners by less
than ``tolerance`` of the image diagonal; otherwise it has moved, and
:meth:`ViewChecker.which` says which other calibrated preset (if any) the camera now shows.

Three answers, not two: a frame without enough texture to match (black, fog, a lens cap, a
night view against a day reference) is *unverified* — neither at the preset nor moved — and a
reference with too little texture is refused with :class:`ViewUnverifiable`, never a crash.

:class:`FrozenDetector` notices a picture that stopped changing (a hung encoder repeats the
last frame): real footage always changes a little, if only by sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


MIN_KEYPOINTS = 20  # a view needs this many ORB keypoints to be matched at all


class ViewUnverifiable(ValueError):
    """The image has too little texture to serve as (or be checked against) a reference."""


@dataclass
class ViewMatch:
    ok: bool
    shift_px: float  # mean corner displacement (reference pixels); inf without a transform
    inliers: int
    reason: str = ""
    verifiable: bool = True  # False: the frame has too little texture to tell (not "moved")


class ViewReference:
    BLUR = 1.5  # px at the work width

    def __init__(self, image: np.ndarray, work_width: int = 480, n_features: int = 1000,
                 frame_features: int = 500):
        self.work_width = work_width
        self.orb = cv2.ORB_create(nfeatures=n_features)
        # A checked frame needs fewer keypoints than the reference it is matched against: half
        # as many halve the matching (the costliest step, ~5 ms a check at 1,000 × 1,000) and
        # leave ~100–150 inliers on a view at its preset (15 needed).
        self.frame_orb = cv2.ORB_create(nfeatures=frame_features)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.gray, self.scale = self._prep(image)
        self.kp, self.des = self.orb.detectAndCompute(self.gray, None)
        if self.des is None or len(self.kp) < MIN_KEYPOINTS:
            raise ViewUnverifiable(f"reference view has too little texture for feature matching "
                                   f"({0 if self.des is None else len(self.kp)} keypoints, needs {MIN_KEYPOINTS})")

    def _prep(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        s = self.work_width / gray.shape[1]
        if abs(s - 1) > 1e-3:
            gray = cv2.resize(gray, (self.work_width, round(gray.shape[0] * s)), interpolation=cv2.INTER_AREA)
        # A slight blur keeps the corners of real structure and removes those of noise: a snowy
        # picture (lost signal, high gain at night) has no texture to verify a view with.
        return cv2.GaussianBlur(gray, (0, 0), self.BLUR), s

    def match(self, frame: np.ndarray, tolerance: float = 0.02, min_inliers: int = 15) -> ViewMatch:
        gray, _ = self._prep(frame)
        kp, des = self.frame_orb.detectAndCompute(gray, None)
        if des is None or len(kp) < MIN_KEYPOINTS:
            return ViewMatch(False, float("inf"), 0, f"too little texture to verify the view "
                             f"({0 if des is None else len(kp)} keypoints)", verifiable=False)
        pairs = self.matcher.knnMatch(self.des, des, k=2)
        good = [m for m, *rest in pairs if rest and m.distance < 0.75 * rest[0].distance]
        if len(good) < min_inliers:
            return ViewMatch(False, float("inf"), len(good), f"only {len(good)} feature matches")
        src = np.float32([self.kp[m.queryIdx].pt for m in good])
        dst = np.float32([kp[m.trainIdx].pt for m in good])
        M, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
        inliers = int(mask.sum()) if mask is not None else 0
        if M is None or inliers < min_inliers:
            return ViewMatch(False, float("inf"), inliers, f"only {inliers} consistent matches")
        h, w = self.gray.shape
        corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        moved = corners @ M[:, :2].T + M[:, 2]
        shift = float(np.linalg.norm(moved - corners, axis=1).mean())
        diag = float(np.hypot(w, h))
        ok = shift <= tolerance * diag
        return ViewMatch(ok, shift / self.scale, inliers, "" if ok else f"view shifted by {shift / self.scale:.0f} px")


class ViewChecker:
    """Reference views per preset; tells whether a frame shows the current preset, another one,
    or cannot be told (too little texture)."""

    def __init__(self, tolerance: float = 0.02):
        self.tolerance = tolerance
        self.refs: dict[str, list[ViewReference]] = {}

    def set_reference(self, preset_id: str, image: np.ndarray, add: bool = False) -> None:
        """Make ``image`` the preset's reference (``add``: one more, e.g. the night view).
        Raises :class:`ViewUnverifiable` for an image with too little texture."""
        ref = ViewReference(image)
        self.refs[preset_id] = (self.refs.get(preset_id, []) if add else []) + [ref]

    def check(self, preset_id: str, frame: np.ndarray) -> ViewMatch:
        refs = self.refs.get(preset_id)
        if not refs:
            return ViewMatch(False, float("inf"), 0, "no reference view for this preset", verifiable=False)
        best = None
        for ref in refs:
            m = ref.match(frame, self.tolerance)
            if m.ok:
                return m
            if best is None or (m.verifiable, m.inliers) > (best.verifiable, best.inliers):
                best = m
        return best

    def which(self, frame: np.ndarray) -> str | None:
        """The calibrated preset this frame shows, or None."""
        best, best_shift = None, float("inf")
        for pid in self.refs:
            m = self.check(pid, frame)
            if m.ok and m.shift_px < best_shift:
                best, best_shift = pid, m.shift_px
        return best


class FrozenDetector:
    """Has the picture stopped changing? Each frame is reduced to a ~160-px-wide grey thumbnail
    (every k-th pixel);
    a frame whose thumbnail differs from the previous one by less than ``max_mean_diff`` grey
    levels on average, with fewer than ``max_changed`` of its pixels changed by more than 3
    levels, is a repeat. ``frozen`` turns true once repeats have lasted ``after_s`` seconds
    (frame timestamps), and false on the first frame that changed."""

    def __init__(self, after_s: float = 10.0, max_mean_diff: float = 0.1, max_changed: float = 0.001):
        self.after_s = after_s
        self.max_mean_diff = max_mean_diff
        self.max_changed = max_changed
        self._prev: np.ndarray | None = None
        self.since: float | None = None  # timestamp of the first repeated frame
        self.frozen = False

    def update(self, t: float, frame: np.ndarray) -> bool:
        k = max(1, frame.shape[1] // 160)
        small = np.ascontiguousarray(frame[::k, ::k])  # every k-th pixel: a repeat is a repeat everywhere
        thumb = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        prev, self._prev = self._prev, thumb.astype(np.int16)
        if prev is None or prev.shape != self._prev.shape:
            self.since, self.frozen = None, False
            return False
        d = np.abs(self._prev - prev)
        repeat = float(d.mean()) < self.max_mean_diff and float((d > 3).mean()) < self.max_changed
        if not repeat:
            self.since, self.frozen = None, False
        else:
            self.since = t if self.since is None else self.since
            self.frozen = t - self.since >= self.after_s
        return self.frozen
