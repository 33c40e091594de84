"""Directional line-crossing counts from tracks, with a hysteresis band. Pure: no I/O.

A gate is a segment on the ground (site metric CRS). Facing from its first point to its
second, the right-hand side is "outside" and the left-hand side "inside"; a track that goes
from outside to inside counts one ``inflow``, the reverse one ``outflow``.

Each track's side is only updated once its foot point is more than ``band_m`` from the line,
so a person dawdling or jittering on the line (or a box that wobbles) counts once, when they
have really left the band on the other side. Crossings beyond the ends of the segment (plus
``band_m``) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GateLine:
    gate_id: str
    a: np.ndarray  # ground metres
    b: np.ndarray
    band_m: float = 0.5

    def signed(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(signed distance, >0 on the left = inside; position along the segment 0..1)."""
        d = self.b - self.a
        length = float(np.hypot(*d))
        rel = np.asarray(p, dtype=np.float64).reshape(-1, 2) - self.a
        cross = (d[0] * rel[:, 1] - d[1] * rel[:, 0]) / length
        along = (rel @ d) / (length * length)
        return cross, along


@dataclass
class _TrackState:
    side: int  # -1 outside, +1 inside
    last_seen: float


@dataclass
class GateCounter:
    line: GateLine
    forget_s: float = 10.0
    inflow: int = 0
    outflow: int = 0
    _tracks: dict[int, _TrackState] = field(default_factory=dict)

    def update(self, t: float, track_ids, ground_xy) -> None:
        """Feed one frame's tracks (ids and foot points on the ground, metres)."""
        if len(track_ids):
            cross, along = self.line.signed(np.asarray(ground_xy))
            margin = self.line.band_m / max(float(np.hypot(*(self.line.b - self.line.a))), 1e-6)
            for tid, c, s in zip(track_ids, cross, along):
                if not np.isfinite(c):
                    continue
                tid = int(tid)
                if abs(c) <= self.line.band_m:  # inside the band: no decision, keep the old side
                    if tid in self._tracks:
                        self._tracks[tid].last_seen = t
                    continue
                side = 1 if c > 0 else -1
                st = self._tracks.get(tid)
                if st is None:
                    self._tracks[tid] = _TrackState(side, t)
                    continue
                if side != st.side and -margin <= s <= 1 + margin:
                    if side > 0:
                        self.inflow += 1
                    else:
                        self.outflow += 1
                st.side, st.last_seen = side, t
        for tid in [k for k, st in self._tracks.items() if t - st.last_seen > self.forget_s]:
            del self._tracks[tid]

    def take(self) -> tuple[int, int]:
        """(inflow, outflow) since the last call."""
        out = (self.inflow, self.outflow)
        self.inflow = self.outflow = 0
        return out
