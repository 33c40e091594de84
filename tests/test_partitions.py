"""Partitioned control: N workers share the partitions (plan areas), each partition with its own
hash-tagged keys, stream, group, lease and state; takeover of a dead worker's partitions within
the lease time; rebalancing when a worker joins. Real Redis, real `crowdflow control` processes."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from control.workers import Worker, wait_balanced
from crowdflow.bus import Keys
from crowdflow.records import Observation, ZoneCount, ZoneState, decode
from crowdflow.site import parse_site
from crowdflow.site.partitions import camera_keys, partition_keys, sub_site

from .conftest import free_port
from .partitioned import PARTITIONS, partitioned, write
from .procs import services, wait_for


@pytest.fixture(scope="module")
def psite(raw):
    return parse_site(partitioned(raw))


def obs(cam: str, zone: str, seq: int, count: float = 10.0) -> Observation:
    return Observation(camera_id=cam, agent_id="t", seq=seq, captured_at=time.time(),
                       zones=[ZoneCount(zone_id=zone, count=count, visible_area_m2=100.0)])


def test_partition_keys_carry_their_hash_tag(psite, keys):
    parts = partition_keys(psite, keys)
    assert sorted(parts) == sorted(PARTITIONS)
    assert parts["bridge"].obs == f"{keys.prefix}:{{bridge}}:obs"
    assert camera_keys(psite, keys)["cam-xsz-exit6"].prefix == f"{keys.prefix}:{{metro}}"
    # each partition's worker sees only its part of the site
    metro = sub_site(psite, "metro")
    assert [z.id for z in metro.zones] == ["xsz-exit6", "xsz-exit9"] and [p.id for p in metro.plans] == ["xiaoshizi"]


def test_two_workers_share_three_partitions_and_rebalance(psite, r, keys):
    w1 = Worker(psite, r, keys, worker_id="w1", lease_ms=1000)
    stop1, t1 = w1.start()
    w2 = stop2 = None
    try:
        wait_balanced([w1], 3, timeout_s=10)
        assert w1.leading() == ["bridge", "complex", "metro"]  # alone: it leads everything
        w2 = Worker(psite, r, keys, worker_id="w2", lease_ms=1000)
        stop2, t2 = w2.start()
        took = wait_balanced([w1, w2], 3, timeout_s=10)  # a worker joined: 2 + 1
        assert sorted([len(w1.leading()), len(w2.leading())]) == [1, 2], (w1.leading(), w2.leading())
        assert took < 5
        # observations go to their partition's stream and are applied by whoever leads it
        ck = camera_keys(psite, keys)
        r.xadd(ck["cam-bridge-s"].obs, {"rec": obs("cam-bridge-s", "bridge-s-head", 1).encode()})
        r.xadd(ck["cam-xsz-exit6"].obs, {"rec": obs("cam-xsz-exit6", "xsz-exit6", 1).encode()})
        parts = partition_keys(psite, keys)
        wait_for(lambda: zone_ok(r, parts["bridge"], "bridge-s-head"), 10, what="bridge-s-head live")
        wait_for(lambda: zone_ok(r, parts["metro"], "xsz-exit6"), 10, what="xsz-exit6 live")
        assert r.hget(parts["bridge"].zone_state, "xsz-exit6") is None  # each partition's own state
        # the second worker leaves (gracefully): the first takes its partitions back
        stop2.set()
        t2.join(10)
        wait_balanced([w1], 3, timeout_s=10)
    finally:
        stop1.set()
        if stop2:
            stop2.set()
        t1.join(10)


def zone_ok(r, k: Keys, zone: str) -> bool:
    raw = r.hget(k.zone_state, zone)
    return raw is not None and decode(ZoneState, raw).status == "ok"


def scrape(port: int) -> str:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return ""


def _holders(r, parts) -> dict[str, str | None]:
    return {pid: r.get(k.leader) for pid, k in parts.items()}


def test_a_killed_worker_loses_its_partitions_within_the_lease_time(raw, redis_url, tmp_path, r):
    """Two real `crowdflow control` processes on a partitioned site; SIGKILL one; the other
    takes its partitions within the lease (3 s) plus one poll; a third joining gets its share."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    cfg = write(raw, tmp_path / "site.yaml")
    site = parse_site(partitioned(raw))
    parts = partition_keys(site, Keys(prefix))
    with services(tmp_path, redis_url, prefix) as svc:
        a = svc.start("control-a", "control", "--config", str(cfg), "--consumer", "wa")
        wait_for(lambda: set(_holders(r, parts).values()) == {"wa"}, 30)
        port = free_port()
        b = svc.start("control-b", "control", "--config", str(cfg), "--consumer", "wb", "--metrics-port", str(port))
        wait_for(lambda: sorted(map(str, _holders(r, parts).values())) in (["wa", "wa", "wb"], ["wa", "wb", "wb"]), 30)
        held_by_a = [pid for pid, h in _holders(r, parts).items() if h == "wa"]
        held_by_b = [pid for pid, h in _holders(r, parts).items() if h == "wb"]
        # The worker's metrics, per partition: a good and a bad record in a partition it leads.
        mine = held_by_b[0]
        cam, zone = next((c.id, c.zones[0]) for c in sub_site(site, mine).cameras)
        r.xadd(parts[mine].obs, {"rec": obs(cam, zone, 1).encode()})
        r.xadd(parts[mine].obs, {"rec": b"\xff not a record"})
        m = wait_for(lambda: (t := scrape(port)) and f'crowdflow_control_dead_letters_total{{partition="{mine}",'
                     f'reason="(record)"}} 1.0' in t and t, 15, what="metrics of the worker")
        assert f'crowdflow_control_observations_total{{outcome="applied",partition="{mine}"}} 1.0' in m
        assert f"crowdflow_control_partitions_led {len(held_by_b)}.0" in m
        assert f'crowdflow_control_leader{{partition="{mine}"}} 1.0' in m
        assert all(f'crowdflow_control_leader{{partition="{p}"}} 0.0' in m for p in held_by_a)
        assert f'crowdflow_control_cycle_seconds_count{{partition="{mine}"}}' in m
        assert f'crowdflow_control_stream_backlog{{partition="{mine}",state="unacknowledged",stream="obs"}} 0.0' in m
        lag = float(next(x for x in m.splitlines()
                         if x.startswith(f'crowdflow_control_ingest_lag_seconds{{partition="{mine}"}}')).split()[1])
        assert 0 <= lag < 60
        os.kill(a.pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: set(_holders(r, parts).values()) == {"wb"}, 15)
        moved_s = time.monotonic() - t0
        assert moved_s < 3.0 + 1.5 + 1.0, moved_s  # lease + heartbeat/poll + margin (2-core box under load)
        assert held_by_a
        wait_for(lambda: "crowdflow_control_partitions_led 3.0" in scrape(port), 10, what="b leads all three")
        svc.start("control-c", "control", "--config", str(cfg), "--consumer", "wc")
        wait_for(lambda: "wc" in _holders(r, parts).values() and len(set(_holders(r, parts).values())) == 2, 30,
                 )
    for k in r.scan_iter(match=f"{prefix}:*"):
        r.delete(k)
