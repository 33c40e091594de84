"""Releasing measures without flushing a queue onto the ground beyond it, and without switching
a measure three times within 20 minutes on the ground — on the real site file and the
yardstick's evening (docs/mpc.md, "Release and flaps").

The scripted evening is the one traced on seed 3 ×1.0: the yardstick's twin (5-s steps, seed 3)
with Xiaoshizi metered from 18:39, both bridge walkways one-way from 19:35 and the bridge's
south entry metered from 20:20; at 20:47 a queue of ≈230 people waits at that entry. Released
then, the evening puts the east walkway above 4 p/m² within 4 minutes. The planning twin runs
its own 15-s steps and seed.
"""

from __future__ import annotations

import copy

import pytest

from control.measures import MeasurePlanner
from control.optimizer import FLAP_WINDOW_S, Candidate, Optimizer, off_long_enough, on_long_enough
from control.twin import TwinStart
from crowdflow.records import PEN_FULL_DENSITY, ZoneState
from sim.model import Model
from sim.plantwin import LOCAL_TARGET, ModelTwin
from sim.scenario import hhmm_to_s, load_scenario

from .test_mpc import epoch, states

SCRIPT = [("18:39", ["meter-xsz"]), ("19:35", ["meter-xsz", "oneway-bridge"]),
          ("20:20", ["meter-xsz", "oneway-bridge", "meter-bridge"])]


def actions(site, ids):
    return [a for mid in ids for a in site.measure_by_id[mid].actions]


def play(site, scenario, until: str, seed: int = 3) -> Model:
    """The scripted evening to ``until`` (measures in effect at once)."""
    m = Model(site, scenario, seed=seed)
    for at, ids in SCRIPT:
        if hhmm_to_s(at) > hhmm_to_s(until):
            break
        m.run_until(hhmm_to_s(at))
        m.set_actions(actions(site, ids), in_effect=True)
    m.run_until(hhmm_to_s(until))
    return m


@pytest.fixture(scope="module")
def queued(site, scenario):
    """The evening at 20:47 with the bridge entry's queue, and the planning twin."""
    return play(site, scenario, "20:47"), ModelTwin(site, scenario.model_copy(update={"demand_scale": 1.0}))


def bridge_queue(twin: ModelTwin, m: Model) -> float:
    return twin.queue_now(m)["port:gate-bridge-se"]


def test_released_with_its_queue_the_evening_floods_the_east_walkway(site, queued):
    """The ground truth the engine must foresee: the queue is there, and releasing the
    metering puts the east walkway above 4 p/m²."""
    m, twin = queued
    assert bridge_queue(twin, m) > 150
    truth = copy.deepcopy(m)
    truth.set_actions(actions(site, ["meter-xsz", "oneway-bridge"]), in_effect=True)
    peak = 0.0
    for i in range(1, 11):
        truth.run_until(m.t + 60 * i)
        pk = truth.zone_peak_density()
        peak = max(peak, pk["bridge-e-south"], pk["bridge-e-mid"])
    assert peak > 4.0


