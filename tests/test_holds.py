"""Queue counts reported at the holding areas (command ``report_queue``, docs/mpc.md "Queue
counts"): the staff at a pen and the metro operator count what the cameras cannot see. On the
real site file, the real twin and a real Redis: a count is kept, checked and goes stale; a
packed concourse raises its area's level with a reason that names it; the planner starts from
the count, so a surge it did not forecast shows in its forecast; control answers the command
and publishes the pen's state."""

from __future__ import annotations

import time

import pytest

from control.holds import MAX_PEN_DENSITY, TREND_WINDOW_S, HoldBook
from control.measures import MeasurePlanner
from control.plans import PlanEngine
from control.service import ControlService
from crowdflow.records import HOLD_STALE_S, PEN_FULL_DENSITY, Command, CommandResult, HoldState, decode, hold_as_of
from sim.model import Model
from sim.plantwin import ModelTwin
from sim.reports import QueueReporters
from sim.scenario import hhmm_to_s

from .test_mpc import epoch, states

T = 1.8e9
CONCOURSE = "hold-xsz-9"  # Xiaoshizi exit 9 concourse, 300 m², behind gate-xsz-9


def test_a_count_is_kept_checked_and_goes_stale(site):
    book = HoldBook(site)
    assert book.report("hold-nowhere", 10, T, "a", T).startswith("hold_id:")
    too_many = int(300 * MAX_PEN_DENSITY) + 1
    assert "physical limit" in book.report(CONCOURSE, too_many, T, "a", T)
    assert "old" in book.report(CONCOURSE, 10, T - HOLD_STALE_S - 1, "a", T)
    assert book.state(CONCOURSE, T).status == "unknown"  # never reported: unknown, not 0
    assert book.state(CONCOURSE, T).people is None
    assert book.report(CONCOURSE, 600, T, "metro", T) is None
    assert book.report(CONCOURSE, 100, T - 30, "late", T) is None  # an older count arriving late
    s = book.state(CONCOURSE, T + 10)
    assert (s.status, s.people, s.density, s.reported_by) == ("ok", 600, 2.0, "metro")
    assert book.queues(T + 10) == {"hold:gate-xsz-9": 600}
    stale = book.state(CONCOURSE, T + HOLD_STALE_S + 1)
    assert stale.status == "unknown" and stale.people is None and stale.last_people == 600
    assert book.queues(T + HOLD_STALE_S + 1) == {}
    # a reader applies the same limit to a published state (a silent control)
    assert hold_as_of(s, T + HOLD_STALE_S + 1).status == "unknown"
    assert hold_as_of(s, T + 60).people == 600


def test_a_departures_queue_is_shown_not_planned_from(site):
    book = HoldBook(site)
    assert book.report("hold-xsz-9-out", 200, T, "staff", T) is None
    assert book.state("hold-xsz-9-out", T).people == 200
    assert book.queues(T) == {}


def test_a_packed_concourse_raises_its_area_and_says_so(site):
    """The exits themselves are quiet; the concourse behind them is reported at 3 p/m². A pen
    within its design density (2 p/m²) raises nothing: it is a queue working as designed."""
    eng = PlanEngine(site)
    now = T
    quiet = {z.id: _state(z, 0.1, now) for z in site.zones}
    eng.holds.report(CONCOURSE, int(1.8 * 300), now, "metro", now)
    for k in range(10):
        eng.evaluate(now + 30 * k, quiet)
    assert eng.areas["xiaoshizi"].level is None and not [r for r in eng.recs.values() if r.plan_id == "xiaoshizi"]
    now += 300
    eng.holds.report(CONCOURSE, 900, now, "metro", now)
    recs = []
    for k in range(6):  # the area's level II sustain is 60 s
        recs += eng.evaluate(now + 30 * k, quiet)
    rec = next(r for r in recs if r.plan_id == "xiaoshizi")
    assert rec.level == "II"  # 3 p/m² ≥ level II's 2.5, sustained 60 s
    why = next(x for x in rec.reasons if x.metric == "density" and x.value == pytest.approx(3.0))
    assert "小什字9号口站厅" in why.text.zh and "reported count" in why.text.en
    assert why.value >= PEN_FULL_DENSITY


