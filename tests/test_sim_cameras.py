"""Virtual cameras (pure) and the simulator's Redis shell against a real Redis."""

from __future__ import annotations

import time

import pytest

from crowdflow.records import Observation, PlanState, decode
from crowdflow.site import ExitOnlyAction, TrafficCutoffAction
from edge.geometry import CameraGeometry
from sim.cameras import Faults, VirtualCameras
from sim.model import Model
from sim.runner import SimRunner, active_actions




def test_views_are_the_edge_geometry_of_each_configured_zone(site, views):
    assert set(views) == {c.id for c in site.cameras}
    for cam in site.cameras:
        assert set(views[cam.id]) <= set(cam.zones)
        geo = CameraGeometry(site, cam)
        assert views[cam.id] == {z: v.visible_area_m2 for z, v in geo.zones.items()}


def test_counts_follow_density_on_the_visible_ground(site, views):
    cams = VirtualCameras(site, views, seed=1, faults=Faults(dropout=0, offline_per_h=0))
    counts = {z.id: 0.5 * z.walkable_area_m2 for z in site.zones}  # 0.5 p/m² everywhere
    seen: dict[tuple[str, str], list[float]] = {}
    for k in range(200):
        for o in cams.observe(1.7e9 + k, counts, {}):
            o = decode(Observation, o.encode())  # what control will decode
            assert o.health == "ok" and o.zones
            for zc in o.zones:
                assert zc.method == "sim" and 0 < zc.confidence <= 1
                assert zc.visible_area_m2 == pytest.approx(views[o.camera_id][zc.zone_id], abs=0.01)
                seen.setdefault((o.camera_id, zc.zone_id), []).append(zc.count / zc.visible_area_m2)
    for key, dens in seen.items():
        assert sum(dens) / len(dens) == pytest.approx(0.5, rel=0.05), key  # unbiased
        assert max(dens) != min(dens)  # but noisy, like a real counter


def test_dropouts_and_offline_cameras_happen_and_are_seeded(site, views):
    faults = Faults(dropout=0.1, offline_per_h=120, offline_mean_s=20)

    def run(seed):
        cams = VirtualCameras(site, views, seed=seed, faults=faults)
        counts = {z.id: 100.0 for z in site.zones}
        return [(o.camera_id, o.health, o.seq) for k in range(600) for o in cams.observe(1.7e9 + k, counts, {})]

    a = run(3)
    assert a == run(3) and a != run(4)
    per_window = len(a) / 600
    assert per_window < len(views) * 0.97  # lost windows
    offline = [x for x in a if x[1] == "camera_offline"]
    assert offline and len(offline) < 0.5 * len(a)
    seqs = [s for c, _, s in a if c == "cam-jiabin"]
    assert seqs == sorted(set(seqs))  # strictly increasing per camera


def test_gate_flows_reach_the_gate_camera(site, scenario, views):
    m = Model(site, scenario, seed=2, tod_s=20 * 3600)
    m.run_until(20 * 3600 + 600)
    cams = VirtualCameras(site, views, seed=1, faults=Faults(dropout=0, offline_per_h=0))
    moved, entered = m.last_moved * 0, m.last_entered * 0
    for _ in range(12):
        m.step()
        moved += m.last_moved
        entered += m.last_entered
    flows = m.gate_flows(moved, entered)
    obs = {o.camera_id: o for o in cams.observe(1.7e9, m.zone_counts(), flows)}
    g = {gf.gate_id: gf for gf in obs["cam-xsz-exit6"].gates}["gate-xsz-6"]
    assert g.inflow == entered[m.net.sources.index("metro-6")] > 0
    assert {gf.gate_id for gf in obs["cam-cangbai-plaza"].gates} == {"gate-11f"}


def test_runner_publishes_and_applies_the_plans_actions(site, scenario, r, keys):
    runner = SimRunner(site, scenario, r, keys, ["cam-jiabin", "cam-bridge-s"], speed=120, seed=5,
                       start_tod=20 * 3600, faults=Faults(dropout=0, offline_per_h=0))
    assert runner.model.t == 20 * 3600 and runner.model.people > 1000  # warmed up, not empty
    assert runner.tick() == 2 and runner.model.t == 20 * 3600 + 120
    recs = [decode(Observation, f["rec"]) for _, f in r.xrange(keys.obs)]
    assert {o.camera_id for o in recs} == {"cam-jiabin", "cam-bridge-s"}
    assert all(abs(o.captured_at - time.time()) < 5 for o in recs)  # wall clock, like an edge agent

    cut = TrafficCutoffAction(type="traffic_cutoff", road="road-jiabin")
    ps = PlanState(plan_id="hongyadong", level="II", auto=False, updated_at=time.time(),
                   active_actions=[cut, ExitOnlyAction(type="exit_only", gate="gate-1f")])
    r.hset(keys.plan_state, mapping={"hongyadong": ps.encode(), "bridge": "{broken"})
    assert [a.type for a in active_actions(r, keys)] == ["traffic_cutoff", "exit_only"]  # broken one skipped
    before = runner.model.zone_counts()["jiabin-frontage"]
    runner.apply_actions()
    assert runner.model.cut_roads == set()  # ordered: officers on their way
    runner.advance(40 * 60)  # the twin's staff travel and set-up
    assert runner.model.cut_roads == {"road-jiabin"} and runner.model.roads_freed == {"road-jiabin"}
    assert runner.model.zone_counts()["jiabin-frontage"] < 0.6 * before  # visibly fewer on the frontage
    r.hdel(keys.plan_state, "hongyadong")
    runner.apply_actions()
    runner.advance(30 * 60)  # tear-down
    assert runner.model.cut_roads == set()


def test_demo_simulates_every_camera_but_the_real_video_one(site):
    from crowdflow.demo import sim_argv
    from tests.conftest import SITE_FILE

    argv = sim_argv(str(SITE_FILE), "cam-cangbai-plaza")
    cams = [argv[i + 1] for i, a in enumerate(argv) if a == "--camera"]
    assert argv[0] == "sim" and sorted(cams) == sorted(c.id for c in site.cameras if c.id != "cam-cangbai-plaza")
    no_video = sim_argv(str(SITE_FILE), None)
    assert no_video.count("--camera") == len(site.cameras)