def test_the_planning_twin_started_with_the_queue_discharges_it_onto_the_walkway(site, queued):
    """Cameras count the head's people, not who of them waits at the metered entry: started
    from the counts alone (the prior spreads them as on an evening without measures) the twin
    has no queue there. Started with the queue, it holds it while metered and, released, puts
    it on the east walkway within 4 minutes; the zone counts stay what the cameras saw. Started
    with the queue, the release floods the walkway to its target, which keeping the metering does
    not. (Started without it, the release reached the target too until 2026-12-04, when the
    viewing span's first cell took people at its full width's flow and sent them on at half: a
    slow cell now takes what it sends, tests/test_twin_validation.py.)"""
    m, twin = queued
    keep = actions(site, ["meter-xsz", "oneway-bridge", "meter-bridge"])
    rel = [(0.0, keep), (1.0, actions(site, ["meter-xsz", "oneway-bridge"]))]
    counts = m.zone_counts()
    q = twin.queue_now(m)
    walk = ("bridge-e-south", "bridge-e-mid", "bridge-e-north")
    got = {}
    for name, start in (("empty", TwinStart(m.t, counts)), ("queued", TwinStart(m.t, counts, q))):
        mq, _ = twin._start(start, [(0.0, keep)])
        assert sum(mq.zone_counts().values()) == pytest.approx(sum(counts.values()), rel=1e-6)
        r_keep, r_rel = twin.rollouts(start, [[(0.0, keep)], rel], 15)
        got[name] = dict(
            placed=float(r_keep.queues["port:gate-bridge-se"][0]),
            walk4=sum(float(r_rel.load[z][4]) * site.zone_by_id[z].capacity for z in walk),
            local_keep=max(float(r_keep.load[f"local:{z}"].max()) for z in walk),
            local_rel=max(float(r_rel.load[f"local:{z}"].max()) for z in walk))
    assert got["empty"]["placed"] < 1.0
    assert got["queued"]["placed"] == pytest.approx(q["port:gate-bridge-se"], rel=0.3), got
    assert got["queued"]["walk4"] - got["empty"]["walk4"] >= 0.5 * got["queued"]["placed"], got
    for g in got.values():
        assert g["local_keep"] < 0.85, got
    assert got["queued"]["local_rel"] >= 1.0 > got["empty"]["local_rel"], got
    assert LOCAL_TARGET == 3.5


def candidates(site, now: float, since: dict[str, float]) -> list[Candidate]:
    return [Candidate(m, active=m.id in since, since=since.get(m.id), in_effect_at=since.get(m.id))
            for m in site.measures]


def test_the_engine_does_not_release_a_metering_into_its_queue_s_flush(site, queued):
    """The decision at 20:47, the bridge metering past its minimum on-time and its queue known:
    what the engine keeps holds the east walkway below 4 p/m² on the evening itself for the next
    15 minutes, and its own forecast below the local target (the evening, released as before,
    floods it: the first test)."""
    m, twin = queued
    now = epoch(m.t)
    since = {"meter-xsz": epoch(hhmm_to_s("18:39")), "oneway-bridge": epoch(hhmm_to_s("19:35")),
             "meter-bridge": epoch(hhmm_to_s("20:20"))}
    opt = Optimizer(site, twin, budget_s=600.0)
    d = opt.decide(TwinStart(m.t, m.zone_counts(), twin.queue_now(m)), candidates(site, now, since), now)
    walk = ("bridge-e-south", "bridge-e-mid", "bridge-e-north")
    assert all(d.peaks[f"local:{z}"].load < 1.0 for z in walk), d.peaks
    truth = copy.deepcopy(m)
    truth.set_actions(actions(site, d.chosen))  # staff, set-up and tear-down as on the evening
    peak = 0.0
    for i in range(1, 16):
        truth.run_until(m.t + 60 * i)
        pk = truth.zone_peak_density()
        peak = max(peak, *(pk[z] for z in walk))
    assert peak < 4.0, (d.chosen, d.reasons.get("meter-bridge"), peak)


def test_the_planner_keeps_count_of_the_queue_behind_a_metered_gate(site, scenario):
    """No camera counts a holding queue: the planner carries it from plan to plan on its own
    forecasts. Planning every 5 minutes from 20:20 (the metering ordered then), its count at
    20:45 is within 40 % of the evening's queue (the evening runs its own seed)."""
    truth = play(site, scenario, "20:20")
    twin = ModelTwin(site, scenario.model_copy(update={"demand_scale": 1.0}))
    planner = MeasurePlanner(site, twin, budget_s=600.0, tod=lambda now: now - epoch(0))
    planner.demand = None  # the multiplier is not what this test is about
    bound = {p.id: "I" for p in site.plans}
    active = {"meter-xsz": epoch(hhmm_to_s("18:39")), "oneway-bridge": epoch(hhmm_to_s("19:35")),
              "meter-bridge": epoch(hhmm_to_s("20:20"))}
    for _ in range(5):
        now = epoch(truth.t)
        planner.decide(now, states(site, truth, now), active, {}, bound, force=True)
        truth.run_until(truth.t + 300)
    got = planner._queues(epoch(truth.t), active)["port:gate-bridge-se"]
    want = bridge_queue(twin, truth)
    assert want > 100
    assert got == pytest.approx(want, rel=0.4), (got, want)


