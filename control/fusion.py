"""Per-zone occupancy filter: a two-state Kalman filter over (count, rate). Pure.

The filter's measurement is the zone's count fused on the ground (:func:`fuse`, below):
each camera measures the density of the ground it sees, parts of the zone seen by several
cameras are averaged by precision (never added), parts no camera sees are estimated with a
wider noise. Gate in/out counts enter as a
known input between measurements, so occupancy follows the flows and the direct counts keep
it from drifting. The rate state gives the trend used by the forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

SIGMA_ABS = 1.0  # persons: counting noise floor
SIGMA_REL = 0.10  # relative counting noise of a full-coverage, confident camera
RATE_NOISE = 1e-5  # (persons/s)² per s: how fast the underlying rate may wander (back-tested, tests/test_forecast.py)
COUNT_NOISE = 5.0  # persons² per s: sudden arrivals/departures the rate does not explain


@dataclass
class OccupancyFilter:
    n: float  # persons
    r: float = 0.0  # persons per second (trend not explained by gate flows)
    p_nn: float = 0.0
    p_nr: float = 0.0
    p_rr: float = 0.01
    t: float = 0.0  # time of the state

    @classmethod
    def start(cls, count: float, variance: float, t: float) -> "OccupancyFilter":
        return cls(n=count, p_nn=variance, t=t)

    def predict(self, t: float, net_flow: float = 0.0) -> None:
        """Advance to ``t``; ``net_flow`` = gate inflow − outflow counted since the last step."""
        dt = t - self.t
        if dt <= 0:
            self.n = max(0.0, self.n + net_flow)
            return
        self.n = max(0.0, self.n + self.r * dt + net_flow)
        # P ← F P Fᵀ + Q with F = [[1, dt], [0, 1]]
        p_nn = self.p_nn + 2 * dt * self.p_nr + dt * dt * self.p_rr + COUNT_NOISE * dt
        p_nr = self.p_nr + dt * self.p_rr
        p_rr = self.p_rr + RATE_NOISE * dt
        self.p_nn, self.p_nr, self.p_rr = p_nn, p_nr, p_rr
        self.t = t

    def update(self, z: float, variance: float) -> None:
        s = self.p_nn + variance
        k_n = self.p_nn / s
        k_r = self.p_nr / s
        y = z - self.n
        self.n = max(0.0, self.n + k_n * y)
        self.r += k_r * y
        p_nn = (1 - k_n) * self.p_nn
        p_nr = (1 - k_n) * self.p_nr
        p_rr = self.p_rr - k_r * self.p_nr
        self.p_nn, self.p_nr, self.p_rr = p_nn, p_nr, max(p_rr, 1e-9)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.p_nn, 0.0))


def measurement_variance(reference: float, coverage: float, confidence: float) -> float:
    """Noise of a zone-count estimate: grows as 1/coverage and 1/confidence.

    ``reference`` is a scale of the zone (its capacity), never the reading itself: a noise
    that grows with the reading makes low readings win every average."""
    coverage = min(1.0, max(coverage, 1e-3))
    confidence = min(1.0, max(confidence, 0.05))
    base = SIGMA_ABS**2 + (SIGMA_REL * reference) ** 2
    return base / (coverage * confidence)


# ----------------------------------------------------------------------------- fusion on the ground
#
# A zone is split by the cameras' ground footprints into parts seen by none, one or several
# cameras (control/ground.py). Each camera's reading is a density over the ground it sees;
# its noise depends on how much it sees and how sure it is, never on the reading itself
# (a noise that grows with the count would let a camera that reads 0 win every average).
# Parts seen by several cameras take their precision-weighted mean; parts seen by one take
# its reading; parts no fresh camera sees keep the last reading of the camera that saw them
# (history, its noise growing with age), else the density the zone's seen parts show now
# (neighbours; the filter's density when nothing is seen), with a wide noise and a low
# confidence.

HISTORY_DRIFT = 1e-3  # (persons/m²)² per s: how fast an unseen part's last density loses value
HISTORY_MAX_S = 600.0  # an older last reading is no longer history
NEIGHBOUR_REL = 0.5  # an unseen part estimated from the rest of the zone: 1 σ relative …
NEIGHBOUR_ABS = 0.05  # … plus this floor, persons/m²
HISTORY_CONFIDENCE = 0.5  # confidence the map shows for a part kept from history …
NEIGHBOUR_CONFIDENCE = 0.2  # … and for a part estimated from its neighbours


def reading_variance(visible_m2: float, area_per_visitor_m2: float, confidence: float) -> float:
    """Noise (persons/m²)² of one camera's density over ``visible_m2`` of walkable ground.

    The counting noise is scaled by the view's capacity (its size), not by what it reads,
    so two cameras on the same ground weigh the same whatever they count."""
    visible_m2 = max(visible_m2, 1e-3)
    confidence = min(1.0, max(confidence, 0.05))
    n_ref = visible_m2 / area_per_visitor_m2
    return (SIGMA_ABS**2 + (SIGMA_REL * n_ref) ** 2) / (visible_m2**2 * confidence)


@dataclass
class Reading:
    """One camera's density over the ground it sees, with its noise and confidence. Never
    changed once made (not frozen: that costs 4× to make, on the hot path)."""

    density: float
    variance: float
    confidence: float = 1.0


@dataclass(frozen=True)
class PartEstimate:
    cameras: tuple[str, ...]  # the cameras whose footprint covers the part
    area_m2: float
    density: float
    std: float  # persons/m²
    source: str  # "measured" (one camera), "fused" (several), "history", "neighbours"
    confidence: float


class Fused(NamedTuple):
    """A zone's fused count (a named tuple: :func:`fuse_many` makes one per zone and update)."""

    count: float
    variance: float  # persons², all of it
    estimated_variance: float  # persons², the part that comes from history and neighbours
    seen_m2: float  # walkable m² a fresh camera sees
    estimated_m2: float  # walkable m² taken from history or neighbours
    confidence: float
    parts: tuple[PartEstimate, ...] = ()  # per part (fuse() only; fuse_many leaves it empty)


