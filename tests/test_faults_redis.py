"""Control against a redis-server of its own that we break: poison pills, OOM, WRONGTYPE,
pause, restart, a lost lease. Control runs in-process here (its real loop, ``run()``, in a
thread); tests/test_faults_procs.py does the same with the real processes."""

from __future__ import annotations

import threading
import time

import pytest

from control.service import GROUP, ControlService
from crowdflow.bus import Keys, LeaseLost
from crowdflow.records import GateFlow, Observation, PlanState, ZoneCount, ZoneState, decode

from .faults import RedisServer
from .procs import wait_for

CAM, ZONE = "cam-cangbai-plaza", "cangbai-plaza"


def obs(seq: int, t: float | None = None, count: float = 19.0, gates=()) -> Observation:
    return Observation(camera_id=CAM, agent_id="t", seq=seq, captured_at=t or time.time(),
                       zones=[ZoneCount(zone_id=ZONE, count=count, visible_area_m2=950.0)], gates=list(gates))


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as s:
        yield s


@pytest.fixture
def rs(server):
    c = server.client()
    yield c
    c.close()


def zone(r, keys, zid=ZONE) -> ZoneState:
    return decode(ZoneState, r.hget(keys.zone_state, zid))


def test_entry_that_is_not_utf8_is_a_dead_letter_not_a_crash(rs, site):
    keys = Keys("p")
    rs.xadd(keys.obs, {"rec": b"\xff\xfe{\"v\":1}"})
    rs.xadd(keys.obs, {b"\xc3\x28": b"x"})  # a field *name* that is not UTF-8 either
    # A consumer takes both and dies: the poison is pending, claimed by the next leader.
    first = ControlService(site, rs, keys, consumer="dies")
    first.start()
    assert len(first.obs_reader.read(count=10, block_ms=10)) == 2
    rs.xadd(keys.obs, {"rec": obs(1).encode()})
    heir = ControlService(site, rs, keys, consumer="heir")
    heir.start()  # claiming and restoring decode nothing raw
    for _ in range(3):
        heir.step(block_ms=10)
    dead = rs.xrange(keys.obs_dead)
    assert len(dead) == 2
    assert dead[0][1]["reason"].startswith("(record): not UTF-8")
    import base64

    assert base64.b64decode(dead[0][1]["raw_b64"]) == b"\xff\xfe{\"v\":1}"  # raw bytes kept
    assert heir.applied == 1 and zone(rs, keys).status == "ok"
    assert rs.xpending(keys.obs, GROUP)["pending"] == 0


def test_unreadable_published_state_does_not_stop_a_restart(rs, site):
    keys = Keys("p")
    rs.hset(keys.plan_state, "bridge", b"\xff\x00garbage")
    rs.hset(keys.recommendations, "r1", "{}")
    rs.set(keys.mode, b"\x80")
    rs.xadd(keys.cmd, {"rec": b"\xff"})
    svc = ControlService(site, rs, keys, consumer="c1")
    svc.start()
    svc.step(block_ms=10)
    assert svc.stats["restore_unreadable"] == 3
    assert decode(PlanState, rs.hget(keys.plan_state, "bridge")).plan_id == "bridge"  # rewritten whole
    assert rs.xlen(keys.cmd_dead) == 1


def test_huge_entry_is_kept_as_head_size_and_hash(rs, site):
    keys = Keys("p")
    big = b'{"v":1,"preset":"' + b"x" * 1_000_000 + b'"}'
    rs.xadd(keys.obs, {"rec": big})
    svc = ControlService(site, rs, keys, consumer="c1")
    svc.start()
    svc.step(block_ms=10)
    (_, f), = rs.xrange(keys.obs_dead)
    assert int(f["size"]) == len(big) and f["truncated"] == "1" and len(f["sha256"]) == 64
    assert len(f["rec"]) == 64 * 1024


