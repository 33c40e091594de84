"""The crowd counter: perspective-aware tiled detection or a density map, chosen by regime.

* :class:`PersonScale` says how tall (pixels) a standing person appears at each image row:
  from a calibrated camera (ground homography + camera height) or inferred from the image
  itself (box heights of a first full-frame detection pass are linear in the foot row on a
  flat ground plane).
* :func:`plan_tiles` cuts the image into horizontal bands of square tiles, each small enough
  that, once resized to the detector's input, the smallest person in it reaches the
  detector's working height. Neighbouring tiles overlap by a person height, so every person
  lies whole in at least one tile.
* :func:`merge_tiles` maps tile boxes back, drops boxes cut by an interior tile border (the
  whole person is in the neighbouring tile) and removes the duplicates of the overlaps with
  torchvision's NMS: nobody is counted twice on a seam.
* :class:`CrowdCounter` runs the density model first (cheap); where it finds a dense crowd the
  density count is used, elsewhere the tiled detector's. Every estimate carries its method and a
  confidence: one minus the relative error that method showed at that count when measured
  (:data:`CONFIDENCE`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .density import DensityResult
from .detector import Detections

PERSON_HEIGHT_M = 1.7


@dataclass(frozen=True)
class CounterSettings:
    target_px: float = 32.0  # person height the detector needs, in its input pixels
    max_upscale: float = 3.0  # tiles are never enlarged more than this
    max_tiles: int = 8  # time budget: tiles per frame at most
    # Density-model count from which the density map is used. The head reads crowds better than
    # detection at every count from about 8 people, on street photos and on CCTV seen from above
    # (detection misses the occluded and the steeply seen: 30–37 % low on the BRT platforms); 8
    # minimises mean relative error on the tuning parts (scripts/eval_counting.py). Under it
    # (a few separated people, e.g. the vtest plaza) detection is exact and clutter cannot
    # add a person's worth of density.
    dense_count: float = 8.0
    dense_min_count: float = 5.0  # a calibrated zone this crowded (edge.dense_per_m2) is counted by density from this many people
    dense_per_m2: float = 1.0
    nms_iou: float = 0.5
    tile_conf: float = 0.15  # detection threshold inside enlarged tiles (tuning part: MAE 14.9 → 12.0 at 0.25 → 0.15)
    auto_levels: bool = True  # stretch hazy, low-contrast frames before counting (auto_levels)
    edge_margin_px: float = 3.0  # in detector pixels: a box this close to an interior border is cut


class PersonScale:
    """Pixel height of a standing person as a function of the image row of the feet."""

    def __init__(self, a: float, b: float, horizon: float | None = None, source: str = "image"):
        self.a, self.b = float(a), float(b)  # h(v) = a + b·v
        self.horizon = horizon  # rows above this show no ground
        self.source = source

    def __call__(self, v) -> np.ndarray:
        return np.maximum(self.a + self.b * np.asarray(v, dtype=np.float64), 1.0)

    def scaled(self, k: float) -> PersonScale:
        return PersonScale(self.a * k, self.b * k, self.horizon, self.source)

    def observed_ratio(self, det: Detections, frame_h: int) -> float | None:
        """Median of seen box height ÷ predicted height (boxes not cut by the bottom border)."""
        if len(det) < 3:
            return None
        feet = det.xyxy[:, 3]
        keep = feet < frame_h - 2
        if keep.sum() < 3:
            return None
        return float(np.median((det.xyxy[keep, 3] - det.xyxy[keep, 1]) / self(feet[keep])))

    @classmethod
    def from_geometry(cls, geometry, frame_size: tuple[int, int]) -> PersonScale:
        """From a calibrated preset: a person's head seen from the camera lies on the ground ray
        through the head, which meets the ground at G + (G − C)·h/(H − h) (C: the camera's
        ground point, H its height, G the foot point)."""
        hom = geometry.homography
        w, h = geometry.image_size
        H = max(geometry.camera.height_m, PERSON_HEIGHT_M + 0.5)
        rows = np.linspace(0, h - 1, 24)
        feet_px = np.c_[np.full_like(rows, w / 2), rows]
        g = hom.to_ground(feet_px)
        ok = np.all(np.isfinite(g), axis=1)
        c = geometry.position_m
        heads_g = g[ok] + (g[ok] - c) * (PERSON_HEIGHT_M / (H - PERSON_HEIGHT_M))
        heads_px = hom.to_image(heads_g)
        heights = rows[ok] - heads_px[:, 1]
        good = np.isfinite(heights) & (heights > 0)
        sy = frame_size[1] / h
        if good.sum() < 2:
            return cls(frame_size[1] / 4, 0.0, source="calibration")
        b, a = np.polyfit(rows[ok][good] * sy, heights[good] * sy, 1)
        horizon = float(rows[ok][good].min() * sy) if not good.all() or not ok.all() else 0.0
        return cls(a, b, horizon=max(0.0, horizon), source="calibration")

    @classmethod
    def from_detections(cls, det: Detections, frame_h: int) -> PersonScale:
        """Fit box height against foot row; without enough boxes assume a typical street view."""
        if len(det) >= 4:
            hts = det.xyxy[:, 3] - det.xyxy[:, 1]
            feet = det.xyxy[:, 3]
            # people cut by the bottom border are shorter than they stand: leave them out
            keep = feet < frame_h - 2
            if keep.sum() >= 4 and np.ptp(feet[keep]) > frame_h * 0.3:
                b, a = np.polyfit(feet[keep], hts[keep], 1)
                if b > 0.15 and a + b * frame_h * 0.1 > 2:
                    return cls(a, b, source="image")
            # Seen only in a narrow band (often just the nearest people): assume the horizon at
            # the top of the frame, through the typical person seen.
            sel = keep if keep.any() else slice(None)
            hm, fm = float(np.median(hts[sel])), float(np.median(feet[sel]))
            return cls(0.0, hm / max(fm, 1.0), source="image")
        return cls(0.02 * frame_h, 0.16, source="prior")


@dataclass
class Tile:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def size(self) -> tuple[int, int]:
        return self.x1 - self.x0, self.y1 - self.y0


def _spans(lo: int, hi: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of ``size`` covering [lo, hi) with at least ``overlap`` between neighbours."""
    length = hi - lo
    if size >= length:
        return [(lo, hi)]
    n = int(np.ceil((length - overlap) / max(1, size - overlap)))
    starts = np.linspace(lo, hi - size, n).round().astype(int)
    return [(int(s), int(s) + size) for s in starts]


