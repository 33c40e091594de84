"""Bounded Redis with nothing lost: command results expire, dropped recommendations and alarms
leave their hashes, the audit goes to rotated JSON-lines files before Redis is trimmed, dead
consumers are removed; and control/dashboard metrics."""

from __future__ import annotations

import json
import time
import uuid

from prometheus_client import generate_latest

from control.archive import read_archive
from control.metrics import ControlMetrics
from control.service import GROUP, ControlService
from crowdflow.bus import AUDIT_KEEP_S, RESULTS_KEEP_S
from crowdflow.records import AuditEntry, Command, CommandResult, Observation, ZoneCount


def test_maintain_trims_what_control_let_go_of_and_archives_the_audit(r, keys, site, tmp_path):
    svc = ControlService(site, r, keys, consumer="c1", audit_dir=tmp_path / "audit")
    svc.start()
    now = time.time()
    # a command answered over an hour ago, one just now
    old_id, new_id = uuid.uuid4().hex, uuid.uuid4().hex
    for cid, t in ((old_id, now - RESULTS_KEEP_S - 60), (new_id, now)):
        r.hset(keys.cmd_results, cid, CommandResult(command_id=cid, ok=True, at=t).encode())
        r.zadd(keys.cmd_results_at, {cid: t})
    r.hset(keys.recommendations, "rec-gone", "{}")
    r.hset(keys.alarms, "alarm-gone", "{}")
    # 8 days of audit: 3 old entries (ids in the past), then 2 recent ones
    old_ms = int((now - AUDIT_KEEP_S - 86400) * 1000)
    for i in range(3):
        a = AuditEntry(id=f"a{i}", at=old_ms / 1000 + i, actor="li", role="commander", action="set_mode")
        r.xadd(keys.audit, {"rec": a.encode()}, id=f"{old_ms + i}-0")
    r.xadd(keys.audit, {"rec": "not json at all"})
    a = AuditEntry(id="a-new", at=now, actor="li", role="commander", action="set_mode")
    r.xadd(keys.audit, {"rec": a.encode()})
    svc.maintain(now)
    svc._flush()
    assert not r.hexists(keys.cmd_results, old_id) and r.hexists(keys.cmd_results, new_id)
    assert r.zscore(keys.cmd_results_at, old_id) is None
    assert not r.hexists(keys.recommendations, "rec-gone") and not r.hexists(keys.alarms, "alarm-gone")
    archived = read_archive(tmp_path / "audit")
    assert [d.get("rec", {}).get("id") for d in archived] == ["a0", "a1", "a2", None, "a-new"]
    assert archived[3]["raw"] == "not json at all"  # kept as it was
    assert len(list((tmp_path / "audit").glob("audit-*.jsonl"))) == 2  # one file per day
    assert r.xlen(keys.audit) == 2  # the 8-day-old entries left Redis, after being archived
    # a second pass archives nothing twice
    svc.maintain(now)
    svc._flush()
    assert len(read_archive(tmp_path / "audit")) == 5
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "audit").glob("*.jsonl"))
    assert lines == 5


def test_redis_keeps_a_bounded_window_behind_the_archive(r, keys, site, tmp_path, monkeypatch):
    """By length as well as by time, results as well as audit; never an entry not yet archived,
    never a result a redelivered command could still act on."""
    import control.service as cs

    monkeypatch.setattr(cs, "AUDIT_MAXLEN", 3)
    monkeypatch.setattr(cs, "RESULTS_MAX", 2)
    svc = ControlService(site, r, keys, consumer="c1", audit_dir=tmp_path / "audit")
    svc.start()
    now = time.time()
    for i in range(8):  # eight fresh entries: the time window alone would keep them all
        a = AuditEntry(id=f"a{i}", at=now, actor="li", role="commander", action="set_mode")
        r.xadd(keys.audit, {"rec": a.encode()})
    young = site.control.command_max_age_s / 2
    for i, age in enumerate([4000, 3000, 2000, 1000, young, young]):  # under RESULTS_KEEP_S but over the cap
        cid = f"c{i}"
        r.hset(keys.cmd_results, cid, CommandResult(command_id=cid, ok=True, at=now - age).encode())
        r.zadd(keys.cmd_results_at, {cid: now - age})
    # The archive cannot be written (its directory is gone, a file in its place): nothing leaves Redis.
    (tmp_path / "audit").rename(tmp_path / "audit.away")
    (tmp_path / "audit").write_text("not a directory")
    svc.maintain(now)
    svc._flush()
    assert svc.stats["audit_archive_failed"] == 1 and r.xlen(keys.audit) >= 8
    (tmp_path / "audit").unlink()
    (tmp_path / "audit.away").rename(tmp_path / "audit")
    svc.maintain(now)
    svc._flush()
    kept = [decode_id(f) for _, f in r.xrange(keys.audit)]
    assert len(kept) <= 4 and kept[-1] == "a7"  # the newest three (+ the mode the start wrote)
    archived = [d["rec"]["id"] for d in read_archive(tmp_path / "audit") if d["rec"]["id"].startswith("a") and
                d["rec"]["id"][1:].isdigit()]
    assert archived == [f"a{i}" for i in range(8)]  # everything is in the archive, once
    left = set(r.zrange(keys.cmd_results_at, 0, -1))
    assert left == {"c4", "c5"}  # oldest went first; the two young ones stay even over the cap


def decode_id(fields) -> str:
    return json.loads(fields["rec"])["id"]


