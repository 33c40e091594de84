"""Validation of the twin's physics against published measurements (docs/twin.md).

Each test builds a small network with the real model (sim.twin) and checks an emergent
behaviour, so it fails when the physics breaks: the fundamental diagram in a corridor,
bottleneck capacity with a queue upstream, spillback order behind a closure, free walking
time, and exact conservation.
"""

from __future__ import annotations

import numpy as np
import pytest

from crowdflow import crowd
from sim.twin import FD, Chain, Connector, Corridor, Exit, Network, Params, Place, Segment, Source, Spec, Twin


def line(segments, *, exit_cap=1e9, b_area=1e6, a_area=1e6, params=None, connectors=(), extra_places=()):
    """Place A → corridor → place B → exit; people go from A to the exit."""
    places = [Place("A", a_area, 10.0), Place("B", b_area, 10.0), *extra_places]
    spec = Spec(places=places, corridors=[Corridor("c", "A", "B", segments)], connectors=list(connectors),
                exits=[Exit("out", "B", exit_cap)], sources=[],
                chains=[Chain("go", ["out"])], params=params or Params())
    net = Network(spec)
    tw = Twin(net)
    return net, tw


def fill_cells(net, st, cells, persons_per_cell):
    k = net.chain_first["go"]
    st.cell[cells, k] = persons_per_cell


