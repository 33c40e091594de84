"""The planning twin's batch of rollouts (``ModelTwin.rollouts``: candidates share a state until
their measures in effect part) gives exactly what rolling each schedule alone gives, on the
real site file and the May Day scenario — and what the optimiser's default loop gives."""

from __future__ import annotations

import numpy as np
import pytest

from control.twin import Twin, TwinStart, rollouts
from sim.model import Model
from sim.plantwin import ModelTwin
from sim.scenario import hhmm_to_s


def reference(twin: ModelTwin, start: TwinStart, schedule, minutes: float) -> tuple[np.ndarray, float]:
    """A schedule rolled alone, the way the planning twin did before batches: one model,
    run to each minute."""
    m, _ = twin._start(start, schedule)
    rows = [twin._loads(m)]
    for i in range(1, int(minutes) + 1):
        m.run_until(start.tod_s + i * 60)
        rows.append(twin._loads(m))
    return np.array(rows), float(m.totals.gave_up)


@pytest.fixture(scope="module")
def busy_start(site, scenario):
    model = Model(site, scenario, seed=3)
    model.run_until(hhmm_to_s("19:40"))
    return TwinStart(model.t, model.zone_counts())


def schedules(site):
    acts = {m.id: list(m.actions) for m in site.measures}
    out = [[(0.0, [])]]
    out += [[(0.0, []), (5.0, a)] for a in acts.values()]  # each measure ordered now (waits for staff and set-up)
    cut, meter = acts["cut-cangbai"], acts["meter-xsz"]
    out += [
        [(0.0, cut)],  # in force now
        [(0.0, cut), (10.0, [])],  # released now: the road stays cut through its tear-down
        [(0.0, cut + meter)],
        [(0.0, cut), (3.0, cut + meter)],
        [(0.0, meter), (3.0, meter + acts["oneway-bridge"])],
        [(0.0, [])],  # the same schedule twice in one batch
    ]
    return out


def test_batched_rollouts_equal_one_by_one(site, scenario, busy_start):
    twin = ModelTwin(site, scenario)
    scheds = schedules(site)
    batch = twin.rollouts(busy_start, scheds, 30.0, 1.0)
    assert len(batch) == len(scheds)
    peaks = set()
    for sched, r in zip(scheds, batch):
        ref, gave_up = reference(twin, busy_start, sched, 30.0)
        got = np.stack([r.load[e] for e in twin.elements()], axis=1)
        np.testing.assert_array_equal(got, ref)  # identical, not merely close
        assert r.turned_away == gave_up
        one = twin.rollout(busy_start, sched, 30.0, 1.0)
        for e in twin.elements():
            np.testing.assert_array_equal(one.load[e], r.load[e])
        peaks.add(round(float(got.max()), 6))
    assert len(peaks) > 3  # the schedules do differ (the comparison is not vacuous)


def test_batch_shares_the_common_prefix(site, scenario, busy_start, monkeypatch):
    """Candidates ordered now step as one state until a measure takes effect: the batch steps
    the physics fewer times than the schedules one by one (counted, not timed)."""
    from sim import twin as core

    twin = ModelTwin(site, scenario)
    scheds = schedules(site)[1:6]
    calls = []
    orig = core.Twin.step

    def counting(self, st, ctl, demand=True):
        calls.append(1)
        return orig(self, st, ctl, demand)

    monkeypatch.setattr(core.Twin, "step", counting)
    twin.rollouts(busy_start, scheds, 30.0, 1.0)
    batched = len(calls)
    calls.clear()
    for s in scheds:
        twin.rollout(busy_start, s, 30.0, 1.0)
    alone = len(calls)
    assert alone == len(scheds) * 30 * 60 / twin.sc.model.step_s
    assert batched < alone


def test_default_batch_loops_for_any_twin(site, scenario, busy_start):
    class Plain:  # follows the protocol structurally, without a batch of its own
        def __init__(self, inner):
            self.inner = inner

        def elements(self):
            return self.inner.elements()

        def rollout(self, *a, **k):
            return self.inner.rollout(*a, **k)

    twin = ModelTwin(site, scenario)
    scheds = schedules(site)[:3]
    a = rollouts(Plain(twin), busy_start, scheds, 10.0)
    b = rollouts(twin, busy_start, scheds, 10.0)
    c = Twin.rollouts(twin, busy_start, scheds, 10.0)
    for x, y, z in zip(a, b, c):
        for e in twin.elements():
            np.testing.assert_array_equal(x.load[e], y.load[e])
            np.testing.assert_array_equal(x.load[e], z.load[e])
