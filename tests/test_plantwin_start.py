"""The planning twin's start: where the counted people are (the nowcast) and what an unknown
zone is taken at (worst plausible, bounded by when it was last seen). Real site file, real
scenario, the site simulator as the truth."""

from __future__ import annotations

import numpy as np
import pytest

from control.optimizer import UNKNOWN_FLOOR, UNKNOWN_GROWTH, plausible_counts
from control.twin import TwinStart
from crowdflow.records import LastKnown, ZoneState
from sim.model import Model
from sim.plantwin import ModelTwin
from sim.scenario import hhmm_to_s

NOW = 1_746_100_000.0


def _state(z, count=None, last=None):
    if count is None:
        return ZoneState(zone_id=z.id, status="unknown", reason="camera_offline", capacity=z.capacity,
                         computed_at=NOW, last_known=last)
    return ZoneState(zone_id=z.id, status="ok", count=count, density=count / z.walkable_area_m2,
                     capacity=z.capacity, capacity_ratio=count / z.capacity, updated_at=NOW, computed_at=NOW)


def test_a_blinking_camera_is_not_a_zone_that_filled_up(site):
    z = site.zone_by_id["bridge-e-south"]
    zones = {x.id: _state(x, 0.1 * x.capacity) for x in site.zones}

    def at(age_s, count=107.0):
        zones[z.id] = _state(z, last=LastKnown(count=count, density=count / z.walkable_area_m2, at=NOW - age_s))
        counts, unknown = plausible_counts(site, zones, NOW)
        assert unknown == [z.id]
        return counts[z.id]

    # 30 s after its camera saw 107 people: a little more, not 0.9 of its capacity (459)
    assert 107 * UNKNOWN_GROWTH < at(30) < 1.5 * 107
    # the longer unseen, the more it may have filled: growing with the time since, up to the floor
    assert at(30) < at(120) < at(290) <= UNKNOWN_FLOOR * z.capacity
    # not seen for over 5 minutes (or never): the floor
    assert at(400) == pytest.approx(UNKNOWN_FLOOR * z.capacity)
    zones[z.id] = _state(z)
    assert plausible_counts(site, zones, NOW)[0][z.id] == pytest.approx(UNKNOWN_FLOOR * z.capacity)
    # seen near capacity a minute ago: its grown count, above the floor
    assert at(60, 0.95 * z.capacity) >= 0.95 * z.capacity * UNKNOWN_GROWTH


def _closed_lane_people(m: Model, zone: str) -> float:
    """People on the lanes of ``zone`` that the measures in force close (a one-way's other way)."""
    net, out = m.net, 0.0
    for li, (_cid, _frm, _to, first, last) in enumerate(net.lanes):
        if not m.ctl.lane_open[li]:
            cells = np.arange(first, last + 1)
            out += float(m.state.cell[cells[net.czone[cells] == net.zi[zone]]].sum())
    return out


def test_the_nowcast_keeps_where_people_are(site, scenario):
    """The bridge walkways one-way and the east walkway's entry metered for 20 minutes: in the
    evening, the east mid-span's southbound lane has emptied. Started from the prior (an evening
    without measures), every decision puts about half of its people back on that closed lane,
    where they jam its narrow span in every rollout; the nowcast, carried from start to start
    and corrected to the counts, keeps it empty as the evening does — and both keep the counts."""
    measures = {m.id: m for m in site.measures}
    actions = [a for mid in ("oneway-bridge", "meter-bridge") for a in measures[mid].actions]
    truth = Model(site, scenario, seed=3, tod_s=hhmm_to_s("19:30"))
    truth.set_actions(actions, in_effect=True)
    carried = ModelTwin(site, scenario, carry=True)
    prior = ModelTwin(site, scenario)
    schedule = [(0.0, actions)]
    for _ in range(20):  # the planner decides every minute, from the counts the cameras give
        truth.run_until(truth.t + 60)
        start = TwinStart(truth.t, truth.zone_counts())
        carried.rollout(start, schedule, 1.0)
    got = {}
    for name, twin in (("carried", carried), ("prior", prior)):
        m, _ = twin._start(start, schedule)
        got[name] = _closed_lane_people(m, "bridge-e-mid")
        assert m.zone_counts()["bridge-e-mid"] == pytest.approx(truth.zone_counts()["bridge-e-mid"], rel=0.02)
    in_truth = _closed_lane_people(truth, "bridge-e-mid")
    assert got["prior"] > 50 + 5 * in_truth, got  # what the nowcast is for: the prior misplaces them
    assert got["carried"] <= 5 + 2 * in_truth, (got, in_truth)


