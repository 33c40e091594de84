"""The Redis layer on a real Redis Cluster (3 masters + 3 replicas started by
scripts/redis_cluster.py): RedisCluster selection, hash-tagged keys in one slot, the fenced
MULTI/EXEC, scripts that declare their keys, dead letters, the dashboard reading it."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from control.service import GROUP, ControlService
from crowdflow.bus import Keys, LeaderLease, LeaseLost, connect, hash_tag, is_cluster
from crowdflow.records import InForce, Observation, ZoneCount, ZoneState, decode

from .cluster import start_cluster


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster()
    yield c
    c.stop()


@pytest.fixture
def rc(cluster):
    r = connect(cluster.url)
    yield r
    r.close()


def obs(seq: int, count: float = 19.0, t: float | None = None) -> Observation:
    return Observation(camera_id="cam-cangbai-plaza", agent_id="t", seq=seq, captured_at=t or time.time(),
                       zones=[ZoneCount(zone_id="cangbai-plaza", count=count, visible_area_m2=950.0)])


def test_cluster_url_selects_redis_cluster(rc, cluster):
    assert is_cluster(rc)
    assert len(rc.get_primaries()) == 3
    nodes = cluster.cli(cluster.base_port, "cluster", "nodes")
    assert nodes.count("master") == 3 and nodes.count("slave") == 3
    assert not is_cluster(connect("redis://127.0.0.1:6379/0"))


def test_a_tagged_prefix_keeps_every_key_in_one_slot(rc):
    keys = Keys("cf:{site}")
    names = [keys.obs, keys.obs_dead, keys.zone_state, keys.plan_state, keys.events, keys.cmd, keys.cmd_results,
             keys.audit, keys.leader, keys.leader_last, keys.mode, keys.obs_seen("cam-x"), keys.zone_history("z")]
    assert {rc.keyslot(n) for n in names} == {rc.keyslot("{site}")}
    part = Keys("cf").partition("bridge")
    assert part.prefix == "cf:{bridge}" and hash_tag(part.obs) == "bridge"
    assert {rc.keyslot(n) for n in (part.obs, part.leader, part.obs_seen("c"))} == {rc.keyslot("{bridge}")}
    with pytest.raises(ValueError):
        Keys("cf:{site}").partition("x")


def test_untagged_keys_are_refused_across_slots_so_the_tag_matters(rc):
    keys = Keys(f"t-{uuid.uuid4().hex[:6]}")  # no hash tag: obs and leader land in different slots
    assert rc.keyslot(keys.leader) != rc.keyslot(keys.leader_last)
    lease = LeaderLease(rc, keys.leader)
    with pytest.raises(redis.RedisClusterException):  # the script declares both keys: refused, never wrong
        lease.acquire()


def test_lease_and_fenced_transaction_on_a_cluster(rc):
    keys = Keys(f"t-{uuid.uuid4().hex[:6]}:{{p1}}")
    a = LeaderLease(rc, keys.leader, ttl_ms=1000, instance_id="a")
    b = LeaderLease(rc, keys.leader, ttl_ms=1000, instance_id="b")
    assert a.acquire() and not b.acquire()
    a.transaction(lambda pipe: pipe.hset(keys.zone_state, "z", "1"))
    assert rc.hget(keys.zone_state, "z") == "1"
    time.sleep(1.2)  # a's lease lapses (a paused leader)
    assert b.acquire()
    with pytest.raises(LeaseLost):
        a.transaction(lambda pipe: pipe.hset(keys.zone_state, "z", "stale"))
    assert rc.hget(keys.zone_state, "z") == "1"
    for k in (keys.leader, keys.leader_last, keys.zone_state):
        rc.delete(k)


def test_control_runs_on_a_cluster(rc, site):
    keys = Keys(f"t-{uuid.uuid4().hex[:6]}:{{site}}")
    svc = ControlService(site, rc, keys, consumer="c1")
    svc.fenced = True
    assert svc.lease.acquire()
    svc.start()
    rc.xadd(keys.obs, {"rec": obs(1, 40.0).encode()})
    rc.xadd(keys.obs, {"rec": obs(1, 40.0).encode()})  # a duplicate (camera, seq)
    rc.xadd(keys.obs, {"rec": b"\xff\xfe not json"})  # a poison pill
    for _ in range(3):
        svc.step(block_ms=100)
    assert svc.applied == 1 and svc.duplicates == 1 and svc.rejected == 1
    st = decode(ZoneState, rc.hget(keys.zone_state, "cangbai-plaza"))
    assert st.status == "ok" and st.count > 0
    assert rc.xpending(keys.obs, GROUP)["pending"] == 0
    dead = rc.xrange(keys.obs_dead)
    assert len(dead) == 1 and "raw_b64" in dead[0][1]
    for key in rc.scan_iter(match=keys.all_keys_pattern()):
        rc.delete(key)


def test_dashboard_reads_and_commands_through_a_cluster(rc, cluster, site, monkeypatch):
    import threading

    from fastapi.testclient import TestClient

    from dashboard.app import create_app

    from .dash import PASSWORDS, users_env

    monkeypatch.setenv("CROWDFLOW_USERS", users_env())
    keys = Keys(f"t-{uuid.uuid4().hex[:6]}:{{site}}")
    stop = threading.Event()
    svc = ControlService(site, rc, keys, consumer="ctl-dash")
    t = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    t.start()
    try:
        rc.xadd(keys.obs, {"rec": obs(1, 50.0).encode()})
        with TestClient(create_app(site, cluster.url, keys)) as c:
            assert c.post("/api/login", json={"username": "commander", "password": PASSWORDS["commander"]}).status_code == 200
            deadline = time.time() + 10
            while time.time() < deadline:
                zone = next(z for z in c.get("/api/state").json()["zones"] if z["zone_id"] == "cangbai-plaza")
                if zone["status"] == "ok":
                    break
                time.sleep(0.2)
            assert zone["status"] == "ok" and zone["count"] > 0
            res = c.post("/api/commands", json={"kind": "set_mode", "mode": "emergency"})
            assert res.status_code == 200, res.text
            assert c.get("/api/state").json()["mode"]["mode"] == "emergency"
            assert "set_mode" in [a["action"] for a in c.get("/api/audit").json()]
            # sessions (two slots on a cluster: the session and the user's index) and logout
            assert c.post("/api/logout").status_code in (200, 204)
            assert c.get("/api/me").status_code == 401
    finally:
        stop.set()
        t.join(10)
        for key in rc.scan_iter(match=keys.all_keys_pattern()):
            rc.delete(key)


# ----------------------------------------------------------------------------- the site file


def test_prefix_may_carry_one_hash_tag(raw):
    from crowdflow.site import parse_site

    from .conftest import problems_of

    for ok in ("cf", "cf:{site}", "tenant-a:{bridge}", "cf:v2"):
        assert parse_site({**raw, "redis": {"prefix": ok}}).redis.prefix == ok
    assert problems_of({**raw, "redis": {"prefix": "cf:{a}:{b}"}}) == [
        "redis.prefix: 'cf:{a}:{b}' has 2 hash tags; Redis Cluster only uses the first, give one"]
    assert problems_of({**raw, "redis": {"prefix": "cf:{}"}})[0].startswith("redis.prefix: String should match pattern")
    assert problems_of({**raw, "redis": {"prefix": "cf {x}"}})[0].startswith("redis.prefix: String should match pattern")


def test_check_config_refuses_what_couples_two_partitions(raw):
    """Hongyadong's own plan areas are coupled: this is why its file runs as one partition."""
    from .conftest import problems_of

    data = {**raw, "control": {**raw["control"], "partitions": {"bridge": ["bridge"], "complex": ["hongyadong"],
                                                                 "metro": ["xiaoshizi"]}}}
    assert problems_of(data) == [
        "cameras[1]: camera 'cam-cangbai-walk' reports zones of partitions {'complex': ['cangbai-walk'], "
        "'metro': ['xsz-exit9']}; split it into one camera id per partition or move the zones",
        "plans[0].levels[3].actions[1]: acts on zones ['cangbai-plaza', 'cangbai-walk'] of partition(s) "
        "['complex'], not 'bridge': a measure stays in its partition",
        "plans[1].levels[2].actions[1]: acts on zones ['bridge-s-head'] of partition(s) ['bridge'], "
        "not 'complex': a measure stays in its partition",
    ]
    data["control"]["partitions"] = {"a": ["bridge", "hongyadong"], "b": ["nope"]}
    assert problems_of(data)[:2] == ["control.partitions.b[0]: unknown plan 'nope'",
                                     "plans[2]: plan 'xiaoshizi' is in no partition of control.partitions"]
    data["control"]["partitions"] = {"all": ["bridge", "hongyadong", "xiaoshizi"]}
    data["redis"] = {"prefix": "cf:{x}"}
    assert problems_of(data) == ["redis.prefix: 'cf:{x}' has a hash tag; with control.partitions each partition "
                                 "adds its own ({partition}), so give a prefix without braces"]