def _state(z, ratio, now):
    from crowdflow.records import ZoneState

    n = ratio * z.capacity
    return ZoneState(zone_id=z.id, status="ok", count=n, density=n / z.walkable_area_m2, capacity=z.capacity,
                     capacity_ratio=ratio, flow_ppm=0.0, updated_at=now, computed_at=now)


@pytest.fixture(scope="module")
def metered_evening(site, scenario):
    """The yardstick's twin at 20:16 with Xiaoshizi metered since 19:00 (seed 0, ×1)."""
    m = Model(site, scenario, seed=0)
    m.run_until(hhmm_to_s("19:00"))
    m.set_actions([a for a in site.measure_by_id["meter-xsz"].actions], in_effect=True)
    m.run_until(hhmm_to_s("20:16"))
    return m


@pytest.fixture(scope="module")
def at_2016(site, scenario, metered_evening):
    """(planning twin at ×1, now, the fused zone states) of ``metered_evening``."""
    now = epoch(hhmm_to_s("20:16"))
    return ModelTwin(site, scenario.model_copy(update={"demand_scale": 1.0})), now, states(site, metered_evening, now)


def _counted(pl: MeasurePlanner, counts, now: float) -> None:
    """The operator's counts of the concourse, a minute apart, the last one now."""
    for k, n in enumerate(counts):
        t = now - 60 * (len(counts) - 1 - k)
        pl.holds.report(CONCOURSE, n, t, "metro", t)


def test_the_planner_starts_from_a_reported_queue_and_sees_the_surge(site, at_2016):
    """A concourse the dead reckoning puts near empty is reported at 1,200 people: the plan's
    start takes the count, and its forecast shows the concourse over its target."""
    twin, now, zs = at_2016
    active = {"meter-xsz": now - 3600}
    bound = {p.id: "III" for p in site.plans}

    blind = MeasurePlanner(site, twin, budget_s=60)
    d0 = blind.decide(now, zs, active, {}, bound).decision
    told = MeasurePlanner(site, twin, budget_s=60)
    told.holds.report(CONCOURSE, 1200, now - 20, "metro", now)
    assert told._queues(now, active)["hold:gate-xsz-9"] == 1200
    d1 = told.decide(now, zs, active, {}, bound).decision
    full = 300 * PEN_FULL_DENSITY
    without = d1.curves["without"]["hold:gate-xsz-9"]
    assert without[0] >= 1200 / full * 0.99  # the forecast starts from the count
    assert max(d0.curves["without"].get("hold:gate-xsz-9", [0.0])) < without[0]
    # and a standing plan is re-planned when a report drifts far from its reckoning
    assert not told._queue_drifted(now + 30, active)
    blind.holds.report(CONCOURSE, 1200, now, "metro", now)
    assert blind._queue_drifted(now + 30, active)


def test_a_queue_s_trend_comes_from_enough_fresh_reports(site):
    """The metro operator counts the concourse every minute: three or more counts over two
    minutes give its growth (least squares) with a standard error; fewer, or old ones, none."""
    book = HoldBook(site)
    for k, n in enumerate((300, 410, 545, 655)):
        book.report(CONCOURSE, n, T + 60 * k, "metro", T + 60 * k)
    now = T + 180
    slope, se = book.trends(now)["hold:gate-xsz-9"]
    assert slope == pytest.approx(120.0, abs=0.1)
    assert 10 < se < 40  # 10 % of ≈ 500 people over four counts a minute apart
    assert book.trends(now + TREND_WINDOW_S) == {}  # the counts have aged out of the window
    two = HoldBook(site)
    for k in range(2):
        two.report(CONCOURSE, 300 + 100 * k, T + 60 * k, "metro", T + 60 * k)
    assert two.trends(T + 60) == {}
    out = HoldBook(site)  # a departures pen is shown, not planned from
    for k in range(4):
        out.report("hold-xsz-9-out", 100 + 50 * k, T + 60 * k, "staff", T + 60 * k)
    assert out.trends(T + 180) == {}


