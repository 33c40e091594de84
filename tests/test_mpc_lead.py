"""A service trigger's lead counts from when the measure can act (docs/mpc.md, "Ground and
lead"). A decision rule of the optimiser (a pure core), checked on the real site file against a
scripted forecast — the ``Twin`` protocol lets a test roll the site forward any way it likes:
here the east mid-span fills steadily and stops filling once the bridge metering is on the
ground, from the minute the schedule puts it there."""

from __future__ import annotations

import numpy as np

from control.optimizer import Candidate, Optimizer
from control.twin import Element, Rollout, TwinStart
from crowdflow.site import MeteringAction, Text

ZONE = "bridge-e-mid"
CROSS_MIN = 25.0  # the zone reaches its target here without the metering


class FillingZone:
    def __init__(self, target: float):
        self.target = target

    def elements(self):
        return {ZONE: Element(ZONE, Text(zh=ZONE, en=ZONE), 1000.0)}

    def rollout(self, start, schedule, minutes, every_min=1.0):
        t = np.arange(0.0, minutes + 1e-9, every_min)
        on = next((t0 for t0, acts in sorted(schedule, key=lambda x: x[0])
                   if any(isinstance(a, MeteringAction) and a.gate == "gate-bridge-se" for a in acts)), None)
        rise = (self.target - 0.5) / CROSS_MIN
        load = 0.5 + rise * (np.minimum(t, on) if on is not None else t)
        return Rollout(t, {ZONE: load})


def decide(site, delay_min: float) -> list[str]:
    probe = Optimizer(site, FillingZone(0.9))
    opt = Optimizer(site, FillingZone(probe.targets[ZONE]), budget_s=60.0)
    c = Candidate(site.measure_by_id["meter-bridge"], delay_min=delay_min)
    return opt.decide(TwinStart(20 * 3600.0, {ZONE: 500.0}), [c], now=1_746_100_000.0).on


def test_a_metering_whose_officers_walk_13_minutes_is_ordered_for_a_crossing_25_minutes_out(site):
    """Seed 3 ×1.3: the bridge metering's officers walk ≈11 minutes and set up 2, so ordered
    when the crossing came within the trigger's 20 minutes it was on the ground ≈7 minutes
    before the crossing — or not at all. The lead now counts from when it can act."""
    assert site.measure_by_id["meter-bridge"].trigger.lead_min == 20
    assert decide(site, delay_min=13.0) == ["meter-bridge"]


def test_a_metering_that_can_act_at_once_waits_for_its_trigger_s_lead(site):
    """The same crossing 25 minutes out, the metering's staff at hand: not yet — the trigger's
    lead is what keeps a measure from going on earlier than it must."""
    assert decide(site, delay_min=0.0) == []