def test_out_of_memory_keeps_the_work_and_marks_nothing_seen_until_applied(rs, server, site):
    keys = Keys("p")
    svc = ControlService(site, rs, keys, consumer="c1")
    svc.start()
    used = int(rs.info("memory")["used_memory"])
    rs.config_set("maxmemory", used + 64 * 1024)
    rs.config_set("maxmemory-policy", "noeviction")
    filler = 0
    while True:  # fill Redis to the brim (noeviction: writes are then refused with OOM)
        try:
            rs.set(f"p:fill:{filler}", "x" * 4096)
            filler += 1
        except Exception:
            break
    t0 = time.time()
    rs.config_set("maxmemory", 0)
    rs.xadd(keys.obs, {"rec": obs(1, t0, gates=[GateFlow(gate_id="gate-11f", inflow=5, outflow=1)]).encode()})
    rs.config_set("maxmemory", int(rs.info("memory")["used_memory"]) - 1024)
    import redis

    with pytest.raises(redis.ResponseError):  # the publish is refused: OOM
        svc.step(block_ms=10)
    assert svc.applied == 1  # applied in memory …
    assert rs.zcard(keys.obs_seen(CAM)) == 0  # … but not marked seen: nothing was published
    assert rs.xpending(keys.obs, GROUP)["pending"] == 1
    with pytest.raises(redis.ResponseError):
        svc.step(block_ms=10)  # still full: the queued writes are retried, nothing new is read
    rs.config_set("maxmemory", 0)
    svc.step(block_ms=10)
    assert rs.zcard(keys.obs_seen(CAM)) == 1 and rs.xpending(keys.obs, GROUP)["pending"] == 0
    svc.step(block_ms=10)
    assert svc.applied == 1 and svc.duplicates == 0  # applied once, not again on the re-read
    assert zone(rs, keys).status == "ok"
    assert zone(rs, keys, "hyd-upper").inflow_pm == 5.0  # the gate counted once


def test_wrong_type_key_is_renamed_aside_and_control_goes_on(rs, site):
    keys = Keys("p")
    rs.set(keys.obs, "so am I")
    svc = ControlService(site, rs, keys, consumer="c1")
    svc.start()  # the stream key of the wrong type is moved aside, the group created
    rs.delete(keys.zone_state)
    rs.set(keys.zone_state, "I am a string")  # while running: the publish meets it
    rs.xadd(keys.obs, {"rec": obs(1).encode()})
    svc.step(block_ms=10)
    svc.step(block_ms=10)  # the refused zone-state write is retried after the repair
    assert zone(rs, keys).status == "ok"
    aside = sorted(k for k in rs.keys("p:*wrongtype*"))
    assert len(aside) == 2 and rs.get(aside[0]) in ("I am a string", "so am I")  # kept, not wiped
    assert svc.stats["wrongtype"] >= 1


def test_a_paused_ex_leader_cannot_write(rs, site):
    keys = Keys("p")
    old = ControlService(site, rs, keys, consumer="old", lease_ms=1000)
    old.fenced = True
    assert old.lease.acquire()
    old.start()
    rs.xadd(keys.obs, {"rec": obs(1, count=10.0).encode()})
    old.step(block_ms=10)
    # "old" is paused past its lease; "new" takes over and publishes.
    time.sleep(1.2)
    new = ControlService(site, rs, keys, consumer="new", lease_ms=1000)
    new.fenced = True
    assert new.lease.acquire() and not new.lease.continued
    new.start()
    rs.xadd(keys.obs, {"rec": obs(2, count=30.0).encode()})
    new.step(block_ms=50)
    before = rs.hget(keys.zone_state, ZONE)
    # "old" wakes up with an observation it already read: its publish is refused.
    rs.xadd(keys.obs, {"rec": obs(3, count=99.0).encode()})
    with pytest.raises(LeaseLost):
        old.step(block_ms=50)
    assert rs.hget(keys.zone_state, ZONE) == before
    assert rs.zscore(keys.obs_seen(CAM), "3") is None
    # The entry the fenced ex-leader took is not lost: the leader claims it once it is idle.
    new._last_claim = float("-inf")
    time.sleep(0.05)
    new.obs_reader.claim_all()
    new.step(block_ms=50)
    assert zone(rs, keys).count > decode(ZoneState, before).count  # 99 fused in by the leader
    assert rs.zscore(keys.obs_seen(CAM), "3") is not None


