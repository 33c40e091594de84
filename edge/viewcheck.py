"""Has a PTZ camera been turned away from its calibrated preset? ORB features (OpenCV).

Each preset has a reference view (an image file, or the first frame the agent sees at that
preset). A frame is matched against it: ORB keypoints, Hamming brute-force matching with
Lowe's ratio test and a RANSAC similarity transform. The view is "at the preset" when enough
matches are inliers and the transform moves the image corners by less than ``tolerance`` of
the image diagonal; otherwise it has moved, and :meth:`ViewChecker.which` says which other
calibrated preset (if any) the camera now shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class ViewMatch:
    ok: bool
    shift_px: float  # mean corner displacement (reference pixels); inf without a transform
    inliers: int
    reason: str = ""


class ViewReference:
    def __init__(self, image: np.ndarray, work_width: int = 480, n_features: int = 1000):
        self.work_width = work_width
        self.orb = cv2.ORB_create(nfeatures=n_features)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.gray, self.scale = self._prep(image)
        self.kp, self.des = self.orb.detectAndCompute(self.gray, None)
        if self.des is None or len(self.kp) < 20:
            raise ValueError("reference view has too little texture for feature matching")

    def _prep(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        s = self.work_width / gray.shape[1]
        if abs(s - 1) > 1e-3:
            gray = cv2.resize(gray, (self.work_width, round(gray.shape[0] * s)), interpolation=cv2.INTER_AREA)
        return gray, s

    def match(self, frame: np.ndarray, tolerance: float = 0.02, min_inliers: int = 15) -> ViewMatch:
        gray, _ = self._prep(frame)
        kp, des = self.orb.detectAndCompute(gray, None)
        if des is None or len(kp) < 10:
            return ViewMatch(False, float("inf"), 0, "too few features in the frame")
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
    """Reference views per preset; tells whether a frame shows the current preset or another."""

    def __init__(self, tolerance: float = 0.02):
        self.tolerance = tolerance
        self.refs: dict[str, ViewReference] = {}

    def set_reference(self, preset_id: str, image: np.ndarray) -> None:
        self.refs[preset_id] = ViewReference(image)

    def check(self, preset_id: str, frame: np.ndarray) -> ViewMatch:
        ref = self.refs.get(preset_id)
        if ref is None:
            return ViewMatch(True, 0.0, 0, "no reference view")
        return ref.match(frame, self.tolerance)

    def which(self, frame: np.ndarray) -> str | None:
        """The calibrated preset this frame shows, or None."""
        best, best_shift = None, float("inf")
        for pid, ref in self.refs.items():
            m = ref.match(frame, self.tolerance)
            if m.ok and m.shift_px < best_shift:
                best, best_shift = pid, m.shift_px
        return best