def fuse(parts, readings: dict[str, Reading], history: dict[str, Reading],
         prior_density: float | None = None, prior_variance: float = 0.0,
         unplaced: dict[str, float] | None = None) -> Fused:
    """Fuse the fresh ``readings`` (camera → density) over the zone's ``parts``.

    ``history``: the last reading of cameras that saw a part and are no longer fresh, with
    their noise already grown by age. ``prior_density``: the zone's density before this
    update (the filter), used for parts no camera has seen. ``unplaced``: cameras whose view
    cannot be placed on the ground (unknown preset) → share of the zone they see; they are
    taken as a view of every part, their noise inflated by the share they do not see.
    Pure; the count's variance counts each camera once, however many parts it covers."""
    unplaced = unplaced or {}
    coef: dict[tuple[str, str], float] = {}  # (kind, camera) → persons per (persons/m²)
    measured_d: list[tuple[float, float]] = []
    pending: list = []
    est: list[PartEstimate] = []
    count = seen = 0.0
    conf_area = 0.0
    for part in parts:
        cams = [c for c in sorted(part.cameras) if c in readings]
        cams += [c for c in sorted(unplaced) if c in readings and c not in cams]
        if cams:
            w = {c: 1.0 / _var(readings[c], unplaced.get(c)) for c in cams}
            tot = sum(w.values())
            d = sum(w[c] * readings[c].density for c in cams) / tot
            for c in cams:
                coef[("r", c)] = coef.get(("r", c), 0.0) + part.area_m2 * w[c] / tot
            conf = sum(w[c] * readings[c].confidence for c in cams) / tot
            count += d * part.area_m2
            seen += part.area_m2
            conf_area += conf * part.area_m2
            measured_d.append((d, part.area_m2))
            est.append(PartEstimate(tuple(cams), part.area_m2, d, (1.0 / tot) ** 0.5,
                                    "fused" if len(cams) > 1 else "measured", conf))
        else:
            pending.append(part)
    estimated = 0.0
    var = 0.0  # of the estimated parts
    measured_coef = {c: k for (kind, c), k in coef.items() if kind == "r"}
    if measured_d:
        a = sum(x[1] for x in measured_d)
        seen_density = sum(d * x for d, x in measured_d) / a
    else:
        seen_density = None
    for part in pending:
        hist = [c for c in sorted(part.cameras) if c in history]
        estimated += part.area_m2
        if hist:
            w = {c: 1.0 / history[c].variance for c in hist}
            tot = sum(w.values())
            d = sum(w[c] * history[c].density for c in hist) / tot
            for c in hist:
                coef[("h", c)] = coef.get(("h", c), 0.0) + part.area_m2 * w[c] / tot
            est.append(PartEstimate(tuple(sorted(part.cameras)), part.area_m2, d, (1.0 / tot) ** 0.5,
                                    "history", HISTORY_CONFIDENCE))
            conf_area += HISTORY_CONFIDENCE * part.area_m2
        else:
            # Neighbours: the density the zone's seen parts show now (following them keeps
            # the zone's trend); with nothing seen, the filter's own density.
            if seen_density is not None:
                d0, v0 = seen_density, 0.0
                # the part copies the seen density: the cameras' noise reaches it too
                for c, k in measured_coef.items():
                    coef[("r", c)] = coef.get(("r", c), 0.0) + part.area_m2 * k / seen
            else:
                d0, v0 = (prior_density or 0.0), prior_variance
            vd = (NEIGHBOUR_REL * d0 + NEIGHBOUR_ABS) ** 2
            var += (vd + v0) * part.area_m2**2
            d = d0
            est.append(PartEstimate(tuple(sorted(part.cameras)), part.area_m2, d, vd**0.5,
                                    "neighbours", NEIGHBOUR_CONFIDENCE))
            conf_area += NEIGHBOUR_CONFIDENCE * part.area_m2
        count += d * part.area_m2
    measured_var = 0.0
    for (kind, c), k in coef.items():
        if kind == "r":
            measured_var += k * k * _var(readings[c], unplaced.get(c))
        else:
            var += k * k * history[c].variance
    total = seen + estimated
    return Fused(count=count, variance=measured_var + var, estimated_variance=var, seen_m2=seen, estimated_m2=estimated,
                 confidence=conf_area / total if total else 0.0, parts=tuple(est))