def test_minimum_on_time_counts_from_when_the_measure_is_on_the_ground(site):
    """Seed 8 ×1.0 flapped: the bridge metering was ordered at 20:08, its officers walked until
    20:21, it was released at 20:30 and ordered again at 20:38 (on the ground 20:40): three
    switches on the ground within 19 minutes. The minimum on-time now runs from the measure's
    effect on the ground (its dispatched officers in place plus set-up)."""
    planner = MeasurePlanner(site, None)
    t0 = epoch(hhmm_to_s("20:08"))
    moves = planner.staff.deploy("meter-bridge", [], t0, setup_s=120)
    assert moves
    arrive = max(mv.in_place_at for mv in moves)
    assert arrive > t0 + 120
    bound = {p.id: "I" for p in site.plans}
    c = next(c for c in planner.candidates({"meter-bridge": t0}, {}, bound) if c.id == "meter-bridge")
    m = site.measure_by_id["meter-bridge"]
    assert c.in_effect_at == pytest.approx(arrive + m.setup_min * 60, abs=1)
    assert not on_long_enough(c, t0 + m.min_on_min * 60 + 60)  # the old rule let it go here
    assert on_long_enough(c, c.in_effect_at + m.min_on_min * 60)


def test_no_measure_of_the_site_can_switch_three_times_in_20_minutes_on_the_ground(site):
    """On the ground, on → off → on spans at least the minimum on-time (from the effect) plus
    the release's quiet time (the plan engine's, counted once the optimiser may release) plus
    the minimum off-time; off → on → off the same less the tear-down. Both must reach the
    yardstick's 20 minutes for every measure of the site file."""
    for m in site.measures:
        assert m.min_on_min + m.release.quiet_min + m.min_off_min - m.teardown_min >= 20, m.id


def test_officers_standing_down_at_a_post_take_the_next_measure_there_at_once(site):
    """Seed 0 ×1.0 (docs/mpc.md, "The 11F pen flood"): the bus-stop metering's marshals at the
    11F post stood down at 20:13 but stayed out their 60-min block; the 11F metering ordered at
    20:20 took them and was on the ground at 20:23. The planner's staff book sent a new team from
    the reserve instead (in place 20:31), so the minimum on-time held the metering — whose queue
    was flooding its pen — ten minutes past what the ground allowed. Officers still at a post
    now take a measure there first; once gone, a new team walks."""
    planner = MeasurePlanner(site, None)
    book = planner.staff
    pool = book.available()
    t_bus = epoch(hhmm_to_s("19:30"))
    assert book.deploy("meter-bus", [], t_bus)
    book.release("meter-bus", [], epoch(hhmm_to_s("20:13")))
    assert book.available() == pool
    now = epoch(hhmm_to_s("20:20"))
    moves = book.deploy("meter-11f", [], now, setup_s=120)
    assert moves and all(mv.in_place_at == now for mv in moves), moves
    assert book.available() + sum(book.present().values()) == pool
    bound = {p.id: "I" for p in site.plans}
    c = next(c for c in planner.candidates({"meter-11f": now}, {}, bound) if c.id == "meter-11f")
    m = site.measure_by_id["meter-11f"]
    assert c.in_effect_at == pytest.approx(now + m.setup_min * 60, abs=1)
    # released again, and a measure there after their block is over: a team walks from the base
    book.release("meter-11f", [], now + 600)
    later = t_bus + site.staff.min_block_min * 60 + 60
    moves = book.deploy("meter-11f", [], later)
    assert moves and all(mv.in_place_at > later + 60 for mv in moves)
    assert book.available() + sum(book.present().values()) == pool


