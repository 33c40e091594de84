"""Nothing lost: observations spool to disk while Redis is down and replay in order after.

Uses its own real redis-server on a free port (stopped and restarted by the test), never the
shared one."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis

from crowdflow.bus import Keys, connect
from crowdflow.records import Observation, ZoneCount, decode
from edge.spool import Publisher, Spool

from .conftest import free_port

T0 = 1_790_000_000.0


def obs(seq: int) -> Observation:
    return Observation(camera_id="cam-a", agent_id="edge-t", seq=seq, captured_at=T0 + seq, window_s=1.0, frames=5,
                       zones=[ZoneCount(zone_id="z1", count=seq % 7, visible_area_m2=100.0)])


class RedisServer:
    def __init__(self, tmp_path):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server binary is absent")
        self.exe, self.dir, self.port = exe, tmp_path, free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                r.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def test_spool_replays_in_order_across_a_redis_stop_start_and_an_agent_restart(tmp_path):
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        keys = Keys("t-spool")
        r = connect(f"redis://127.0.0.1:{srv.port}/0", socket_timeout=1, socket_connect_timeout=1)
        spool = Spool(tmp_path / "spool.sqlite", max_records=1000)
        pub = Publisher(r, keys, spool, retry_s=0)
        assert pub.publish(obs(1)) and pub.publish(obs(2))

        srv.stop()  # Redis goes away: observations go to disk
        for s in range(3, 8):
            assert not pub.publish(obs(s))
        assert len(spool) == 5
        spool.close()  # and the agent restarts while Redis is still down

        spool = Spool(tmp_path / "spool.sqlite", max_records=1000)
        assert len(spool) == 5
        pub = Publisher(r, keys, spool, retry_s=0.2, max_retry_s=0.2)
        assert not pub.publish(obs(8))
        srv.start()  # Redis is back: the spool is replayed first, then new records follow
        pub.publish(obs(9))  # within the (jittered) retry backoff Redis is not even tried
        time.sleep(0.25)
        assert pub.publish(obs(10))
        assert len(spool) == 0
        got = [decode(Observation, f["rec"]) for _, f in r.xrange(keys.obs)]
        assert [o.seq for o in got] == list(range(1, 11))
        assert [o.captured_at for o in got] == [T0 + s for s in range(1, 11)]  # original capture times
        spool.close()
        r.close()
    finally:
        srv.stop()


def test_spool_is_bounded_and_drops_the_oldest(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", max_records=3)
    for s in range(6):
        spool.put(obs(s).encode())
    assert len(spool) == 3 and spool.dropped == 3
    assert [decode(Observation, rec).seq for _, rec in spool.peek()] == [3, 4, 5]
    spool.close()


# An edge agent's own Redis user as made before the edges checked what control applied
# (`crowdflow edge-users` now also allows ZMSCORE of the camera's applied set).
ACL_LINE = "ACL SETUSER {user} on >{password} resetkeys ~{prefix}:obs resetchannels -@all +xadd +ping"


def test_an_edge_acl_user_can_publish_observations_and_nothing_else(tmp_path, caplog):
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        admin = redis.Redis(port=srv.port)
        admin.execute_command(*ACL_LINE.format(user="edge-cam-a", password="s3cret", prefix="cf").split())
        r = connect(f"redis://edge-cam-a:s3cret@127.0.0.1:{srv.port}/0")
        spool = Spool(tmp_path / "s.sqlite")
        pub = Publisher(r, Keys("cf"), spool)
        assert pub.publish(obs(1)) and pub.publish(obs(2))
        assert admin.xlen("cf:obs") == 2
        # it may not read its applied set: says so once, keeps nothing to check, publishes on
        assert pub.confirm(force=True) == 0 and spool.sent_count() == 0
        assert sum("may not read cf:obs:seen:" in m for m in caplog.messages) == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.set("cf:zone:state", "x")  # another key
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.xrange("cf:obs")  # reading the stream
        spool.close()
        r.close()
    finally:
        srv.stop()