@pytest.mark.parametrize("counts, surge", [((300, 420, 540, 660), True),  # a bunch of late trains
                                           ((660, 600, 700, 640), False),  # steady, counted ±10 %
                                           ((660, 660, 660, 660), False)])
def test_a_concourse_growing_faster_than_forecast_is_a_surge(site, at_2016, counts, surge):
    """Offset-free MPC on the pens (control.optimizer, SURGE_*): a concourse the operator counts
    growing ≈120 a minute, where the twin's own arrivals would not grow it, is forecast to go on
    growing for the surge's minutes and overflows its target, and what is switched on for it
    says so; the same count steady, or scattered by the counts' own error, adds nothing."""
    twin, now, zs = at_2016
    pl = MeasurePlanner(site, twin, budget_s=60)
    _counted(pl, counts, now)
    d = pl.decide(now, zs, {"meter-xsz": now - 3600}, {}, {p.id: "III" for p in site.plans}).decision
    without = d.curves["without"]["hold:gate-xsz-9"]
    full = 300 * PEN_FULL_DENSITY
    if surge:
        assert 90 < d.surge["hold:gate-xsz-9"] < 200
        assert max(without) > without[0] + 5 * 90 / full  # still growing minutes after the start
        # the concourse's growth is the measure's reason, in both languages
        assert d.on and all("beyond the forecast" in d.reasons[m].en and "比预测多增" in d.reasons[m].zh for m in d.on)
    else:
        assert d.surge == {}
        assert max(without[5:]) <= without[0] + 60 / full


def test_a_queue_counted_across_a_change_at_its_gate_is_no_surge(site, at_2016):
    """The metro operator's diversion (只上不下) took effect a minute ago: the concourse counted
    steady over the last minutes was filling under the old measures, and the twin under the new
    ones drains it at once. That difference is the measure, not arrivals: no surge."""
    twin, now, zs = at_2016
    pl = MeasurePlanner(site, twin, budget_s=60)
    since = now - 60 - (pl.in_effect_at("board-only-xsz", 0.0) - 0.0)  # on the ground since now − 60 s
    active = {"meter-xsz": now - 3600, "board-only-xsz": since}
    _counted(pl, (660, 660, 660, 660), now)
    d = pl.decide(now, zs, active, {}, {p.id: "I" for p in site.plans}).decision
    assert d.surge == {}


def test_reporters_count_pens_in_use_at_their_own_pace(site, scenario):
    m = Model(site, scenario, seed=0)
    net = m.net
    rep = QueueReporters(site, net, seed=1)
    assert rep.due(0.0, m) == []  # nothing held, nothing metered
    s = net.sources.index("metro-9")
    m.state.held[s] = 500.0 * net.src_mix[s]
    out = dict(rep.due(0.0, m))
    assert 350 <= out[CONCOURSE] <= 700  # 10 % error
    assert CONCOURSE not in dict(rep.due(30.0, m))  # the operator reports every 60 s
    assert CONCOURSE in dict(rep.due(60.0, m))
    # the bridge's south entry has no source: its pen is the queue before the metered way
    assert "hold-bridge-se" in {p[0] for p in rep.pens}


def test_a_count_at_a_metered_way_is_the_twins_port_queue(site, scenario):
    twin = ModelTwin(site, scenario.model_copy(update={"demand_scale": 1.0}))
    planner = MeasurePlanner(site, twin)
    planner.holds.report("hold-bridge-se", 240, T, "staff", T)
    planner.holds.report(CONCOURSE, 300, T, "metro", T)
    q = planner._queues(T, {})
    assert q["port:gate-bridge-se"] == 240 and q["hold:gate-xsz-9"] == 300
    assert "hold:gate-bridge-se" not in q


def _command(r, keys, **kw) -> Command:
    cmd = Command(id=f"q-{time.time_ns()}", kind="report_queue", user="officer-1", role="viewer",
                  issued_at=time.time(), **kw)
    r.xadd(keys.cmd, {"rec": cmd.encode()})
    return cmd