@pytest.fixture(scope="module")
def pen(site, scenario):
    """Seed 0 ×1.0 at 20:48 with the 11F entrance metered (150/min) from 20:23, as the engine
    had it (docs/mpc.md, "The 11F pen flood"), the other measures not: the 400 m² pen fills."""
    m = Model(site, scenario, seed=0)
    m.run_until(hhmm_to_s("20:23"))
    m.set_actions(actions(site, ["meter-11f"]), in_effect=True)
    m.run_until(hhmm_to_s("20:48"))
    return m, ModelTwin(site, scenario.model_copy(update={"demand_scale": 1.0}))


def test_a_metering_flooding_its_own_pen_is_released_as_urgent(site, pen):
    """Kept, the metering's queue puts its pen above 4 p/m² on the evening itself; the engine,
    started with the queue and the metering past its minimum on-time, releases it and marks the
    release urgent (safer without), so the plan engine does not hold it for the quiet time."""
    m, twin = pen
    assert twin.queue_now(m)["port:gate-11f"] > 1000
    truth = copy.deepcopy(m)
    truth.run_until(m.t + 600)
    assert truth.zone_peak_density()["cangbai-plaza"] > 4.0
    now = epoch(m.t)
    on = epoch(hhmm_to_s("20:23"))
    cands = [Candidate(x, active=x.id == "meter-11f", since=on if x.id == "meter-11f" else None,
                       in_effect_at=on if x.id == "meter-11f" else None) for x in site.measures]
    d = Optimizer(site, twin, budget_s=600.0).decide(TwinStart(m.t, m.zone_counts(), twin.queue_now(m)), cands, now)
    assert "meter-11f" in d.off, (d.chosen, d.violations)
    assert "meter-11f" in d.urgent_off



def test_an_urgent_release_cannot_make_a_measure_switch_three_times_in_20_minutes(site):
    """An urgent release skips the quiet time, so the re-on after any release waits instead:
    until ``FLAP_WINDOW_S`` − set-up − min on-time after it (at least the min off-time). Then,
    with the release urgent, on → off → on and off → on → off both span the window on the
    ground, for every measure of the site file."""
    for m in site.measures:
        wait = max(m.min_off_min, FLAP_WINDOW_S / 60 - m.setup_min - m.min_on_min)
        assert m.min_on_min + wait + m.setup_min + m.teardown_min >= FLAP_WINDOW_S / 60, m.id  # on → off → on
        assert wait + m.setup_min + m.min_on_min >= FLAP_WINDOW_S / 60, m.id  # off → on → off
    m = site.measure_by_id["meter-11f"]
    t = epoch(hhmm_to_s("20:30"))
    c = Candidate(m, active=False, since=t)
    assert not off_long_enough(c, t + m.min_off_min * 60 + 1)  # the min off-time alone let it back here
    assert off_long_enough(c, t + (FLAP_WINDOW_S / 60 - m.setup_min - m.min_on_min) * 60)


def test_the_rule_based_stand_in_keeps_the_off_time_too(site):
    """The rules answer when the forecast cannot: they add a measure for an unknown zone, but
    not one released too recently to come back (it would switch a third time within 20 min)."""
    planner = MeasurePlanner(site, None)
    t = epoch(hhmm_to_s("20:30"))
    m = site.measure_by_id["meter-11f"]
    bound = {p.id: "I" for p in site.plans}
    relieved = set(m.relieves)
    others = [x.id for x in site.measures if x.id != m.id and relieved & set(x.relieves)]

    def zones(now):
        return {z.id: ZoneState(zone_id=z.id, status="unknown" if z.id in relieved else "ok", reason="cam offline",
                                count=None if z.id in relieved else 1.0, capacity=z.capacity,
                                capacity_ratio=None if z.id in relieved else 1.0 / z.capacity,
                                updated_at=now, computed_at=now) for z in site.zones}

    released = {m.id: t, **{o: t for o in others}}  # every measure relieving those zones just released
    soon = t + (m.min_off_min + 1) * 60
    d = planner.decide(soon, zones(soon), {}, released, bound, force=True).decision
    assert m.id not in d.on
    late = t + FLAP_WINDOW_S
    d = planner.decide(late, zones(late), {}, released, bound, force=True).decision
    assert set(d.on) & ({m.id} | set(others)), d.on