class FusedMany(NamedTuple):
    """:func:`fuse_many`'s answer: one array per figure of :class:`Fused`, one row per problem."""

    count: np.ndarray
    variance: np.ndarray
    estimated_variance: np.ndarray
    seen_m2: np.ndarray
    estimated_m2: np.ndarray
    confidence: np.ndarray


class _Layout:
    """A parts list flattened once (parts lists are cached per zone and views by the ground):
    each part's area and the (part, camera) incidences, cameras as slots of ``cams``."""

    __slots__ = ("parts", "area", "area2", "cams", "inc_part", "inc_slot", "n")

    def __init__(self, parts):
        self.parts = parts  # held, so that the id() this is cached under stays this list's
        self.area = np.array([p.area_m2 for p in parts], dtype=np.float64)
        self.area2 = self.area * self.area
        self.cams = sorted({c for p in parts for c in p.cameras})
        slot = {c: i for i, c in enumerate(self.cams)}
        pairs = [(i, slot[c]) for i, p in enumerate(parts) for c in p.cameras]
        self.inc_part = np.array([i for i, _ in pairs], dtype=np.intp)
        self.inc_slot = np.array([k for _, k in pairs], dtype=np.intp)
        self.n = len(parts)


_LAYOUTS: dict[int, _Layout] = {}


