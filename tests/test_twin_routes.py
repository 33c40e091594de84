"""Route choice in the twin (sim/twin.py, docs/twin.md "Route choice"): a crowding-aware
logit split over the ways out of each place, re-evaluated every ``route_every_s``.

A small network with two walkways from A to B, where the exit is: c1 (short, behind a 1 m
gate) and c2 (longer, free). The tests fail when routing goes back to all-or-nothing, ignores queues, or
sends anyone through a closed way.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.twin import Chain, Connector, Corridor, Exit, Network, Params, Place, Segment, Source, Spec, Twin


def two_routes(rate_pps: float = 0.0, **params) -> tuple[Network, Twin]:
    """Two walkways from A to B (like the bridge's east and west sidewalks): c1 is 40 m long
    behind a 1 m gate (1.3 p/s), c2 is 100 m long and free; B has the exit."""
    places = [Place("A", 400.0, 20.0), Place("B", 400.0, 20.0)]
    cors = [Corridor("c1", "A", "B", [Segment(None, 40.0, 3.0)], entry_cap_pps={"a": 1.3}),
            Corridor("c2", "A", "B", [Segment(None, 100.0, 3.0)])]
    src = [Source("in", "A", cap_pps=100.0, times_s=[0.0, 1e6], rates_pps=[rate_pps, rate_pps], chains={"go": 1.0})]
    spec = Spec(places=places, corridors=cors, connectors=[], exits=[Exit("out", "B", 100.0)], sources=src,
                chains=[Chain("go", ["out"])], params=Params(**params))
    net = Network(spec)
    return net, Twin(net)


def port(net: Network, corridor: str, frm: str) -> int:
    """The way into ``corridor`` from place ``frm`` (its lane's port)."""
    return next(k for k in range(net.P) if net.pkind[k] == 0 and net.lanes[net.port_lane[k]][0] == corridor
                and net.lanes[net.port_lane[k]][1] == frm)


def shares(net: Network, st) -> tuple[float, float]:
    k = net.chain_first["go"]
    return float(st.split[port(net, "c1", "A"), k]), float(st.split[port(net, "c2", "A"), k])


def test_an_empty_network_splits_by_travel_time_not_all_or_nothing():
    net, tw = two_routes()
    st = tw.initial()
    tw.route(st, tw.controls())
    s1, s2 = shares(net, st)
    assert s1 + s2 == pytest.approx(1.0)
    # c2 is 60 m longer (≈45 s at free speed): it takes a share, the shorter way more
    assert 0.55 < s1 < 0.8 and s2 > 0.2
    # far from c1 being chosen by everyone; a tiny spread gives all-or-nothing back
    net0, tw0 = two_routes(route_spread_s=1.0)
    st0 = tw0.initial()
    tw0.route(st0, tw0.controls())
    assert shares(net0, st0) == pytest.approx((1.0, 0.0), abs=1e-9)


def flow_share_c1(rate_pps: float, minutes: float = 15.0):
    net, tw = two_routes(rate_pps=rate_pps)
    st = tw.initial()
    ctl = tw.controls()
    for _ in range(int(minutes * 60 / tw.p.dt)):
        tw.step(st, ctl)
    f1, f2 = st.port_flow[port(net, "c1", "A")], st.port_flow[port(net, "c2", "A")]
    return net, tw, st, f1 / (f1 + f2)


def test_a_saturated_bottleneck_sheds_its_share_to_the_other_way():
    # Light demand: people split by travel time, the short way takes ≈ its logit share.
    net, tw, st, light = flow_share_c1(0.2)
    k = net.chain_first["go"]
    s1_empty = st.split[port(net, "c1", "A"), k]
    assert light == pytest.approx(s1_empty, abs=0.05)
    # Demand above what the 1 m gate passes (3 p/s against 1.3 p/s): the gate's queue raises the
    # short way's cost, its share drops and the walkers waiting there take the free way, so
    # the gate carries at most its capacity and no long queue builds.
    net, tw, st, heavy = flow_share_c1(3.0)
    s1, s2 = shares(net, st)
    assert s1 < s1_empty - 0.02 and s2 > 1 - s1_empty + 0.02
    assert heavy <= 1.3 / 3.0 + 0.02 and heavy < light - 0.2
    assert 1 < tw.port_queue(st)[port(net, "c1", "A")] < 30
    assert st.people + st.exited + st.gave_up == pytest.approx(st.arrived, abs=1e-6)
    # All-or-nothing (a 1-s spread): everyone on the short way until its queue wait exceeds the
    # detour, then everyone on the long one: a queue of tens at the gate instead.
    n0, t0 = two_routes(rate_pps=3.0, route_spread_s=1.0)
    s0 = t0.initial()
    c0 = t0.controls()
    peak = 0.0
    for _ in range(int(15 * 60 / t0.p.dt)):
        t0.step(s0, c0)
        peak = max(peak, t0.port_queue(s0)[port(n0, "c1", "A")])
    assert peak > 2 * tw.port_queue(st)[port(net, "c1", "A")]


def test_a_closed_way_gets_nothing_at_once_and_reopens():
    net, tw = two_routes(rate_pps=2.0)
    st = tw.initial()
    ctl = tw.controls()
    for _ in range(60):
        tw.step(st, ctl)
    assert st.port_flow[port(net, "c1", "A")] > 0
    closed = ctl.copy()
    closed.port_open[port(net, "c1", "A")] = False
    st.next_route = st.t  # the closure is seen at the next re-evaluation (here: now)
    before = st.port_flow[port(net, "c1", "A")]
    for _ in range(120):
        tw.step(st, closed)
    s1, s2 = shares(net, st)
    assert s1 == 0.0 and s2 == pytest.approx(1.0)
    assert st.port_flow[port(net, "c1", "A")] == before
    assert tw.port_queue(st)[port(net, "c1", "A")] == 0.0
    # reopened: the damped split comes back over a few re-evaluations
    st.next_route = st.t
    for _ in range(int(10 * 60 / tw.p.dt)):
        tw.step(st, ctl)
    assert shares(net, st)[0] > 0.3


def test_routes_never_loop_back():
    """Only ways that bring a class strictly closer to its target are in its choice set (Dial's
    efficient routes), so nobody walks back toward where they came from."""
    net, tw = two_routes()
    st = tw.initial()
    tw.route(st, tw.controls())
    k = net.chain_first["go"]
    for back in (port(net, "c1", "B"), port(net, "c2", "B")):
        assert st.split[back, k] == 0.0
    per_place = net.PF @ st.split
    assert np.allclose(per_place[net.pi["A"], k], 1.0) and np.allclose(per_place[net.pi["B"], k], 1.0)


def test_people_who_visited_an_enclosed_area_are_not_routed_through_it_again():
    """An area behind two gated doors (like the complex behind 11F and 1F): visitors go in at
    O's door, out at R's, and their chain's exit is back at O. The only way there is through the
    area again; they must leave by R's exit instead of re-entering (one entry per visitor)."""
    places = [Place("O", 400.0, 20.0), Place("I", 400.0, 20.0, dwell_s=60.0), Place("R", 400.0, 20.0, dwell_s=60.0)]
    conns = [Connector("O>I", "O", "I", 5.0, gate="g-o"), Connector("R>I", "R", "I", 5.0, gate="g-r")]
    src = [Source("in", "O", cap_pps=100.0, times_s=[0.0, 600.0], rates_pps=[1.0, 1.0], chains={"visit": 1.0})]
    spec = Spec(places=places, corridors=[], connectors=conns, exits=[Exit("xo", "O", 100.0), Exit("xr", "R", 100.0)],
                sources=src, chains=[Chain("visit", ["I", "R", "xo"])], params=Params())
    net = Network(spec)
    tw = Twin(net)
    st = tw.initial(seed=3)
    ctl = tw.controls()
    for _ in range(int(40 * 60 / tw.p.dt)):
        tw.step(st, ctl)
    entries = st.port_flow[net.pidx["O>I"]] + st.port_flow[net.pidx["R>I"]]
    assert st.arrived > 400
    assert st.port_flow[net.pidx["R>I"]] < 1e-6  # nobody walks back in through R's door
    assert entries <= st.arrived + 1e-6
    assert st.exits[net.ei["xr"]] > 0.9 * st.exited  # they left by R's exit
    # conservation
    assert st.arrived == pytest.approx(st.people + st.exited + st.gave_up, abs=1e-6)