def test_a_metering_s_queue_is_counted_in_minutes_of_its_metered_rate_and_against_its_pen(site):
    """What holds a release back (``RELEASE_QUEUE_MIN``): the people held at the metering's
    sources and waiting at its gates, over the rate it lets through — for a measure metering two
    gates, both; for a measure that meters nothing, nothing — unless they fill its holding
    area (``PEN_FULL_DENSITY``), when only letting them through relieves the pen."""
    from control.optimizer import RELEASE_QUEUE_MIN

    opt = Optimizer(site, ModelTwin(site, load_scenario("mayday-evening", site)[0]))
    m = site.measure_by_id["meter-bridge"]
    per_min = sum(a.per_min for a in m.actions if a.type == "metering")
    q = {"port:gate-bridge-se": 183.0, "hold:gate-bridge-se": 50.0, "port:gate-11f": 900.0}
    got, full = opt._queue_now(m, TwinStart(0.0, {}, q))
    assert got == pytest.approx(233.0 / per_min) and not full
    assert got > RELEASE_QUEUE_MIN  # seed 8 ×1.0, 21:39: released with this queue, the walkway jammed
    assert opt._queue_now(m, TwinStart(0.0, {}, {"port:gate-bridge-se": 2 * per_min}))[0] < RELEASE_QUEUE_MIN
    pen = next(h.area_m2 for h in site.holding_areas if h.gate == "gate-bridge-se")
    assert opt._queue_now(m, TwinStart(0.0, {}, {"port:gate-bridge-se": 341.0}))[1] is False  # seed 1 ×1.3, 20:17
    assert opt._queue_now(m, TwinStart(0.0, {}, {"port:gate-bridge-se": pen * PEN_FULL_DENSITY}))[1] is True
    xsz = site.measure_by_id["meter-xsz"]
    rate = sum(a.per_min for a in xsz.actions if a.type == "metering")
    both = {"port:gate-xsz-6": 100.0, "hold:gate-xsz-9": 60.0}
    assert opt._queue_now(xsz, TwinStart(0.0, {}, both))[0] == pytest.approx(160.0 / rate)
    assert opt._queue_now(site.measure_by_id["cut-bridge"], TwinStart(0.0, {}, q)) == (0.0, False)
    # full is judged per gate: exit 9's packed concourse is not diluted by exit 6's empty one
    # (seed 1 ×1.1, 20:17: 535 people at exit 9 and a surge, judged on both concourses' area)
    pen9 = next(h.area_m2 for h in site.holding_areas if h.gate == "gate-xsz-9" and h.queue == "arrivals")
    assert opt._queue_now(xsz, TwinStart(0.0, {}, {"hold:gate-xsz-9": pen9 * PEN_FULL_DENSITY}))[1] is True
    # and a measured surge that fills it within the minutes a release takes counts as full now
    short = {"hold:gate-xsz-9": pen9 * PEN_FULL_DENSITY - 100}
    assert opt._queue_now(xsz, TwinStart(0.0, {}, short))[1] is False
    surge = {"hold:gate-xsz-9": 100 / RELEASE_QUEUE_MIN + 1}
    assert opt._queue_now(xsz, TwinStart(0.0, {}, short, surge=surge))[1] is True
