"""The edge without Redis: it starts, counts and spools; a full spool disk loses nothing; and
it refuses to start at all without an explicit REDIS_URL (never an embedded Redis)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from crowdflow.bus import Keys, connect
from crowdflow.records import Observation, ZoneCount, decode
from edge.spool import Publisher, Spool

from .faults import RedisServer, fault_port
from .procs import REPO

T0 = 1_790_000_000.0


def obs(seq: int) -> Observation:
    return Observation(camera_id="cam-a", agent_id="edge-t", seq=seq, captured_at=T0 + seq, window_s=1.0,
                       zones=[ZoneCount(zone_id="z1", count=1.0, visible_area_m2=100.0)])


def test_publisher_starts_without_redis_and_replays_with_sent_at(tmp_path):
    srv = RedisServer(tmp_path / "redis")  # not started yet: the gateway boots first
    r = connect(srv.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    spool = Spool(tmp_path / "spool.sqlite")
    pub = Publisher(r, Keys("e"), spool, clock=lambda: T0 + 1000)
    for s in range(1, 6):
        assert not pub.publish(obs(s))
    assert len(spool) == 5
    with srv:
        deadline = time.monotonic() + 5  # the backoff is capped at 2 s
        while not pub.publish(obs(6)):
            assert time.monotonic() < deadline, "not replayed within the backoff cap"
            time.sleep(0.2)
        got = [decode(Observation, f["rec"]) for _, f in r.xrange("e:obs")]
        assert [o.seq for o in got] == list(range(1, 7))
        assert {o.sent_at for o in got} == {T0 + 1000}  # stamped when sent, not when captured
        assert [o.captured_at for o in got] == [T0 + s for s in range(1, 7)]
    spool.close()
    r.close()


def test_spool_disk_full_holds_records_in_memory_and_loses_none(tmp_path):
    """The spool file hits its size limit (SQLite's max_page_count: the same SQLITE_FULL error a
    full disk gives, reproducible without root). Records then wait in memory and all arrive."""
    srv = RedisServer(tmp_path / "redis")
    r = connect(srv.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    spool = Spool(tmp_path / "spool.sqlite")
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    pub = Publisher(r, Keys("e"), spool, retry_s=0.05, max_retry_s=0.1)
    with pytest.raises(sqlite3.Error):  # the limit is real
        for s in range(10_000):
            spool.put("x" * 4000)
    spool._db.execute("DELETE FROM spool")
    n = 300
    for s in range(1, n + 1):
        pub.publish(obs(s))  # never raises
    assert pub.spool_errors > 0 and len(pub.memory) > 0 and pub.lost == 0
    with srv:
        deadline = time.monotonic() + 10
        while pub.waiting:
            assert time.monotonic() < deadline
            pub.drain()
            time.sleep(0.05)
        got = [decode(Observation, f["rec"]).seq for _, f in r.xrange("e:obs")]
    assert got == list(range(1, n + 1))  # all of them, in order
    spool.close()
    r.close()


def edge_cmd(tmp_path, env_extra: dict, seconds: float):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(PYTHONUNBUFFERED="1", YOLO_OFFLINE="1", CROWDFLOW_DATA_DIR=str(tmp_path / "var"), **env_extra)
    return env


def test_edge_refuses_to_start_without_an_explicit_redis_url(tmp_path, vtest_path):
    env = edge_cmd(tmp_path, {}, 0)
    p = subprocess.run([sys.executable, "-m", "crowdflow.cli", "edge", "--camera", "cam-cangbai-plaza",
                        "--source", str(vtest_path), "--max-frames", "1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "REDIS_URL" in p.stderr and "embedded" in p.stderr