# ----------------------------------------------------------------------------- partitions


def test_partitioned_site_on_a_cluster_dashboard_sim_and_two_workers(rc, cluster, raw, monkeypatch):
    """Two workers share three partitions on the cluster; the simulator publishes each camera to
    its partition; the dashboard shows every partition, routes a confirm to the right one and
    a mode switch to all of them."""
    import threading

    from fastapi.testclient import TestClient

    from control.workers import Worker, wait_balanced
    from crowdflow.site import parse_site
    from crowdflow.site.partitions import partition_keys
    from dashboard.app import create_app
    from sim.runner import SimRunner
    from sim.scenario import load_scenario

    from .dash import PASSWORDS, users_env
    from .partitioned import partitioned
    from .seed import seed_recommendation

    monkeypatch.setenv("CROWDFLOW_USERS", users_env())
    site = parse_site(partitioned(raw))
    keys = Keys(f"t-{uuid.uuid4().hex[:6]}")
    parts = partition_keys(site, keys)
    for k in parts.values():  # one slot per partition: its stream, lease and state together
        assert len({rc.keyslot(n) for n in (k.obs, k.leader, k.zone_state, k.events, k.obs_seen("c"))}) == 1
    rec = seed_recommendation(rc, parts["bridge"], site, "bridge", "IV", "bridge-e-mid")
    rec2 = seed_recommendation(rc, parts["complex"], site, "hongyadong", "IV", "cangbai-plaza")
    workers = [Worker(site, rc, keys, worker_id=f"w{i}", lease_ms=1500) for i in (1, 2)]
    running = [w.start() for w in workers]
    try:
        wait_balanced(workers, 3, timeout_s=15)
        with TestClient(create_app(site, cluster.url, keys)) as c:
            assert c.post("/api/login", json={"username": "commander", "password": PASSWORDS["commander"]}).status_code == 200
            # the seeded recommendation is pending while its zones have no data yet: confirm it now
            # (routed by the dashboard to the partition it was read from: not the first one here)
            for _ in range(100):
                if any(x["id"] == rec.id for x in c.get("/api/state").json()["recommendations"]):
                    break
                time.sleep(0.1)
            res = c.post("/api/commands", json={"kind": "confirm", "recommendation_id": rec.id})
            assert res.status_code == 200, res.text  # went to the bridge partition, which holds it
            res = c.post("/api/commands", json={"kind": "confirm", "recommendation_id": rec2.id})
            assert res.status_code == 200, res.text  # and this one to the complex partition
            # What is in force is every partition's record merged, not the last one read: both
            # plan areas' measures are on screen, with the partitions' records in Redis apart.
            for _ in range(100):
                inforce = c.get("/api/state").json()["inforce"] or {"measures": []}
                if {m["plan_id"] for m in inforce["measures"]} >= {"bridge", "hongyadong"}:
                    break
                time.sleep(0.1)
            assert {m["plan_id"] for m in inforce["measures"]} == {"bridge", "hongyadong"}, inforce
            assert {m.plan_id for m in decode(InForce, rc.get(parts["bridge"].inforce)).measures} == {"bridge"}
            assert {m.plan_id for m in decode(InForce, rc.get(parts["complex"].inforce)).measures} == {"hongyadong"}
            sc = load_scenario("mayday-evening", site)[0]
            sim = SimRunner(site, sc, rc, keys, [c.id for c in site.cameras], speed=60, seed=3)
            assert sim.tick() == len(site.cameras)
            assert all(rc.xlen(k.obs) > 0 for k in parts.values())
            deadline = time.time() + 20
            while time.time() < deadline:
                zones = {z["zone_id"]: z["status"] for z in c.get("/api/state").json()["zones"]}
                live = {zid for zid, st in zones.items() if st == "ok"}
                if {"bridge-s-head", "cangbai-plaza", "xsz-exit6"} <= live:
                    break
                time.sleep(0.3)
            assert {"bridge-s-head", "cangbai-plaza", "xsz-exit6"} <= live, zones
            res = c.post("/api/commands", json={"kind": "set_mode", "mode": "emergency"})
            assert res.status_code == 200, res.text
            for k in parts.values():  # every partition switched
                assert '"emergency"' in rc.get(k.mode)
            state = c.get("/api/state").json()
            assert {p["plan_id"]: p["level"] for p in state["plans"]} == {"bridge": "I", "hongyadong": "I",
                                                                          "xiaoshizi": "I"}
            audit = c.get("/api/audit").json()
            assert [a["action"] for a in audit].count("set_mode") == 3 and audit[-1]["action"] == "confirm"
            hist = c.get("/api/zones/xsz-exit6/history").json()
            assert hist["samples"], hist
    finally:
        for stop, t in running:
            stop.set()
        for stop, t in running:
            t.join(10)
        for k in parts.values():
            for key in rc.scan_iter(match=k.all_keys_pattern()):
                rc.delete(key)
        rc.delete(keys.workers)