def test_audit_archive_survives_a_control_killed_mid_evening(tmp_path, monkeypatch):
    """A real restart: the real `crowdflow control` (audit archived, windows scaled down) is
    SIGKILLed while refusals are being audited, a new one takes over; every audited command is
    in the archive once (repeats dropped by stream id), and Redis holds only its window."""
    import os
    import signal
    import subprocess
    import sys

    from .faults import RedisServer
    from .procs import REPO

    audit_dir = tmp_path / "audit"
    with RedisServer(tmp_path / "redis", appendonly=False) as srv:
        r = srv.client()
        env = dict(os.environ, REDIS_URL=srv.url, CROWDFLOW_REDIS_PREFIX="ret", PYTHONUNBUFFERED="1",
                   CROWDFLOW_DATA_DIR=str(tmp_path / "var"), CROWDFLOW_RETENTION_SCALE="120")  # audit, results kept 30 s

        def control(n):
            return subprocess.Popen([sys.executable, "-m", "crowdflow.cli", "control", "--audit-dir", str(audit_dir)],
                                    cwd=REPO, env=env, stdout=open(tmp_path / f"control{n}.log", "w"),
                                    stderr=subprocess.STDOUT)

        sent: list[str] = []

        def forge(n):  # a viewer may not change the mode: each is refused and audited
            batch = []
            for _ in range(n):
                c = Command(id=uuid.uuid4().hex, kind="set_mode", mode="emergency", user="mallory", role="viewer",
                            issued_at=time.time())
                r.xadd("ret:cmd", {"rec": c.encode()})
                sent.append(c.id)
                batch.append(c.id)
                time.sleep(0.05)
            return batch

        def answered(ids, timeout=60):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if all(r.hexists("ret:cmd:results", c) for c in ids):
                    return True
                time.sleep(0.2)
            return False

        p = control(1)
        try:
            assert answered(forge(40)), (tmp_path / "control1.log").read_text()[-2000:]
            time.sleep(2.5)  # at least one archive pass
            forge(20)
            os.kill(p.pid, signal.SIGKILL)  # mid-flow: some refused, some archived, some neither
            p.wait(10)
            queued = forge(20)  # queued while no control runs
            p = control(2)
            assert answered(queued), (tmp_path / "control2.log").read_text()[-2000:]
            assert answered(forge(20))
            deadline = time.monotonic() + 60  # the 30-s window passes, Redis is trimmed
            while time.monotonic() < deadline:
                time.sleep(1)
                arch = read_archive(audit_dir)
                in_arch = {d["rec"].get("command_id") for d in arch if "rec" in d}
                if set(sent) <= in_arch and r.xlen("ret:audit") < 20:
                    break
        finally:
            p.terminate()
            p.wait(10)
        arch = read_archive(audit_dir)
        refusals = [d["rec"]["command_id"] for d in arch if "rec" in d and d["rec"].get("action") == "refuse"]
        assert sorted(refusals) == sorted(sent), f"{len(set(sent) - set(refusals))} audited commands not archived"
        ids = [d["id"] for d in arch]
        assert ids == sorted(ids, key=lambda i: tuple(int(x) for x in i.split("-")))  # in order, no gaps reordered
        assert r.xlen("ret:audit") < 20, "Redis was not trimmed behind the archive"
        r.close()


def test_seen_sets_expire_and_dead_consumers_are_removed(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    o = Observation(camera_id="cam-cangbai-plaza", agent_id="t", seq=1, captured_at=time.time(),
                    zones=[ZoneCount(zone_id="cangbai-plaza", count=3.0, visible_area_m2=900.0)])
    r.xadd(keys.obs, {"rec": o.encode()})
    svc.step(block_ms=10)
    assert 0 < r.ttl(keys.obs_seen("cam-cangbai-plaza")) <= 3 * 3600
    r.xgroup_createconsumer(keys.obs, GROUP, "control-dead-host-1")
    time.sleep(0.05)
    assert svc.obs_reader.remove_idle_consumers(idle_ms=10) == ["control-dead-host-1"]
    names = [c["name"] for c in r.xinfo_consumers(keys.obs, GROUP)]
    assert names == ["c1"]


def test_control_metrics(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    m = ControlMetrics(svc)
    svc.start()
    r.xadd(keys.obs, {"rec": "{bad"})
    o = Observation(camera_id="cam-cangbai-plaza", agent_id="t", seq=1, captured_at=time.time(),
                    zones=[ZoneCount(zone_id="cangbai-plaza", count=3.0, visible_area_m2=900.0)])
    r.xadd(keys.obs, {"rec": o.encode()})
    svc.step(block_ms=10)
    text = generate_latest(m.registry).decode()
    assert 'crowdflow_control_dead_letters_total{reason="(record)"} 1.0' in text
    assert 'crowdflow_control_observations_total{outcome="applied"} 1.0' in text
    assert "crowdflow_control_cycle_seconds_count 1.0" in text
    assert 'crowdflow_control_stream_backlog{state="unacknowledged",stream="obs"} 0.0' in text
    lag = float(next(l for l in text.splitlines() if l.startswith("crowdflow_control_ingest_lag_seconds ")).split()[1])
    assert 0 <= lag < 5


def test_dashboard_metrics_for_the_scraper_only(site, redis_url, keys, monkeypatch):
    from fastapi.testclient import TestClient

    from dashboard.app import create_app

    from .dash import users_env

    monkeypatch.setenv("CROWDFLOW_USERS", users_env())
    app = create_app(site, redis_url, keys)
    with TestClient(app) as c:
        assert c.post("/api/login", json={"username": "viewer", "password": "nope"}).status_code == 401
        text = c.get("/metrics").text
        assert "crowdflow_dashboard_refused_logins_total 1.0" in text and "crowdflow_dashboard_clients 0.0" in text
    with TestClient(app, client=("203.0.113.5", 5000)) as c:
        assert c.get("/metrics").status_code == 403
