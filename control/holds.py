"""Queue counts at the holding areas (pure core, no I/O).

The cameras count zones, not the pens behind a metering or a metro concourse, so the planner
dead-reckons those queues from its own forecasts (``control.measures.MeasurePlanner._queues``).
A surge it did not forecast (a bunch of full trains at exit 9) fills a concourse unseen. The
people who run a queue know its length: the staff at a pen and the metro operator's station
control report it (command ``report_queue``, from a phone or the operator's feed). This book
keeps the last report per holding area, says when it is too old to use (``unknown``, never a
silent zero), and hands the fresh ones to the planner's start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from crowdflow.records import HOLD_STALE_S, HoldState, built, hold_as_of
from crowdflow.site import Site

# Physically possible at all (people per m² standing, the densest crush recorded is ≈ 9-10):
# a count above this for the pen's area is a typo or a hostile client, refused with the reason.
MAX_PEN_DENSITY = 10.0
# A queue's trend (``HoldBook.trends``): the least-squares slope of the reports of the last
# TREND_WINDOW_S, from at least TREND_MIN_REPORTS spanning TREND_MIN_SPAN_S (the metro operator
# reports a concourse every minute, the staff a pen every two). Its standard error assumes each
# count off by REPORT_ERROR of itself [estimate: a packed pen counted by eye, or the operator's
# gate arithmetic], or the scatter of the reports about the line if that is larger.
TREND_WINDOW_S = 240.0
TREND_MIN_REPORTS = 3
TREND_MIN_SPAN_S = 110.0
REPORT_ERROR = 0.10


@dataclass
class _Report:
    people: float
    at: float
    by: str


class HoldBook:
    """The last reported count of each holding area of the site."""

    def __init__(self, site: Site, stale_after_s: float = HOLD_STALE_S):
        self.site = site
        self.stale_after_s = stale_after_s
        zones = {z.id for z in site.zones}  # a partition's worker keeps its own zones' pens
        self.areas = {h.id: h for h in site.holding_areas if h.zone in zones}
        self._last: dict[str, _Report] = {}
        self._recent: dict[str, deque[_Report]] = {}  # the reports of the trend window, oldest first

    def check(self, hold_id: str | None, people: float | None, at: float, now: float) -> str | None:
        """Why a report cannot be used (None when it can)."""
        h = self.areas.get(hold_id or "")
        if h is None:
            return f"hold_id: no holding area {hold_id!r} here (site holding_areas, in this partition's zones)"
        if people is None or people < 0:
            return "people: a count of people ≥ 0 is needed"
        if people / h.area_m2 > MAX_PEN_DENSITY:
            return (f"people: {people:g} in {h.id} ({h.area_m2:g} m²) would be {people / h.area_m2:.1f} p/m², "
                    f"above the physical limit of {MAX_PEN_DENSITY:g} p/m²")
        if at > now + 60:
            return f"issued_at: {at - now:.0f} s in the future"
        if now - at > self.stale_after_s:
            return f"issued_at: the count is {now - at:.0f} s old (limit {self.stale_after_s:g} s)"
        return None

    def report(self, hold_id: str, people: float, at: float, by: str, now: float) -> str | None:
        """Keep a count (the newest by the time it was taken wins); the reason when refused."""
        error = self.check(hold_id, people, at, now)
        if error is not None:
            return error
        last = self._last.get(hold_id)
        if last is not None and last.at > at:
            return None  # an older count arriving late changes nothing (not an error: it was true then)
        r = self._last[hold_id] = _Report(float(people), float(at), by)
        if self.areas[hold_id].queue == "arrivals":  # a departures pen is shown, not planned from
            recent = self._recent.setdefault(hold_id, deque())
            recent.append(r)
            while recent[0].at < r.at - TREND_WINDOW_S:
                recent.popleft()
        return None

    def trends(self, now: float) -> dict[str, tuple[float, float]]:
        """``hold:<gate>`` → (people a minute the queue grew by, its standard error) for each
        arrivals pen with enough fresh reports (see TREND_WINDOW_S): how fast a surge the
        forecast did not expect is filling it."""
        out: dict[str, tuple[float, float]] = {}
        for hid, recent in list(self._recent.items()):  # the planner's thread reads while reports arrive
            rs = [r for r in list(recent) if now - r.at <= TREND_WINDOW_S]
            if len(rs) < TREND_MIN_REPORTS or rs[-1].at - rs[0].at < TREND_MIN_SPAN_S:
                continue
            t = np.array([r.at for r in rs]) / 60.0
            y = np.array([r.people for r in rs])
            tc = t - t.mean()
            sxx = float((tc * tc).sum())
            slope = float((tc * (y - y.mean())).sum()) / sxx
            resid = y - y.mean() - slope * tc
            model = REPORT_ERROR * float(np.sqrt((y * y).mean()))
            scatter = float(np.sqrt((resid * resid).sum() / max(len(rs) - 2, 1)))
            out[f"hold:{self.areas[hid].gate}"] = (slope, max(model, scatter) / np.sqrt(sxx))
        return out

    def restore(self, published) -> None:
        """Counts a previous leader published (HoldState records): fresh or stale, each is kept
        with the time it was taken, so a stale one still shows its last count and age."""
        for h in published:
            if h.hold_id not in self.areas:
                continue
            people, at, by = ((h.people, h.reported_at, h.reported_by) if h.status == "ok"
                              else (h.last_people, h.last_at, None))
            if people is not None and at is not None:
                self._last[h.hold_id] = _Report(float(people), float(at), by or "")

    def state(self, hold_id: str, now: float) -> HoldState:
        h = self.areas[hold_id]
        r = self._last.get(hold_id)
        if r is None:
            return built(HoldState, v=1, hold_id=h.id, gate_id=h.gate, zone_id=h.zone, status="unknown",
                         reason="no count reported", people=None, density=None, area_m2=h.area_m2,
                         reported_at=None, reported_by=None, last_people=None, last_at=None, computed_at=now)
        fresh = built(HoldState, v=1, hold_id=h.id, gate_id=h.gate, zone_id=h.zone, status="ok", reason=None,
                      people=r.people, density=r.people / h.area_m2, area_m2=h.area_m2, reported_at=r.at,
                      reported_by=r.by, last_people=None, last_at=None, computed_at=now)
        return hold_as_of(fresh, now, self.stale_after_s)  # the readers' own rule for a count too old

    def states(self, now: float) -> dict[str, HoldState]:
        return {hid: self.state(hid, now) for hid in self.areas}

    def reported(self) -> set[str]:
        """Holding areas with a count, fresh or not (whose state can go stale)."""
        return set(self._last)

    def queues(self, now: float) -> dict[str, float]:
        """Fresh counts as the planner's start queues: ``hold:<gate>`` for the arrivals' pens
        (people held before the gate on their way in, ``TwinStart.queues``). A departures pen
        (the homeward queue outside a metro exit) is shown on the map, not planned from."""
        out: dict[str, float] = {}
        for hid, r in list(self._last.items()):  # the planner's thread reads while reports arrive
            h = self.areas[hid]
            if h.queue == "arrivals" and now - r.at <= self.stale_after_s:
                out[f"hold:{h.gate}"] = r.people
        return out


def start_queues(counts: Mapping[str, float], known: Iterable[str] = ()) -> dict[str, float]:
    """Reported counts (``hold:<gate>`` → people, as :meth:`HoldBook.queues`) under a twin's
    queue keys (``TwinStart.queues``; ``known`` empty: as they are). A pen before a metered
    *way* (the bridge's south entry: no arrivals held at a source, its queue is people of the
    zone waiting to pass) is the twin's ``port:<gate>``; a pen the twin has no queue for is
    dropped (shown on the map, not planned from)."""
    known = set(known)
    out = {}
    for key, q in counts.items():
        if known and key not in known:
            key = "port:" + key.split(":", 1)[1]
            if key not in known:
                continue
        out[key] = float(q)
    return out


def reported_queues(states: Iterable[HoldState], site: Site) -> dict[str, float]:
    """:meth:`HoldBook.queues` from published records (the dashboard's what-if): the fresh
    counts of the arrivals' pens, by gate."""
    arrivals = {h.id for h in site.holding_areas if h.queue == "arrivals"}
    return {f"hold:{s.gate_id}": float(s.people) for s in states
            if s.status == "ok" and s.people is not None and s.hold_id in arrivals}