def _layout(parts) -> _Layout:
    hit = _LAYOUTS.get(id(parts))
    if hit is None or hit.parts is not parts:
        if len(_LAYOUTS) > 1 << 16:
            _LAYOUTS.clear()
        hit = _LAYOUTS[id(parts)] = _Layout(parts)
    return hit


def _sums(index: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Σ weights per index 0 … n−1 (float even when empty: bincount answers ints then)."""
    return np.bincount(index, weights, n).astype(np.float64, copy=False)


def fuse_many(problems) -> FusedMany:
    """:func:`fuse` for many zones at once, vectorised (numpy): the same maths, one row per
    problem ``(parts, readings, history, prior_density, prior_variance, unplaced)`` — the
    arguments of :func:`fuse`, in its order. Sums run in another order, so results agree with
    :func:`fuse` to rounding (tests/test_fusion_batch.py), not bit for bit. Pure.

    The problems are flattened into parts (area, zone) and camera incidences (part, reading
    or history row); precision-weighted means per part, coefficients per camera and the
    per-zone sums are ``bincount``s over those rows. A part is *measured* when a fresh reading
    covers it, *history* when only old readings do, *neighbours* otherwise."""
    B = len(problems)
    lays: list[_Layout] = []
    slot_j: list[int] = []  # per camera slot: its reading row or -1
    slot_h: list[int] = []  # per camera slot: its history row or -1
    dens, var_eff, conf, zone_j = [], [], [], []
    hd, hv, zone_h = [], [], []
    extra_p, extra_j = [], []  # unplaced readings: every part of their zone
    prior_d = [0.0] * B
    prior_v = [0.0] * B
    po = 0
    for b, (parts, readings, history, pd, pv, unplaced) in enumerate(problems):
        lay = _layout(parts)
        lays.append(lay)
        if pd is not None:
            prior_d[b] = pd
        prior_v[b] = pv
        so = len(slot_j)
        for c in lay.cams:
            r = readings.get(c)
            if r is not None:
                slot_j.append(len(dens))
                slot_h.append(-1)
                dens.append(r.density)
                var_eff.append(_var(r, unplaced.get(c)) if unplaced else r.variance)
                conf.append(r.confidence)
                zone_j.append(b)
                continue
            slot_j.append(-1)
            h = history.get(c)
            if h is not None:
                slot_h.append(len(hd))
                hd.append(h.density)
                hv.append(h.variance)
                zone_h.append(b)
            else:
                slot_h.append(-1)
        if unplaced:
            for c in sorted(unplaced):
                r = readings.get(c)
                if r is None:
                    continue
                if c in lay.cams:
                    j = slot_j[so + lay.cams.index(c)]
                else:
                    j = len(dens)
                    dens.append(r.density)
                    var_eff.append(_var(r, unplaced.get(c)))
                    conf.append(r.confidence)
                    zone_j.append(b)
                for i, p in enumerate(parts):
                    if c not in p.cameras:
                        extra_p.append(po + i)
                        extra_j.append(j)
        po += lay.n
    empty_f, empty_i = np.zeros(0), np.zeros(0, dtype=np.intp)
    # the layouts side by side: parts numbered across problems, camera slots likewise
    n_parts = np.array([lay.n for lay in lays], dtype=np.intp)
    n_inc = np.array([len(lay.inc_part) for lay in lays], dtype=np.intp)
    n_cams = np.array([len(lay.cams) for lay in lays], dtype=np.intp)
    area = np.concatenate([lay.area for lay in lays]) if lays else empty_f
    area2 = np.concatenate([lay.area2 for lay in lays]) if lays else empty_f
    zp = np.repeat(np.arange(B, dtype=np.intp), n_parts)
    ip = (np.concatenate([lay.inc_part for lay in lays]) if lays else empty_i) + \
        np.repeat(np.cumsum(n_parts) - n_parts, n_inc)
    isl = (np.concatenate([lay.inc_slot for lay in lays]) if lays else empty_i) + \
        np.repeat(np.cumsum(n_cams) - n_cams, n_inc)
    prior_d, prior_v = np.array(prior_d), np.array(prior_v)
    P = len(area)
    sj = np.array(slot_j, dtype=np.intp)[isl]
    sh = np.array(slot_h, dtype=np.intp)[isl]
    dens_a, var_a, conf_a = np.array(dens), np.array(var_eff), np.array(conf)
    zj = np.array(zone_j, dtype=np.intp)
    J = len(dens_a)
    # measured parts: a fresh reading covers them
    fp = np.concatenate([ip[sj >= 0], np.array(extra_p, dtype=np.intp)])
    fj = np.concatenate([sj[sj >= 0], np.array(extra_j, dtype=np.intp)])
    w = 1.0 / var_a[fj]
    tot = _sums(fp, w, P)
    meas = tot > 0
    tot_safe = np.where(meas, tot, 1.0)
    d = _sums(fp, w * dens_a[fj], P) / tot_safe
    cp = _sums(fp, w * conf_a[fj], P) / tot_safe
    coef_j = _sums(fj, area[fp] * w / tot_safe[fp], J)
    am = np.where(meas, area, 0.0)
    seen = _sums(zp, am, B)
    count_measured = _sums(zp, d * am, B)
    count = count_measured.copy()
    conf_area = _sums(zp, cp * am, B)
    pending = ~meas
    estimated = _sums(zp, np.where(pending, area, 0.0), B)
    # history parts: not measured, an old reading covers them
    keep = (sh >= 0) & pending[ip]
    hp, hh = ip[keep], sh[keep]
    hd_a, hv_a = np.array(hd), np.array(hv)
    hw = 1.0 / hv_a[hh]
    htot = _sums(hp, hw, P)
    hist = pending & (htot > 0)
    htot_safe = np.where(hist, htot, 1.0)
    hdp = _sums(hp, hw * hd_a[hh], P) / htot_safe
    coef_h = _sums(hh, area[hp] * hw / htot_safe[hp], len(hd_a))
    ah = np.where(hist, area, 0.0)
    count += _sums(zp, hdp * ah, B)
    conf_area += HISTORY_CONFIDENCE * _sums(zp, ah, B)
    # neighbour parts: the density the zone's measured parts show, else the prior
    nb = pending & ~hist
    nb_area = _sums(zp, np.where(nb, area, 0.0), B)
    nb_area2 = _sums(zp, np.where(nb, area2, 0.0), B)
    seen_pos = seen > 0
    seen_safe = np.where(seen_pos, seen, 1.0)
    d0 = np.where(seen_pos, count_measured / seen_safe, prior_d)
    v0 = np.where(seen_pos, 0.0, prior_v)
    vd = (NEIGHBOUR_REL * d0 + NEIGHBOUR_ABS) ** 2
    var = (vd + v0) * nb_area2
    count += d0 * nb_area
    conf_area += NEIGHBOUR_CONFIDENCE * nb_area
    # a neighbour part copies the seen density: the measuring cameras' noise reaches it too
    coef_j = coef_j * np.where(seen_pos, 1.0 + nb_area / seen_safe, 1.0)[zj]
    measured_var = _sums(zj, coef_j * coef_j * var_a, B)
    zh = np.array(zone_h, dtype=np.intp)
    var += _sums(zh, coef_h * coef_h * hv_a, B)
    total = seen + estimated
    confidence = np.where(total > 0, conf_area / np.where(total > 0, total, 1.0), 0.0)
    return FusedMany(count, measured_var + var, var, seen, estimated, confidence)


def _var(r: Reading, unplaced_share: float | None) -> float:
    if unplaced_share is None:
        return r.variance
    return r.variance / min(1.0, max(unplaced_share, 1e-3))


def aged(r: Reading, age_s: float) -> Reading | None:
    """A camera's last reading as history ``age_s`` after it was taken (None: too old)."""
    if age_s > HISTORY_MAX_S:
        return None
    return Reading(r.density, r.variance + HISTORY_DRIFT * max(age_s, 0.0), r.confidence)