def plan_tiles(width: int, height: int, scale: PersonScale, imgsz: int, s: CounterSettings = CounterSettings()) -> list[Tile]:
    """Square tiles, band by band from the top, sized so the band's smallest person reaches
    ``target_px`` in the detector input. A frame that needs no enlargement is one tile."""
    full = imgsz / max(width, height)  # letterbox scale of the whole frame
    top = int(scale.horizon or 0)
    top = max(0, int(top - float(scale(top)) * 1.15))  # whole people standing on the top row
    target, upscale = s.target_px, s.max_upscale
    for _ in range(8):  # shrink the target until the plan fits the tile budget
        if scale(scale.horizon or 0) * full >= target:
            return [Tile(0, 0, width, height)]
        tiles: list[Tile] = []
        a = top
        while a < height:
            need = min(upscale, target / float(scale(a)))
            side = int(min(max(imgsz / need, 32), width, height))
            if imgsz / side <= full * 1.05:  # no better than the whole frame: one last band
                side = height - a
            b = min(height, a + side)
            person = int(np.ceil(float(scale(b)) * 1.15))
            overlap = min(person, side // 2)
            for x0, x1 in _spans(0, width, min(side, width), overlap):
                tiles.append(Tile(x0, a, x1, b))
            if b >= height:
                break
            a = max(a + 1, b - overlap)
        if len(tiles) <= s.max_tiles:
            return tiles
        target *= 0.85
        upscale = max(1.0, upscale * 0.8)
    return tiles


def merge_tiles(tiles: list[Tile], dets: list[Detections], width: int, height: int, imgsz: int,
                s: CounterSettings = CounterSettings()) -> Detections:
    """Tile detections → frame detections: drop boxes cut by an interior border, then NMS."""
    import torch
    from torchvision.ops import nms

    boxes, scores = [], []
    for t, d in zip(tiles, dets):
        if not len(d):
            continue
        tw, th = t.size
        eps = s.edge_margin_px * max(tw, th) / imgsz  # detector pixels → frame pixels
        xy = d.xyxy + np.array([t.x0, t.y0, t.x0, t.y0])
        cut = np.zeros(len(xy), dtype=bool)
        if t.x0 > 0:
            cut |= xy[:, 0] <= t.x0 + eps
        if t.x1 < width:
            cut |= xy[:, 2] >= t.x1 - eps
        if t.y0 > 0:
            cut |= xy[:, 1] <= t.y0 + eps
        if t.y1 < height:
            cut |= xy[:, 3] >= t.y1 - eps
        boxes.append(xy[~cut])
        scores.append(d.conf[~cut])
    if not boxes:
        return Detections(np.zeros((0, 4)), np.zeros(0))
    xyxy = np.concatenate(boxes)
    conf = np.concatenate(scores)
    if len(tiles) > 1 and len(xyxy):
        keep = nms(torch.from_numpy(xyxy).float(), torch.from_numpy(conf).float(), s.nms_iou).numpy()
        keep.sort()
        xyxy, conf = xyxy[keep], conf[keep]
    return Detections(xyxy, conf)


# ---- the counting policy ------------------------------------------------------------------


def auto_levels(frame: np.ndarray, min_range: float = 150.0, min_mean: float = 70.0) -> np.ndarray:
    """Stretch a hazy, low-contrast frame (fog, rain, a dirty dome) to the full grey range.

    A frame whose 1st–99th percentile grey range is under ``min_range`` levels, and which is
    not dark (mean ≥ ``min_mean``), is stretched linearly so those percentiles become 0 and
    255; other frames are returned as they are. Measured on the held-back CCTV frames under a
    30 % haze veil: the density count's change from daylight fell from ~30 % to ~9 %; dark
    frames are left alone (stretching amplified their noise and made counts worse)."""
    k = max(1, frame.shape[1] // 160)  # every k-th pixel: statistics at ~0.2 ms a frame
    small = np.ascontiguousarray(frame[::k, ::k])
    g = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    cdf = np.cumsum(np.bincount(g.ravel(), minlength=256)) / g.size
    lo, hi = float(np.searchsorted(cdf, 0.01)), float(np.searchsorted(cdf, 0.99))
    if hi - lo >= min_range or g.mean() < min_mean:
        return frame
    lut = np.clip((np.arange(256, dtype=np.float32) - lo) * 255.0 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)
    return cv2.LUT(frame, lut)


class Detector(Protocol):
    """What the counter needs of a person detector (:class:`edge.detector.PersonDetector`)."""

    imgsz: int

    def __call__(self, frame: np.ndarray) -> Detections: ...

    def detect_many(self, frames: list[np.ndarray], conf: float | None = None) -> list[Detections]: ...


class DensityModel(Protocol):
    """What the counter needs of a density model (:mod:`edge.density`): a map at 1/``stride``
    of the frame whose sum is the number of people; ``side`` asks for a quicker, coarser look."""

    stride: int

    def __call__(self, frame: np.ndarray, side: int | None = None) -> DensityResult: ...


# Confidence = 1 − the mean relative error that method showed at that count when measured on
# the tuning parts (never the held-back ones) by `scripts/eval_counting.py`: upper bounds of
# the count bins and the confidence in each. Density under 80: Beijing-BRT training groups with
# the shipped head (0.80 / 0.85 / 0.92, n = 155 / 58 / 22); from 80: ShanghaiTech B tuning part.
# Detection: BRT training groups under 10 (0.55, n = 27); 10–20 the mean of BRT (0.68) and
# street photos (0.57); from 20 street photos (0.77).
CONFIDENCE: dict[str, list[tuple[float, float]]] = {
    "density": [(20, 0.80), (40, 0.85), (80, 0.92), (160, 0.92), (320, 0.90), (float("inf"), 0.86)],
    "detect": [(10, 0.55), (20, 0.62), (float("inf"), 0.77)],
}


def confidence(method: str, count: float) -> float:
    table = CONFIDENCE["density" if method == "density" else "detect"]
    return next(c for upper, c in table if count < upper)


def choose(density_count: float | None, area_m2: float | None, s: CounterSettings) -> str:
    """The one policy: ``density`` or ``detect`` for a zone (or a whole frame) from what the
    density model sees there. Detection finds well-separated people exactly but misses the
    occluded ones of a crowd and people seen from above; the density map reads crowds well and
    can find a person's worth of density in clutter. So: density from ``dense_count`` people
    on, or where the ground is crowded (``dense_per_m2``, calibrated zones only)."""
    if density_count is None:
        return "detect"
    if density_count >= s.dense_count:
        return "density"
    if area_m2 and density_count >= s.dense_min_count and density_count / area_m2 >= s.dense_per_m2:
        return "density"
    return "detect"


@dataclass(frozen=True)
class ZoneEstimate:
    count: float
    method: str  # detect | tiled | density
    confidence: float


@dataclass
class ZoneLayout:
    """Where the zones lie in one camera view at one frame size, and how tall people look.

    Whole frame (``crowdflow count`` without a camera): one zone ``frame``, no ground plane,
    person size inferred from each image. Calibrated: the preset's zones, their visible ground
    (for detections' feet) and image masks (for the density map), the person size per row from
    the camera's height, corrected by the sizes actually seen (:meth:`learn_scale`)."""

    frame_size: tuple[int, int]
    zones: list[str]
    geometry: object | None = None  # edge.geometry.CameraGeometry
    base_scale: PersonScale | None = None
    masks: dict[str, np.ndarray] | None = None  # at the density map's resolution
    areas: dict[str, float] | None = None  # visible m² per zone
    top: float = 0.0  # rows above the highest zone need no people found
    k: float = 1.0  # observed ÷ calibrated person height
    k_n: int = 0
    k_tried: bool = False
    scale: PersonScale | None = None
    tiles: list[Tile] | None = None

    WHOLE = "frame"

    @classmethod
    def whole_frame(cls, frame_size: tuple[int, int], scale: PersonScale | None = None) -> ZoneLayout:
        return cls(frame_size, [cls.WHOLE], base_scale=scale, scale=scale)

    @classmethod
    def calibrated(cls, geometry, frame_size: tuple[int, int], stride: int) -> ZoneLayout:
        w, h = frame_size
        pw, ph = geometry.image_size
        mw, mh = max(1, w // stride), max(1, h // stride)
        masks = {}
        for zid, v in geometry.zones.items():
            m = np.zeros((mh, mw), dtype=np.uint8)
            cv2.fillPoly(m, [np.round(v.image_polygon * np.array([mw / pw, mh / ph])).astype(np.int32)], 1)
            masks[zid] = m.astype(bool)
        top = min((float(v.image_polygon[:, 1].min()) * h / ph for v in geometry.zones.values()), default=0.0)
        base = PersonScale.from_geometry(geometry, frame_size)
        return cls(frame_size, list(geometry.zones), geometry, base, masks,
                   {z: v.visible_area_m2 for z, v in geometry.zones.items()}, top=min(max(top, 0.0), h - 1.0))

    def plan(self, imgsz: int, s: CounterSettings) -> None:
        if self.base_scale is None:
            return
        self.scale = self.base_scale.scaled(self.k)
        self.scale.horizon = max(self.scale.horizon or 0.0, self.top)
        self.tiles = plan_tiles(*self.frame_size, self.scale, imgsz, s)
        self._planned_k = self.k

    def learn_scale(self, det: Detections, imgsz: int, s: CounterSettings) -> bool:
        """People may look larger or smaller than the calibration says (a wrong camera height,
        a zoomed lens): follow the observed box heights (first estimate, then a slow average,
        within 0.5–4×); re-plan the tiles when the factor has moved by a quarter (True)."""
        if self.geometry is None or self.base_scale is None:
            return False
        r = self.base_scale.observed_ratio(det, self.frame_size[1])
        if r is None:
            return False
        self.k = float(np.clip(r if self.k_n == 0 else 0.95 * self.k + 0.05 * r, 0.5, 4.0))
        self.k_n += 1
        if abs(self.k / getattr(self, "_planned_k", 1.0) - 1) > 0.25:
            self.plan(imgsz, s)
            return True
        return False

    def zone_sums(self, density: np.ndarray) -> dict[str, float]:
        if self.masks is None:
            return {self.WHOLE: float(density.sum())}
        return {z: float(density[m[: density.shape[0], : density.shape[1]]].sum()) for z, m in self.masks.items()}

    def zone_polygons_px(self) -> list[np.ndarray]:
        if self.geometry is None:
            return []
        w, h = self.frame_size
        pw, ph = self.geometry.image_size
        return [v.image_polygon * [w / pw, h / ph] for v in self.geometry.zones.values()]


@dataclass
class FrameCount:
    """Everything one frame's count produced: per-zone estimates and what they came from."""

    zones: dict[str, ZoneEstimate]
    detections: Detections | None
    density: np.ndarray | None  # density map (1/stride resolution) or None
    density_count: float | None
    tiles: list[Tile]
    scale: PersonScale | None
    ms: float = 0.0

    # the whole frame as one estimate (the only zone of an uncalibrated view)
    @property
    def count(self) -> float:
        return float(sum(e.count for e in self.zones.values()))

    @property
    def method(self) -> str:
        ms = {e.method for e in self.zones.values()}
        return ms.pop() if len(ms) == 1 else ("density" if "density" in ms else "tiled")

    @property
    def confidence(self) -> float:
        tot = self.count
        if not self.zones:
            return 0.0
        if tot <= 0:
            return float(min(e.confidence for e in self.zones.values()))
        return float(sum(e.confidence * e.count for e in self.zones.values()) / tot)


CountResult = FrameCount  # the name `crowdflow count` and older callers know


class CrowdCounter:
    """The one counting policy, for ``crowdflow count`` (whole frames) and the edge agent (the
    zones of a calibrated view). Plain code on a :class:`Detector` and a :class:`DensityModel`:
    no I/O, no clocks other than its own timing.

    Per zone: the density model's count there decides the method (:func:`choose`); dense zones
    take the density map's sum over the zone, the others the detections whose feet stand in it
    (tiled where people are too small for one detector pass). Each estimate says its method
    and a confidence (:data:`CONFIDENCE`)."""

    def __init__(self, detector: Detector, density: DensityModel | None = None,
                 settings: CounterSettings = CounterSettings()):
        self.detector = detector
        self.density = density
        self.s = settings

    @property
    def stride(self) -> int:
        return self.density.stride if self.density is not None else 8

    def layout(self, geometry, frame_size: tuple[int, int]) -> ZoneLayout:
        lay = ZoneLayout.calibrated(geometry, frame_size, self.stride)
        lay.plan(self.detector.imgsz, self.s)
        return lay

    def detect_tiled(self, frame: np.ndarray, scale: PersonScale) -> tuple[Detections, list[Tile]]:
        h, w = frame.shape[:2]
        imgsz = self.detector.imgsz
        tiles = plan_tiles(w, h, scale, imgsz, self.s)
        crops = [frame[t.y0:t.y1, t.x0:t.x1] for t in tiles]
        return merge_tiles(tiles, self.detector.detect_many(crops, conf=self.s.tile_conf), w, h, imgsz, self.s), tiles

    def look(self, frame: np.ndarray, layout: ZoneLayout, side: int | None = None) -> dict[str, float] | None:
        """The density model's count per zone (``side``: a quicker look at that long side)."""
        if self.density is None:
            return None
        return layout.zone_sums(self.density(frame, side=side).density)

    def dense_zones(self, sums: dict[str, float] | None, layout: ZoneLayout) -> set[str]:
        if sums is None:
            return set()
        areas = layout.areas or {}
        return {z for z, c in sums.items() if choose(c, areas.get(z), self.s) == "density"}

    def count(self, frame: np.ndarray, scale: PersonScale | None = None, mode: str = "auto",
              layout: ZoneLayout | None = None, dense: set[str] | None = None,
              whole: Detections | None = None) -> FrameCount:
        """Count ``frame``. ``layout`` None: the whole frame, person size ``scale`` (None: inferred
        from a first detection pass). ``dense``: the zones a recent look found dense (the agent
        looks once a second); None: decided from this frame's density map. ``whole``: detections
        of the whole frame already made (the agent's tracker pass), reused where one pass is the
        plan. ``mode``: auto, detect, tiled or density (forces the method everywhere)."""
        t0 = time.perf_counter()
        if self.s.auto_levels:
            frame = auto_levels(frame)
        h, w = frame.shape[:2]
        lay = layout or ZoneLayout.whole_frame((w, h), scale)
        zones = lay.zones
        dmap, dcount, sums = None, None, None
        if self.density is not None and (mode == "density" or (mode == "auto" and dense is None)):
            d = self.density(frame)
            dmap, dcount = d.density, d.count
            sums = lay.zone_sums(dmap)
        if mode == "density":
            dense_set = set(zones)
        elif mode == "auto":
            dense_set = set(dense) & set(zones) if dense is not None else self.dense_zones(sums, lay)
        else:
            dense_set = set()
        if dense_set and dmap is None:
            d = self.density(frame)
            dmap, dcount = d.density, d.count
            sums = lay.zone_sums(dmap)
        est: dict[str, ZoneEstimate] = {}
        det, tiles, used_scale = None, [], lay.scale
        if len(dense_set) < len(zones):
            det, tiles, used_scale = self._detect(frame, lay, mode, whole)
            method = "tiled" if len(tiles) > 1 else "detect"
            if lay.geometry is None:
                per_zone = {lay.WHOLE: float(len(det))}
            else:
                from .geometry import foot_points

                per_zone = {z: 0.0 for z in zones}
                if len(det):
                    feet = lay.geometry.scale_to_preset(foot_points(det.xyxy), (w, h))
                    per_zone.update({z: float(c) for z, c in lay.geometry.assign(feet).items()})
            for z in zones:
                if z not in dense_set:
                    est[z] = ZoneEstimate(per_zone.get(z, 0.0), method, confidence(method, per_zone.get(z, 0.0)))
        for z in dense_set:
            c = round(sums[z], 2)
            est[z] = ZoneEstimate(c, "density", confidence("density", c))
        return FrameCount({z: est[z] for z in zones}, det, dmap, dcount, tiles, used_scale,
                          ms=(time.perf_counter() - t0) * 1000)

    def _detect(self, frame, lay: ZoneLayout, mode: str, whole: Detections | None):
        h, w = frame.shape[:2]
        scale = lay.scale
        if mode == "detect":
            det = whole if whole is not None else self.detector(frame)
            return det, [Tile(0, 0, w, h)], scale
        if scale is None:  # uncalibrated: person size from a first full-frame pass
            whole = whole if whole is not None else self.detector(frame)
            scale = PersonScale.from_detections(whole, h)
        tiles = lay.tiles if lay.tiles is not None else plan_tiles(w, h, scale, self.detector.imgsz, self.s)
        if len(tiles) == 1:
            det = whole if whole is not None else self.detector(frame)
        else:
            if lay.geometry is not None and not lay.k_tried:  # first frame: check the calibrated person size
                lay.k_tried = True
                first = whole if whole is not None else self.detector(frame)
                if lay.learn_scale(first, self.detector.imgsz, self.s):
                    scale, tiles = lay.scale, lay.tiles
            crops = [frame[t.y0:t.y1, t.x0:t.x1] for t in tiles]
            det = merge_tiles(tiles, self.detector.detect_many(crops, conf=self.s.tile_conf), w, h,
                              self.detector.imgsz, self.s)
        if lay.geometry is not None and len(tiles) > 1 and lay.learn_scale(det, self.detector.imgsz, self.s):
            pass  # re-planned for the next frame
        return det, tiles, scale


ZoneCounter = CrowdCounter