def run_control(site, r, keys, **kw):
    svc = ControlService(site, r, keys, **kw)
    stop = threading.Event()
    t = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    t.start()
    return svc, stop, t


@pytest.mark.parametrize("fault", ["pause", "restart"])
def test_control_rides_out_a_paused_or_restarted_redis_with_its_state(server, site, fault):
    keys = Keys("p")
    r = server.client(socket_timeout=1.0)
    svc, stop, t = run_control(site, r, keys, consumer="c1", stale_after_s=30)
    try:
        wait_for(lambda: r.hget(keys.zone_state, ZONE), 10, what="start")
        r.xadd(keys.obs, {"rec": obs(1, count=20.0).encode()})
        wait_for(lambda: zone(r, keys).status == "ok", 10, what="zone live")
        if fault == "pause":
            server.pause()
            time.sleep(4)  # > socket timeout and > lease TTL
            server.resume()
        else:
            server.kill()  # SIGKILL; the append-only file keeps what was acknowledged
            time.sleep(1)
            server.start()
        r2 = server.client()
        r2.xadd(keys.obs, {"rec": obs(2, count=24.0).encode()})
        wait_for(lambda: svc.applied == 2, 15, what="second observation applied")
        s = wait_for(lambda: (z := zone(r2, keys)).status == "ok" and z.updated_at and z, 10, what="zone ok")
        # The book survived: the filter fused 20 and 24 (not restarted at 24 alone).
        assert 40.0 < s.count < 48.0
        assert t.is_alive() and svc.stats["reconnects"] + svc.stats["lease_lost"] >= 1
        assert svc.stats["internal_error"] == 0
        r2.close()
    finally:
        stop.set()
        t.join(10)
        r.close()


def test_new_leader_restores_filters_timers_and_last_known(rs, site):
    keys = Keys("p")
    old = ControlService(site, rs, keys, consumer="old", stale_after_s=30)
    old.start()
    t0 = time.time()
    rs.xadd(keys.obs, {"rec": obs(1, t0 - 2, count=20.0).encode()})
    rs.xadd(keys.obs, {"rec": obs(2, t0 - 1, count=22.0).encode()})
    old.step(block_ms=10)
    assert rs.exists(keys.control_memory)  # written with every full tick
    old.engine.areas["bridge"].held_since["IV"] = t0 - 42.0  # a trigger that has held 42 s
    old.engine.areas["bridge"].rejected["III"] = t0 - 5.0  # a commander said no 5 s ago
    from control import snapshot

    rs.hset(keys.control_memory, mapping=snapshot.dump(old.book, old.engine, time.time()))
    before = zone(rs, keys)
    new = ControlService(site, rs, keys, consumer="new", stale_after_s=30)
    new.start()
    after = zone(rs, keys)
    assert after.status == "ok" and after.count == pytest.approx(before.count, rel=0.05)
    assert new.engine.areas["bridge"].held_since["IV"] == pytest.approx(t0 - 42.0)
    assert new.engine.areas["bridge"].rejected["III"] == pytest.approx(t0 - 5.0)
    assert new.stats["memory_restored"] == 1


def test_without_memory_a_new_leader_keeps_last_known(rs, site):
    keys = Keys("p")
    old = ControlService(site, rs, keys, consumer="old", stale_after_s=30)
    old.start()
    rs.xadd(keys.obs, {"rec": obs(1, count=20.0).encode()})
    old.step(block_ms=10)
    rs.delete(keys.control_memory)
    new = ControlService(site, rs, keys, consumer="new", stale_after_s=30)
    new.start()
    s = zone(rs, keys)
    assert s.status == "unknown" and s.last_known is not None and s.last_known.count == pytest.approx(40.0)
