"""What the optimiser needs from a site twin: a cheap rollout from a known state. Pure.

The plan engine never imports the simulator: it is handed something that follows
:class:`Twin` (``sim/plantwin.py`` adapts the site simulator; tests may adapt anything that
rolls a site forward). A rollout starts from the fused zone counts at a time of day, applies a
*schedule* of action sets (each in force from its minute on, so set-up delays and releases
within the horizon are modelled) and returns the load of every element — zones and holding
areas — sampled each ``every_min``, as a fraction of its capacity. ``rollouts`` does the same
for several schedules from one start (the candidates of one search step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np

from crowdflow.site import Action, Text

# How long a rollout adds a measured surge (``TwinStart.surge``) [estimate]: a bunch of late
# trains empties into a concourse for a few headways; the next decision measures it again, so
# a surge that ends drops out of the forecast within a few minutes.
SURGE_MIN = 10.0


@dataclass(frozen=True)
class Element:
    """A zone or a bottleneck/holding area the optimiser keeps under its target."""

    id: str
    name: Text
    capacity: float  # people at load 1.0
    kind: str = "zone"  # zone | holding | bottleneck
    zone: str | None = None  # the site zone it belongs to (a holding area's zone), for measures relieving that zone


@dataclass(frozen=True)
class TwinStart:
    tod_s: float  # seconds after local midnight
    counts: Mapping[str, float]  # people per zone now (unknown zones already filled in worst-plausible)
    # people queued behind each metered gate, where a twin tells them apart from the zone
    # counts: "hold:<gate>" arrivals held at the gate (on no zone's ground), "port:<gate>" people
    # of the zone before it waiting to pass (counted there)
    queues: Mapping[str, float] = field(default_factory=dict)
    # people a minute crossing each zone's gates, in and out (``ZoneState.inflow_pm`` /
    # ``outflow_pm``, smoothed): what the twin's own routing may not reproduce
    flows: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # a queue's measured growth: ``hold:<gate>`` → (people a minute, standard error), from the
    # counts reported at its holding area (``control.holds.HoldBook.trends``)
    trends: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # arrivals beyond the twin's own, people a minute at a gate's held sources (``hold:<gate>``),
    # added over the first ``SURGE_MIN`` minutes of a rollout: a surge the reports show that the
    # scenario's curves do not have (set by the optimiser from ``trends``)
    surge: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Rollout:
    minutes: np.ndarray  # (K,) sample times after the start
    load: dict[str, np.ndarray]  # element id → (K,) load ratio (people ÷ capacity)
    turned_away: float = 0.0  # people who gave up waiting (held at a metered/closed source) over the horizon
    queues: dict[str, np.ndarray] = field(default_factory=dict)  # "hold:<gate>"/"port:<gate>" → (K,) people (TwinStart.queues)

    def peak(self, element: str, from_min: float = 0.0) -> tuple[float, float]:
        """(peak load, minute of the peak) from minute ``from_min`` on."""
        i0 = min(int(np.searchsorted(self.minutes, from_min)), len(self.minutes) - 1)
        series = self.load[element][i0:]
        k = int(np.argmax(series))
        return float(series[k]), float(self.minutes[i0 + k])


Schedule = Sequence[tuple[float, Sequence[Action]]]  # (from minute, the whole action set in force)


class Twin(Protocol):
    def elements(self) -> Mapping[str, Element]:
        ...

    def rollout(self, start: TwinStart, schedule: Schedule, minutes: float, every_min: float = 1.0) -> Rollout:
        ...

    def rollouts(self, start: TwinStart, schedules: Sequence[Schedule], minutes: float,
                 every_min: float = 1.0) -> list[Rollout]:
        """Several schedules from one start (candidate sets of one search step), in order; a
        twin may roll them together (``sim.plantwin`` shares their common prefix). Default:
        one by one."""
        return [self.rollout(start, s, minutes, every_min) for s in schedules]


def rollouts(twin: Twin, start: TwinStart, schedules: Sequence[Schedule], minutes: float,
             every_min: float = 1.0) -> list[Rollout]:
    """``twin.rollouts`` where the twin has it, else :meth:`Twin.rollouts`'s loop (a twin that
    follows the protocol structurally need not inherit its default)."""
    many = getattr(twin, "rollouts", None)
    if many is not None:
        return list(many(start, schedules, minutes, every_min))
    return Twin.rollouts(twin, start, schedules, minutes, every_min)


def start_flows(zones) -> dict[str, tuple[float, float]]:
    """(in, out) people a minute through each fresh zone's gates, for :attr:`TwinStart.flows`."""
    return {z: (s.inflow_pm, s.outflow_pm) for z, s in zones.items()
            if s.status == "ok" and s.inflow_pm is not None and s.outflow_pm is not None}