def test_control_answers_a_report_and_publishes_the_pen(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()  # every pen is published at once, unknown: nobody has counted it yet
    first = [decode(HoldState, v) for v in r.hgetall(keys.hold_state).values()]
    assert sorted((h.hold_id, h.status, h.people) for h in first) == sorted(
        (h.id, "unknown", None) for h in site.holding_areas)

    ok = _command(r, keys, hold_id=CONCOURSE, people=750)
    bad = _command(r, keys, hold_id=CONCOURSE, people=5000)
    svc.step(block_ms=100)
    res = {c: decode(CommandResult, r.hget(keys.cmd_results, c)) for c in (ok.id, bad.id)}
    assert res[ok.id].ok and not res[bad.id].ok and "physical limit" in res[bad.id].error
    pen = decode(HoldState, r.hget(keys.hold_state, CONCOURSE))
    assert (pen.status, pen.people, pen.density, pen.reported_by) == ("ok", 750, 2.5, "officer-1")
    events = [decode(HoldState, f["rec"]) for _, f in r.xrange(keys.events) if f["type"] == "hold"]
    assert events[-1].people == 750
    assert svc.engine.holds.queues(time.time())["hold:gate-xsz-9"] == 750

    # a new leader keeps the fresh count (it is read back from the published state), and a
    # count gone stale meanwhile still shows as the last count, with its time
    r.hset(keys.hold_state, "hold-11f", svc.holds.state("hold-11f", time.time()).model_copy(
        update=dict(status="unknown", last_people=80.0, last_at=time.time() - 900)).encode())
    again = ControlService(site, r, keys, consumer="c2")
    again.start()
    assert again.holds.state(CONCOURSE, time.time()).people == 750
    old = decode(HoldState, r.hget(keys.hold_state, "hold-11f"))
    assert old.status == "unknown" and old.last_people == 80.0


def test_the_whatif_panel_starts_from_the_reported_queues(site, scenario):
    """The what-if from the live state: a concourse reported packed (published HoldState) is in
    the twin's start, so the chart shows it; a stale count is not."""
    from dashboard.whatif import WhatIfRequest, WhatIfService

    svc = WhatIfService(site, lambda: ModelTwin(site, scenario.model_copy(update={"demand_scale": 1.0})))
    now = epoch(hhmm_to_s("20:16"))
    book = HoldBook(site)
    book.report(CONCOURSE, 1200, now - 30, "metro", now)
    book.report("hold-bridge-se", 240, now - 30, "staff", now)
    fresh = list(book.states(now).values())
    out = svc.run(WhatIfRequest(measures=["board-only-xsz"]), {}, {}, {}, now, fresh)
    assert out["queues"] == {"hold:gate-xsz-9": 1200.0, "port:gate-bridge-se": 240.0}
    stale = [hold_as_of(s, now + HOLD_STALE_S + 60) for s in fresh]
    assert svc.run(WhatIfRequest(measures=["board-only-xsz"]), {}, {}, {}, now, stale)["queues"] == {}


def _with_surge(m: Model, minutes: float, per_min: float = 120.0) -> float:
    """The yardstick's incident (``sim.evaluate.SURGE``: a bunch of trains at exit 9) played on
    ``m`` for ``minutes``, at its mean rate; the highest local density of the exit's zone (its
    concourse included) meanwhile, as the yardstick judges it."""
    src = m.net.sources.index("metro-9")
    k = m.zones.index("xsz-exit9")
    peak = 0.0
    for _ in range(int(round(minutes * 60 / m.step_s))):
        m.state.held[src] += per_min / 60.0 * m.step_s * m.net.src_mix[src]
        m.state.arrived += per_min / 60.0 * m.step_s
        m.step()
        peak = max(peak, float(m.peak_density_array()[k]))
    return peak


def test_a_surge_into_a_metered_concourse_lets_the_metering_go(site, at_2016, metered_evening):
    """docs/mpc.md, "A surge into a metered concourse". The operator counts exit 9's concourse
    filling ≈120 a minute behind the metering. On the evening itself, kept, the metering packs
    the concourse past 4 p/m²; let go now, the surge spreads onto the exit and the sidewalk and
    nobody stands at 4 p/m². The planner lets it go at once, urgent (safety before the sidewalk's
    service target it breaks); the surge let out still packs the exit in its forecast, so it
    names the exit's zone at risk (the bound is lifted: the next test)."""
    import copy

    kept = _with_surge(copy.deepcopy(metered_evening), 12)
    let_go = copy.deepcopy(metered_evening)
    let_go.set_actions([], in_effect=True)
    assert kept > 4.0 > _with_surge(let_go, 12), kept

    twin, now, zs = at_2016
    pl = MeasurePlanner(site, twin, budget_s=60)
    _counted(pl, (300, 420, 540, 660), now)
    d = pl.decide(now, zs, {"meter-xsz": now - 3600}, {}, {p.id: "IV" for p in site.plans}).decision
    assert "meter-xsz" in d.off and "meter-xsz" in d.urgent_off, (d.chosen, d.violations)
    assert any(p.element in ("xsz-exit9", "cangbai-walk") for p in d.violations)  # the service it costs
    assert pl.zones_at_risk(now) == {"xsz-exit9"}
    assert any(p.element == "local:xsz-exit9" for p in d.violations)


def test_a_concourse_the_allowed_measures_cannot_keep_safe_lifts_its_area_s_bound(site, at_2016):
    """The same surge with the metering on the ground for six minutes only (its minimum on-time
    is ten; on since before the counts' window, so their growth is arrivals, not the metering):
    it cannot go yet, and the forecast packs the concourse to 4 p/m². Stopping alighting
    (level III) is beyond the bound of an area at no level, so the planner names the concourse
    at risk and the plan engine lets the area's bound reach one level further on the next
    cycle (prediction within reach, for ground no camera counts), where stopping alighting is
    chosen — minutes before the packed concourse would raise the level itself. The planner
    keeps standing plans (as the yardstick runs it): the bound opening where the plan breaks a
    safety target re-plans; a bound rising elsewhere does not."""
    twin, now, zs = at_2016
    pl = MeasurePlanner(site, twin, budget_s=60, replan_max_s=300.0)
    engine = PlanEngine(site, planner=pl)
    engine.areas["hongyadong"].measures["meter-xsz"] = now - 480  # set up 2 min later
    _counted(pl, (300, 420, 540, 660), now)
    assert engine.areas["xiaoshizi"].level is None
    assert not next(c for c in pl.candidates({}, {}, {p.id: "IV" for p in site.plans})
                    if c.id == "board-only-xsz").allowed  # beyond the bound at no level
    engine.evaluate(now, zs)
    d = pl.last.decision
    assert "board-only-xsz" not in d.chosen and "meter-xsz" in d.chosen
    assert pl.zones_at_risk(now) == {"xsz-exit9"}
    runs = pl.plans_run
    engine.evaluate(now + 30, zs)
    d = pl.last.decision
    assert pl.plans_run == runs + 1 and pl.plans_kept == 0  # re-planned, not the standing plan
    assert "board-only-xsz" in d.chosen, (d.chosen, d.violations)
    assert engine.areas["xiaoshizi"].risk_until >= now + 30
    # a standing plan and a bound rising in an area whose zones it keeps safe: it stands
    active = {"meter-xsz": now - 480}
    bound = {p.id: "IV" for p in site.plans}
    calm = MeasurePlanner(site, twin, budget_s=60, replan_max_s=300.0)
    _counted(calm, (300, 420, 540, 660), now)
    calm.decide(now, zs, active, {}, bound)
    assert {p.element for p in calm.last.decision.violations} & calm.optimizer.safety
    calm.decide(now + 30, zs, active, {}, {**bound, "bridge": "III"})
    assert calm.plans_kept == 1
    calm.decide(now + 60, zs, active, {}, {**bound, "bridge": "III", "xiaoshizi": "III"})
    assert calm.plans_kept == 1  # opened where the concourse is at risk: re-planned