@pytest.mark.parametrize("rho", [0.5, 1.0, 1.75, 2.5, 3.5, 4.5, 5.0])
def test_corridor_reproduces_the_fundamental_diagram(rho):
    """People counted crossing a line in a long uniform corridor at density ρ over a minute:
    Weidmann's q(ρ) = ρ·v(ρ) per metre of width within 5 %, and the interior stays at ρ."""
    net, tw = line([Segment("z", 600.0, 3.0)])
    st = tw.initial()
    ctl = tw.controls()
    lane = np.flatnonzero(net.clane == 0)
    fill_cells(net, st, lane, rho * net.carea[lane])
    line_at = lane[len(lane) // 2]
    downstream = lane[lane > line_at]
    before = st.cell[downstream].sum()
    steps = 12
    for _ in range(steps):
        tw.step(st, ctl, demand=False)
    # crossed the line = gain downstream + what already left the corridor at its far end
    crossed = st.cell[downstream].sum() - before + st.exited + st.act.sum() + st.rdy.sum()
    q = crossed / (3.0 * steps * tw.p.dt)
    assert q == pytest.approx(crowd.specific_flow(rho), rel=0.05)
    assert tw.cell_density(st, ctl)[line_at] == pytest.approx(rho, rel=1e-6)


def test_bottleneck_specific_flow_saturates_in_the_published_range_with_a_queue_upstream():
    """A 4 m corridor narrowing to 1 m: the flow per metre of the narrow part saturates at
    ≈1.2–1.6 p/(m·s) (Weidmann 1993: 1.22; Seyfried et al. 2009 and SFPE: 1.3–1.6) and a queue
    (density above critical) forms upstream while downstream stays in free flow."""
    segs = [Segment("up", 100.0, 4.0), Segment("neck", 20.0, 1.0), Segment("down", 60.0, 4.0)]
    net, tw = line(segs)
    st = tw.initial()
    ctl = tw.controls()
    k = net.chain_first["go"]
    st.rdy[0, k] = 3000.0  # a crowd at A wants to go
    lane = np.flatnonzero(net.clane == 0)
    zone = net.czone[lane]
    neck = lane[zone == net.zi["neck"]]
    passed = []
    for i in range(240):  # 20 min
        tw.step(st, ctl, demand=False)
        passed.append(st.port_flow[net.pidx["B>out"]])
    # steady flow over the last 10 minutes, through 1 m of width
    spec_flow = (passed[-1] - passed[-121]) / (120 * tw.p.dt) / 1.0
    assert 1.2 <= spec_flow <= 1.6, spec_flow
    rho = tw.cell_density(st, ctl)
    up = lane[zone == net.zi["up"]]
    down = lane[zone == net.zi["down"]]
    assert rho[up[-5:]].min() > tw.fd.rho_c  # queued in front of the neck
    assert rho[down].max() < tw.fd.rho_c  # free flow behind it
    assert rho[neck].max() <= tw.fd.rho_c + 1e-6


def test_a_slow_section_takes_no_more_than_it_sends_and_the_queue_stands_upstream():
    """A 4 m corridor with a 100 m viewing span where people walk at half speed
    (``speed_factor`` 0.5 scales the fundamental diagram's speed, so its capacity halves and its
    critical and jam densities stay): a crowd pushed into it saturates at 0.5·q_max per metre,
    the span itself stays at or below critical density (it takes no more than it sends; in
    Daganzo's cell transmission model a cell's supply comes from its own diagram), and the
    queue stands upstream at the congested density whose flow is that capacity."""
    segs = [Segment("up", 200.0, 4.0), Segment("span", 100.0, 4.0, speed_factor=0.5), Segment("down", 60.0, 4.0)]
    net, tw = line(segs)
    st = tw.initial()
    ctl = tw.controls()
    st.rdy[0, net.chain_first["go"]] = 6000.0
    lane = np.flatnonzero(net.clane == 0)
    zone = net.czone[lane]
    span, up = lane[zone == net.zi["span"]], lane[zone == net.zi["up"]]
    beyond = lane[lane >= span[0]]
    entered = []  # people who have entered the span so far
    for _ in range(240):  # 20 min
        tw.step(st, ctl, demand=False)
        entered.append(st.cell[beyond].sum() + st.act.sum() + st.rdy[1:].sum() + st.exited)
    spec_flow = (entered[-1] - entered[-121]) / (120 * tw.p.dt) / 4.0
    assert spec_flow == pytest.approx(0.5 * tw.fd.q_max, rel=0.03)
    rho = tw.cell_density(st, ctl)
    assert rho[span].max() <= tw.fd.rho_c + 1e-6  # before 2026-12-04 the span packed to 4.03 p/m²
    # upstream: the congested branch's density at half of capacity (Weidmann: ≈ 4.0 p/m²)
    grid = np.linspace(tw.fd.rho_c, tw.fd.rho_jam, 4001)
    rho_q = grid[np.argmin(np.abs(tw.fd.flow(grid) - 0.5 * tw.fd.q_max))]
    assert rho[up[-3:]] == pytest.approx(rho_q, rel=0.03)


def test_door_bottleneck_caps_flow_and_queues_in_front_of_it():
    """A door (connector) of 2 m at a specific capacity of 1.3 p/(m·s): the queue stands in
    front of it and the flow never exceeds its capacity."""
    places = [Place("A", 5000.0, 20.0), Place("B", 5000.0, 20.0)]
    spec = Spec(places=places, corridors=[], connectors=[Connector("door", "A", "B", 2.6, width_m=2.0, approach_m2=40.0)],
                exits=[Exit("out", "B", 1e9)], sources=[], chains=[Chain("go", ["out"])])
    net = Network(spec)
    tw = Twin(net)
    st = tw.initial()
    ctl = tw.controls()
    st.rdy[0, net.chain_first["go"]] = 3000.0
    for _ in range(120):
        tw.step(st, ctl, demand=False)
    through = st.port_flow[net.pidx["A>B"]]
    assert through / (120 * tw.p.dt) / 2.0 == pytest.approx(1.3, rel=0.01)
    q = tw.port_queue(st)[net.pidx["A>B"]]
    assert q > 500  # the rest are queued in front of the door


def test_closing_the_exit_fills_upstream_cells_in_order():
    """Close the way out at the end (people keep coming: B is where they are headed and nobody
    leaves it): the end place fills, then the corridor fills cell by cell from its downstream
    end back toward its upstream end (spillback)."""
    places = [Place("A", 1e6, 10.0), Place("B", 300.0, 10.0, dwell_s=1e9)]
    spec = Spec(places=places, corridors=[Corridor("c", "A", "B", [Segment("z", 200.0, 3.0)])], connectors=[],
                exits=[Exit("out", "B", 1e9)], sources=[], chains=[Chain("go", ["B", "out"])],
                params=Params(balk_max_per_min=0.0))  # nobody gives up on B here
    net = Network(spec)
    tw = Twin(net)
    st = tw.initial()
    ctl = tw.controls()
    k = net.chain_first["go"]
    st.rdy[0, k] = 8000.0
    lane = np.flatnonzero(net.clane == 0)
    full_at = np.full(len(lane), np.inf)
    b_full = np.inf
    for i in range(600):
        tw.step(st, ctl, demand=False)
        rho = tw.cell_density(st, ctl)[lane]
        full_at = np.where((rho > 4.0) & np.isinf(full_at), i, full_at)
        if np.isinf(b_full) and tw.place_density(st, ctl)[1] > tw.fd.rho_c:
            b_full = i
    assert np.isfinite(full_at).all()
    assert b_full <= full_at[-1]
    assert (np.diff(full_at) <= 0).all()  # downstream cells filled first
    assert full_at[0] > full_at[-1] + 20  # and it took a while to spill back
    assert st.exited < 1.0  # (a dwell of 1e9 s still lets a few leave)


def test_empty_400m_walkway_takes_its_free_walking_time():
    net, tw = line([Segment("z", 400.0, 3.0)])
    st = tw.initial()
    ctl = tw.controls()
    k = net.chain_first["go"]
    first = np.flatnonzero(net.clane == 0)[0]
    st.cell[first, k] = 5.0  # a handful of people: free flow
    arrived = []
    t = 0.0
    prev = 0.0
    for _ in range(200):
        tw.step(st, ctl, demand=False)
        t += tw.p.dt
        got = st.act[1].sum() + st.rdy[1].sum() + st.exited
        arrived.append((t, got - prev))
        prev = got
    mean_t = sum(ti * a for ti, a in arrived) / sum(a for _, a in arrived)
    assert mean_t == pytest.approx(400 / 1.34, rel=0.03)


def test_people_are_conserved_exactly_on_the_real_evening(twin_model_factory):
    m = twin_model_factory(seed=3)
    st = m.state
    for _ in range(6 * 60 * 12 // 2):  # 6 h at 5 s, half of the steps checked at the end
        m.step()
    st = m.state
    assert st.arrived > 20_000
    assert abs(st.arrived - (st.people + st.exited + st.gave_up)) < 1e-6
    for arr in (st.cell, st.act, st.rdy, st.held):
        assert arr.min() > -1e-9


def test_fd_is_data():
    """A different diagram (data) changes the physics: a slower one carries less."""
    slow = FD(rho=(0.0, 2.0, 4.0), v=(1.0, 0.5, 0.0), name="test")
    assert slow.q_max == pytest.approx(1.0) and slow.rho_c == pytest.approx(2.0)
    assert FD.weidmann().q_max == pytest.approx(1.22, abs=0.02)
    assert FD.weidmann().rho_c == pytest.approx(1.75, abs=0.05)


def two_way():
    """A → 100 m × 3 m corridor → B, people bound both ways (chains ``ab`` and ``ba``), nobody
    balking: (network, twin, empty state, controls)."""
    places = [Place("A", 1e6, 10.0), Place("B", 1e6, 10.0)]
    chains = [Chain("ab", ["outB"]), Chain("ba", ["outA"])]
    spec = Spec(places=places, corridors=[Corridor("c", "A", "B", [Segment("z", 100.0, 3.0)])], connectors=[],
                exits=[Exit("outA", "A", 1e9), Exit("outB", "B", 1e9)], sources=[], chains=chains,
                params=Params(balk_max_per_min=0.0))
    net = Network(spec)
    tw = Twin(net)
    return net, tw, tw.initial(), tw.controls()


def test_counter_flow_loses_capacity_only_while_both_directions_walk():
    """Saturated demand both ways on a 3 m corridor: each direction gets its share of the
    width less the counter-flow loss; close one direction (one-way) and the other carries the
    full q_max·W."""
    def run(both_ways: bool):
        net, tw, st, ctl = two_way()
        st.rdy[0, net.chain_first["ab"]] = 5000.0
        if both_ways:
            st.rdy[1, net.chain_first["ba"]] = 5000.0
        for _ in range(120):
            tw.step(st, ctl, demand=False)
        a = st.port_flow[net.pidx["B>outB"]]
        st.port_flow[:] = 0
        for _ in range(60):
            tw.step(st, ctl, demand=False)
        return st.port_flow[net.pidx["B>outB"]] / (60 * tw.p.dt), st.port_flow[net.pidx["A>outA"]] / (60 * tw.p.dt), a

    ab, ba, _ = run(True)
    solo, _, _ = run(False)
    q = tw_q = FD.weidmann().q_max * 3.0
    assert solo == pytest.approx(q, rel=0.03)
    assert ab + ba == pytest.approx(0.85 * tw_q, rel=0.05)  # the loss, only while both walk
    assert ab > 0.3 * q and ba > 0.3 * q


def test_a_closed_lane_s_draining_remnant_costs_the_open_lane_nothing():
    """A one-way closes the opposing lane; what is left on it drains geometrically and after
    minutes is a fraction of a person. Saturated demand the open way: with 1e-6 of a person on
    the closed lane the corridor carries the full q_max·W (it carried 0.85 × 0.85 of it while
    any trace was left), with ten people on it the shared-width rule applies in full."""
    def flow(remnant: float) -> float:
        net, tw, st, ctl = two_way()
        st.rdy[0, net.chain_first["ab"]] = 5000.0
        back = np.flatnonzero(net.clane == 1)
        ctl.lane_open[1] = False
        out = []
        for i in range(180):
            st.cell[back, :] = 0.0
            st.cell[back, net.chain_first["ba"]] = remnant / len(back)  # held, as a slow remnant
            st.port_flow[:] = 0
            tw.step(st, ctl, demand=False)
            if i >= 120:
                out.append(st.port_flow[net.pidx["B>outB"]] / tw.p.dt)
        return float(np.mean(out))

    q = FD.weidmann().q_max * 3.0
    assert flow(1e-6) == pytest.approx(q, rel=0.03)
    assert flow(10.0) == pytest.approx(0.85 * 0.85 * q, rel=0.05)
