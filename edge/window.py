"""Per-camera observation windows. Pure: frames in, one Observation per interval out."""

from __future__ import annotations

from collections import Counter

from crowdflow.records import GateFlow, Observation, ZoneCount


class ObservationWindow:
    """Averages per-frame zone counts over ``interval_s`` of capture time.

    ``seq`` starts from the wall-clock milliseconds at start-up, so it keeps increasing across
    restarts of the agent without any stored state (at one observation a second it would need
    1,000 observations per second to catch up with the clock)."""

    def __init__(self, camera_id: str, agent_id: str, visible_area_m2: dict[str, float],
                 interval_s: float, seq_start: int, method: str = "detect", preset: str | None = None,
                 gates: list[str] | tuple[str, ...] = ()):
        self.camera_id = camera_id
        self.agent_id = agent_id
        self.areas = dict(visible_area_m2)
        self.interval_s = interval_s
        self.seq = seq_start
        self.method = method
        self.preset = preset
        self.start: float | None = None
        self.gates = list(gates)
        self._reset()

    def _reset(self) -> None:
        self._sums = {z: 0.0 for z in self.areas}
        self._conf = {z: 0.0 for z in self.areas}
        self._methods: dict[str, Counter] = {z: Counter() for z in self.areas}
        self._gates = {g: [0, 0] for g in self.gates}
        self.frames = 0

    def add(self, t: float, counts: dict[str, float], methods: dict[str, str] | None = None,
            confidence: dict[str, float] | None = None) -> None:
        """One frame's per-zone counts, with the method and confidence behind each."""
        if self.start is None:
            self.start = t
        for z, n in counts.items():
            if z in self._sums:
                self._sums[z] += n
                self._methods[z][(methods or {}).get(z, self.method)] += 1
                self._conf[z] += (confidence or {}).get(z, 1.0)
        self.frames += 1

    def discard_counts(self) -> None:
        """Forget the frames added so far in this window (they are not trusted)."""
        self._reset()

    def add_crossings(self, gate_id: str, inflow: int, outflow: int) -> None:
        if gate_id in self._gates:
            self._gates[gate_id][0] += inflow
            self._gates[gate_id][1] += outflow

    def set_areas(self, visible_area_m2: dict[str, float], preset: str | None) -> None:
        """A different preset sees other parts of the zones: call right after a flush."""
        self.areas = dict(visible_area_m2)
        self.preset = preset
        self._reset()

    def due(self, now: float) -> bool:
        return self.start is not None and now - self.start >= self.interval_s

    def flush(self, end: float, health: str = "ok") -> Observation:
        """Close the window at ``end`` and start the next one there."""
        start = self.start if self.start is not None else end - self.interval_s
        zones, gates = [], []
        if health == "ok" and self.frames:
            zones = [
                ZoneCount(zone_id=z, count=round(self._sums[z] / self.frames, 3),
                          visible_area_m2=round(a, 2),
                          method=(self._methods[z].most_common(1) or [(self.method, 0)])[0][0],
                          confidence=round(min(1.0, self._conf[z] / self.frames), 3))
                for z, a in self.areas.items()
            ]
        if health == "ok":
            gates = [GateFlow(gate_id=g, inflow=i, outflow=o) for g, (i, o) in self._gates.items()]
        obs = Observation(
            camera_id=self.camera_id, agent_id=self.agent_id, seq=self.seq, captured_at=end,
            window_s=max(1e-3, end - start), frames=self.frames, health=health,
            preset=self.preset, zones=zones, gates=gates,
        )
        self.seq += 1
        self.start = end
        self._reset()
        return obs