def test_a_cut_still_being_set_up_does_not_spread_the_counts_over_its_carriageway(site, scenario):
    """The bridge carriageway cut in force for 4 minutes, its 16 officers still 12 minutes from
    being in place and set up (``Candidate.in_effect_at``). The twin starts from the ground as
    it is: the cameras' counts on the walkways, not spread over a carriageway still full of
    traffic (seed 0 ×1.3, 20:32: that put 3,237 people on the east mid-span whose camera saw 936),
    and the cut acts from its minute on the ground — in every candidate set that keeps it."""
    from control.optimizer import Candidate, Optimizer

    measures = {m.id: m for m in site.measures}
    cut = measures["cut-bridge"]
    truth = Model(site, scenario, seed=3)
    truth.run_until(hhmm_to_s("20:00"))
    start = TwinStart(truth.t, truth.zone_counts())
    twin = ModelTwin(site, scenario)
    opt = Optimizer(site, twin)
    now = 1_746_100_000.0

    def rolled(in_effect_at):
        c = Candidate(cut, active=True, since=now - 240, delay_min=23.0, in_effect_at=in_effect_at)
        sched = opt.schedule({cut.id: c}, {cut.id}, [], now)
        m, _ = twin._start(start, sched)
        return sched, m, twin.rollout(start, sched, 20.0)

    sched, m, pending = rolled(now + 720)
    assert [t for t, _ in sched] == [0.0, 12.0] and sched[0][1] == [] and sched[1][1] == list(cut.actions)
    _, m_on, _ = rolled(now - 60)
    z = "bridge-e-mid"
    i = m.zones.index(z)
    # at the start, the people on the east mid-span are those its camera counts; with the cut on
    # the ground (a count of the walkway's people's density over walkway and freed carriageway)
    # they would be several times as many
    assert float(m.n[i]) == pytest.approx(start.counts[z], rel=0.02)
    assert float(m_on.n[i]) > 2 * start.counts[z]
    # the cut takes effect at its minute in the schedule, as the optimiser counted it
    ms = next(x for x in m.measures.values() if getattr(x.action, "road", None) == "road-qsm-bridge")
    assert not ms.effective(start.tod_s + 11.5 * 60) and ms.effective(start.tod_s + 12 * 60)
    none = twin.rollout(start, [(0.0, [])], 20.0)
    np.testing.assert_array_equal(pending.load[z][:12], none.load[z][:12])  # nothing differs until then
    assert pending.load[z][13] < 0.8 * none.load[z][13]  # then the freed carriageway counts
    # released before its officers arrived, it never acts; released once on the ground, it acts
    # through its tear-down
    c = Candidate(cut, active=True, since=now - 240, delay_min=23.0, in_effect_at=now + 720)
    assert opt.schedule({cut.id: c}, set(), [], now) == [(0.0, [])]
    c = Candidate(cut, active=True, since=now - 1800, delay_min=23.0, in_effect_at=now - 600)
    assert opt.schedule({cut.id: c}, set(), [], now) == [(0.0, list(cut.actions)), (float(cut.teardown_min), [])]


def test_a_walkway_s_measured_inflow_is_held_in_the_first_minutes_moving_people_not_making_them(site, scenario):
    """The east walkway's south gate counts 90 a minute going on (seed 9 ×1.3 counted 52–78
    from 20:55, while the twin's own routing sent ≈56): for ``INFLOW_HOLD_MIN`` the rollouts let at
    least that many through (here, the first 10 minutes), taken from the south head's people — the south span fills, the
    head empties, nobody is added — and a gate closed by a stop of entry passes nobody."""
    from sim.plantwin import INFLOW_HOLD_MIN

    truth = Model(site, scenario, seed=3)
    truth.run_until(hhmm_to_s("20:00"))
    counts = truth.zone_counts()
    twin = ModelTwin(site, scenario)
    plain = TwinStart(truth.t, counts)
    fed = TwinStart(truth.t, counts, flows={"bridge-e-south": (90.0, 0.0)})
    a, b = twin.rollout(plain, [(0.0, [])], 20.0), twin.rollout(fed, [(0.0, [])], 20.0)
    cap = {z.id: z.capacity for z in site.zones}
    people = lambda r, z, i: r.load[z][i] * cap[z]  # noqa: E731
    k = 10
    assert INFLOW_HOLD_MIN >= k
    span = people(b, "bridge-e-south", k) - people(a, "bridge-e-south", k)
    head = people(b, "bridge-s-head", k) - people(a, "bridge-s-head", k)
    assert span > 100 and head < -100  # ≈ (90 − the twin's own rate) a minute, for ten minutes
    total = lambda r, i: sum(people(r, z, i) for z in cap if z in r.load)  # noqa: E731
    assert total(b, k) == pytest.approx(total(a, k), rel=0.01)
    # closed: a stop of entry on the ground at the gate
    stop = next(m for m in site.measures if m.id == "stop-bridge")
    sa, sb = twin.rollout(plain, [(0.0, list(stop.actions))], 12.0), twin.rollout(fed, [(0.0, list(stop.actions))], 12.0)
    np.testing.assert_allclose(sa.load["bridge-e-south"], sb.load["bridge-e-south"])


def test_a_measured_surge_joins_a_station_s_arrivals_for_its_minutes(site, scenario):
    """``TwinStart.surge``: 150 extra people a minute at Xiaoshizi exit 9 fill its metered
    concourse for ``SURGE_MIN`` minutes, then stop; with the station letting no one off
    (只上不下, on the ground from the start) the same surge rides on like the station's own
    arrivals — the concourse stays empty, nothing waits behind a gate that passes nobody."""
    from control.twin import SURGE_MIN

    truth = Model(site, scenario, seed=3)
    truth.run_until(hhmm_to_s("20:00"))
    twin = ModelTwin(site, scenario)
    plain = TwinStart(truth.t, truth.zone_counts())
    fed = TwinStart(truth.t, truth.zone_counts(), surge={"hold:gate-xsz-9": 150.0})
    meter = list(site.measure_by_id["meter-xsz"].actions)
    a, b = twin.rollout(plain, [(0.0, meter)], 20.0), twin.rollout(fed, [(0.0, meter)], 20.0)
    q = "hold:gate-xsz-9"
    extra = b.queues[q] - a.queues[q]
    k = int(SURGE_MIN)
    # all of it queues (the metering passes its rate either way), less those who give up waiting
    assert 0.6 * 150.0 * SURGE_MIN < extra[k] <= 150.0 * SURGE_MIN + 1.0
    assert b.turned_away > a.turned_away
    assert extra[-1] <= extra[k] + 1.0  # and no more come after the surge's minutes
    board = meter + list(site.measure_by_id["board-only-xsz"].actions)
    c = twin.rollout(fed, [(0.0, board)], 12.0)
    assert max(c.queues[q][1:]) < 1.0 and max(c.load[q][1:]) < 0.01
