"""Per-edge credentials on a real redis-server with ACLs: `crowdflow edge-users` makes one user
per camera that can only append observations, and control (loading the keys the command
wrote, by default) applies a camera's records only when they come from that camera's user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import redis

from control.service import ControlService
from crowdflow.bus import Keys, load_edge_keys
from crowdflow.credentials import default_keys_file, signing_key
from crowdflow.records import Observation, ZoneCount
from edge.spool import Publisher, Spool

from .faults import RedisServer
from .procs import REPO

A, B = "cam-cangbai-plaza", "cam-cangbai-walk"


def edge_users(env, *args):
    return subprocess.run([sys.executable, "-m", "crowdflow.cli", "edge-users", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def env_file(path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def obs(camera: str, seq: int, zone: str = "cangbai-plaza") -> Observation:
    return Observation(camera_id=camera, agent_id="t", seq=seq, captured_at=time.time(),
                       zones=[ZoneCount(zone_id=zone, count=3.0, visible_area_m2=900.0)])


def test_each_edge_user_appends_only_and_control_checks_whose_records_they_are(tmp_path, site):
    prefix = "acl"
    keys = Keys(prefix)
    with RedisServer(tmp_path / "redis", appendonly=False) as srv:
        admin = srv.client()
        env = dict(os.environ, REDIS_URL=srv.url, CROWDFLOW_REDIS_PREFIX=prefix, CROWDFLOW_DATA_DIR=str(tmp_path))
        res = edge_users(env)
        assert res.returncode == 0, res.stderr
        out = tmp_path / "edge-credentials"
        assert stat.S_IMODE((out / "credentials.json").stat().st_mode) == 0o600
        users = set(admin.execute_command("ACL", "USERS"))
        assert {f"{prefix}-edge-{c.id}" for c in site.cameras} <= {u.decode() if isinstance(u, bytes) else u
                                                                   for u in users}
        ea, eb = env_file(out / f"{A}.env"), env_file(out / f"{B}.env")
        assert ea["REDIS_URL"] != eb["REDIS_URL"] and ea["CROWDFLOW_EDGE_KEY"] != eb["CROWDFLOW_EDGE_KEY"]
        creds = json.loads((out / "credentials.json").read_text())
        assert ea["CROWDFLOW_EDGE_KEY"] == signing_key(creds[A]["password"])
        # control's file holds only derived keys: none of them is a Redis password
        control_keys = json.loads(default_keys_file(tmp_path).read_text())
        assert set(control_keys.values()).isdisjoint(c["password"] for c in creds.values())

        edge_a = redis.Redis.from_url(ea["REDIS_URL"])
        assert edge_a.ping()
        edge_a.xadd(keys.obs, {"rec": "{}"})  # may append to the observation stream ...
        assert edge_a.zmscore(keys.obs_seen(A), [1]) == [None]  # ... and ask which of its own were applied
        for forbidden in (lambda: edge_a.xrange(keys.obs), lambda: edge_a.xadd(keys.cmd, {"rec": "{}"}),
                          lambda: edge_a.delete(keys.obs), lambda: edge_a.get(keys.mode),
                          lambda: edge_a.hgetall(keys.zone_state), lambda: edge_a.xtrim(keys.obs, maxlen=0),
                          lambda: edge_a.zmscore(keys.obs_seen(B), [1]),  # another camera's applied set
                          lambda: edge_a.zrange(keys.obs_seen(A), 0, -1),  # its own: ZMSCORE only
                          lambda: edge_a.zadd(keys.obs_seen(A), {"9": 1.0}),
                          lambda: edge_a.execute_command("ACL", "SETUSER", "x", "on")):
            with pytest.raises(redis.exceptions.NoPermissionError):  # ... and nothing else
                forbidden()
        admin.delete(keys.obs)

        # control loads the keys edge-users wrote (its default) and checks every record
        edge_keys = load_edge_keys({"CROWDFLOW_EDGE_KEYS_FILE": str(default_keys_file(tmp_path))})
        svc = ControlService(site, admin, keys, consumer="c1", edge_keys=edge_keys)
        svc.start()
        spool = Spool(str(tmp_path / "spool-a.sqlite"), 1000)
        pub_a = Publisher(edge_a, keys, spool, signing_key=ea["CROWDFLOW_EDGE_KEY"])
        pub_a.publish(obs(A, 1).encode())  # its own camera
        pub_a.publish(obs(B, 1, "cangbai-walk").encode())  # another camera's, signed with A's key
        assert pub_a.drain()
        unsigned = Publisher(edge_a, keys, Spool(str(tmp_path / "spool-u.sqlite"), 1000))
        unsigned.publish(obs(A, 2).encode())
        assert unsigned.drain()
        for _ in range(5):
            svc.step(block_ms=50)
        dead = [f for _, f in admin.xrange(keys.obs_dead)]
        reasons = sorted(d["reason"] for d in dead)
        assert len(reasons) == 2, reasons
        assert reasons[0].startswith(f"sig: not signed with camera {B}") or reasons[1].startswith(
            f"sig: not signed with camera {B}"), reasons
        assert all(r.startswith("sig: ") for r in reasons)
        assert admin.zscore(keys.obs_seen(A), 1) is not None  # its own record was applied
        assert admin.zscore(keys.obs_seen(A), 2) is None and admin.zscore(keys.obs_seen(B), 1) is None

        # a re-run keeps the passwords; --rotate replaces them and the old one stops working
        assert edge_users(env).returncode == 0
        assert env_file(out / f"{A}.env") == ea
        res = edge_users(env, "--rotate", "--camera", A)
        assert res.returncode == 0, res.stderr
        assert env_file(out / f"{A}.env") != ea and env_file(out / f"{B}.env") == eb
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(ea["REDIS_URL"]).ping()
        assert redis.Redis.from_url(env_file(out / f"{A}.env")["REDIS_URL"]).ping()
        edge_a.close()
        admin.close()


def test_control_refuses_to_start_without_keys_when_required(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "hongyadong.yaml").read_text(encoding="utf-8"))
    raw["control"]["edge_keys"] = "required"
    raw["dashboard"].pop("basemap_file", None)
    cfg = tmp_path / "site.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDFLOW_EDGE_KEYS")}
    env.update(CROWDFLOW_DATA_DIR=str(tmp_path), REDIS_URL="redis://127.0.0.1:1/0")
    res = subprocess.run([sys.executable, "-m", "crowdflow.cli", "control", "--config", str(cfg)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "edge-users" in res.stderr, res.stderr[-500:]


def test_a_producer_trimming_unread_observations_is_reported(tmp_path, site):
    """What the ACL cannot forbid: an edge user's ``XADD … MAXLEN`` deletes entries control has
    not read yet. Control cannot prevent it but notices it (metric, error log) — once."""
    keys = Keys("trim")
    with RedisServer(tmp_path / "redis", appendonly=False) as srv:
        admin = srv.client()
        env = dict(os.environ, REDIS_URL=srv.url, CROWDFLOW_REDIS_PREFIX="trim", CROWDFLOW_DATA_DIR=str(tmp_path))
        assert edge_users(env, "--camera", A).returncode == 0
        ea = env_file(tmp_path / "edge-credentials" / f"{A}.env")
        edge_a = redis.Redis.from_url(ea["REDIS_URL"])
        svc = ControlService(site, admin, keys, consumer="c1")
        svc.start()
        for seq in (1, 2):  # read and applied: trimming these later loses nothing
            edge_a.xadd(keys.obs, {"rec": obs(A, seq).encode()})
        svc.step(block_ms=50)
        svc.maintain(time.time())
        svc._flush()
        assert svc.stats["stream_trimmed_unread"] == 0
        for seq in (3, 4, 5):
            edge_a.xadd(keys.obs, {"rec": obs(A, seq).encode()})
        edge_a.xadd(keys.obs, {"rec": obs(A, 6).encode()}, maxlen=1, approximate=False)  # ACL allows it: 3-5 gone
        assert admin.xlen(keys.obs) == 1
        svc.maintain(time.time())
        svc._flush()
        svc.maintain(time.time())
        assert svc.stats["stream_trimmed_unread"] == 3  # counted once, not per pass
        edge_a.close()
        admin.close()


def test_records_another_edge_trimmed_away_are_sent_again_and_applied(tmp_path, site, monkeypatch):
    """The gap no ACL closes, closed end to end: edge B's user trims the shared stream with
    ``XADD … MAXLEN 0`` (Redis allows it) and deletes three of A's records control had not read.
    A keeps what it sent until control applied it (its user may ``ZMSCORE`` its own applied
    set), sees them missing below a later applied record, sends them again once, and control
    applies them: nothing lost. A record control refuses is sent again once, then counted."""
    import edge.spool

    monkeypatch.setattr(edge.spool, "CONFIRM_GRACE_S", 0.2)  # the test waits this long, not 2 s
    keys = Keys("gap")
    with RedisServer(tmp_path / "redis", appendonly=False) as srv:
        admin = srv.client()
        env = dict(os.environ, REDIS_URL=srv.url, CROWDFLOW_REDIS_PREFIX="gap", CROWDFLOW_DATA_DIR=str(tmp_path))
        assert edge_users(env, "--camera", A, "--camera", B).returncode == 0
        ea = env_file(tmp_path / "edge-credentials" / f"{A}.env")
        eb = env_file(tmp_path / "edge-credentials" / f"{B}.env")
        edge_a, edge_b = redis.Redis.from_url(ea["REDIS_URL"]), redis.Redis.from_url(eb["REDIS_URL"])
        svc = ControlService(site, admin, keys, consumer="c1",
                             edge_keys=load_edge_keys({"CROWDFLOW_EDGE_KEYS_FILE": str(default_keys_file(tmp_path))}))
        svc.start()
        pub = Publisher(edge_a, keys, Spool(str(tmp_path / "spool-a.sqlite"), 1000),
                        signing_key=ea["CROWDFLOW_EDGE_KEY"])

        def applied():
            return sorted(int(m) for m in admin.zrange(keys.obs_seen(A), 0, -1))

        for seq in (1, 2, 3):
            assert pub.publish(obs(A, seq))
        svc.step(block_ms=50)
        assert applied() == [1, 2, 3]
        assert pub.confirm(force=True) == 0 and pub.spool.sent_count() == 0  # all applied: nothing kept
        for seq in (4, 5, 6):
            assert pub.publish(obs(A, seq))
        with pytest.raises(redis.exceptions.NoPermissionError):
            edge_b.xtrim(keys.obs, maxlen=0)
        edge_b.xadd(keys.obs, {"rec": obs(B, 1, "cangbai-walk").encode()}, maxlen=0, approximate=False)
        assert admin.xlen(keys.obs) == 0  # 4-6 deleted unread
        assert pub.publish(obs(A, 7))
        svc.step(block_ms=50)
        assert applied() == [1, 2, 3, 7]
        assert pub.confirm(force=True) == 0  # too young to call missing yet
        time.sleep(0.3)
        assert pub.confirm(force=True) == 3 and pub.resent == 3
        svc.step(block_ms=50)
        assert applied() == [1, 2, 3, 4, 5, 6, 7]  # nothing lost
        assert pub.confirm(force=True) == 0 and pub.spool.sent_count() == 0 and pub.unapplied == 0

        # a record control refuses (dated a day ahead) is sent once more, then counted; another
        # camera's record (signed with A's key, refused too) cannot be checked by A's user: kept out
        ahead = obs(A, 8).model_copy(update={"captured_at": time.time() + 86400})
        assert pub.publish(obs(B, 2, "cangbai-walk")) and pub.publish(ahead) and pub.publish(obs(A, 10))
        svc.step(block_ms=50)
        time.sleep(0.3)
        assert pub.confirm(force=True) == 1
        assert pub.publish(obs(A, 9))
        svc.step(block_ms=50)
        time.sleep(0.3)
        assert pub.confirm(force=True) == 0 and pub.unapplied == 1 and pub.spool.sent_count() == 0
        dead = sorted(f["reason"] for _, f in admin.xrange(keys.obs_dead))
        assert len(dead) == 3 and dead[-1].startswith(f"sig: not signed with camera {B}"), dead
        assert applied() == [1, 2, 3, 4, 5, 6, 7, 9, 10]
        pub.spool.close()
        for c in (edge_a, edge_b, admin):
            c.close()


def test_the_twin_signs_as_the_edges_where_control_checks_keys(tmp_path, site):
    """`crowdflow sim` plays the edges: with the keys `edge-users` wrote, the real control (which
    loads them by default) applies its records and dead-letters none."""
    with RedisServer(tmp_path / "redis", appendonly=False) as srv:
        admin = srv.client()
        env = dict(os.environ, REDIS_URL=srv.url, CROWDFLOW_REDIS_PREFIX="tw", CROWDFLOW_DATA_DIR=str(tmp_path),
                   PYTHONUNBUFFERED="1")
        env.pop("CROWDFLOW_EDGE_KEYS", None)
        env.pop("CROWDFLOW_EDGE_KEYS_FILE", None)
        assert edge_users(env).returncode == 0
        procs = [subprocess.Popen([sys.executable, "-m", "crowdflow.cli", *a], cwd=REPO, env=env,
                                  stdout=open(tmp_path / f"{a[0]}.log", "w"), stderr=subprocess.STDOUT)
                 for a in (["control", "--audit-dir", "none"], ["sim", "--speed", "60", "--duration", "30"])]
        try:
            deadline, applied = time.monotonic() + 60, 0
            while time.monotonic() < deadline and applied < 20:
                time.sleep(1)
                applied = sum(admin.zcard(k) for k in admin.scan_iter(match="tw:obs:seen:*"))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(20)
        log = (tmp_path / "control.log").read_text()
        assert "records checked against" in log, log[-1500:]
        assert applied >= 20, log[-1500:]
        assert not [f for _, f in admin.xrange("tw:obs:dead") if f.get("reason", "").startswith("sig")]
        admin.close()


def test_edge_users_on_every_node_of_a_cluster(tmp_path, site):
    """On a real Redis Cluster (3 masters + 3 replicas) the users exist on every node, and an
    edge appends through the cluster client (topology, WAIT for its replica) and nothing else."""
    from crowdflow.bus import connect, xadd_replicated

    from .cluster import start_cluster

    base = int(os.environ.get("CROWDFLOW_EDGE_CLUSTER_PORT", "7460"))  # a free range of 6 ports
    cluster = start_cluster(base)
    try:
        url = cluster.url
        env = dict(os.environ, REDIS_URL=url, CROWDFLOW_REDIS_PREFIX="cf:{site}", CROWDFLOW_DATA_DIR=str(tmp_path))
        res = edge_users(env, "--camera", A)
        assert res.returncode == 0, res.stderr
        user = f"cf:{{site}}-edge-{A}"
        for port in range(base, base + 6):
            node = redis.Redis(port=port)
            assert user in {u.decode() for u in node.execute_command("ACL", "USERS")}, port
            node.close()
        ea = env_file(tmp_path / "edge-credentials" / f"{A}.env")
        assert ea["REDIS_URL"].startswith("redis+cluster://")
        edge = connect(ea["REDIS_URL"])
        keys = Keys("cf:{site}")
        assert xadd_replicated(edge, keys.obs, [{"rec": obs(A, 1).encode()}], maxlen=1000) == 1
        assert edge.zmscore(keys.obs_seen(A), [1]) == [None]  # its own applied set, through the cluster client
        with pytest.raises(redis.exceptions.NoPermissionError):
            edge.xrange(keys.obs)
        pub = Publisher(edge, keys, Spool(str(tmp_path / "spool.sqlite")))
        assert pub.publish(obs(A, 2)) and pub.confirm(force=True) == 0
        assert not pub._unreadable and pub.spool.sent_count() == 1  # checked, not applied yet (no control)
        pub.spool.close()
        edge.close()
    finally:
        cluster.stop()


def test_no_acl_makes_xadd_append_only_not_even_through_a_function(tmp_path):
    """Why the edge's ``XADD`` keeps its ``MAXLEN`` power (Redis 7): a function cannot act for a
    user with more rights than the user has. Redis checks the caller's ACL on every command a
    function runs, and ``FCALL`` declares its keys read-write. So an ``XADD``-only wrapper
    (``cf_obs_add``) only works for a user who may ``XADD`` — and trim — directly. If a Redis
    release ever changes this, this test fails and the design in docs/reliability.md (*Known
    limits*) should be revisited."""
    lib = ("#!lua name=cftest\n"
           "redis.register_function('cf_obs_add', function(keys, args)"
           " return redis.call('XADD', keys[1], '*', unpack(args)) end)")
    with RedisServer(tmp_path / "redis", appendonly=False) as srv:
        admin = srv.client()
        admin.function_load(lib, replace=True)
        admin.xadd("s", {"rec": "other camera's"})

        def user(name, *rules):
            admin.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", "resetchannels", "-@all", "+ping",
                                  *rules)
            return redis.Redis(port=srv.port, username=name, password="pw")

        without_xadd = user("fn-only", "~s", "+fcall")
        with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
            without_xadd.fcall("cf_obs_add", 1, "s", "rec", "x")  # the XADD inside is checked against the caller
        write_only = user("fn-write-only", "%W~s", "+fcall", "+xadd")
        with pytest.raises(redis.exceptions.NoPermissionError):
            write_only.fcall("cf_obs_add", 1, "s", "rec", "x")  # FCALL's keys need read and write
        able = user("fn-and-xadd", "~s", "+fcall", "+xadd")
        able.fcall("cf_obs_add", 1, "s", "rec", "x")  # works only with +xadd ...
        able.xadd("s", {"rec": "x"}, maxlen=0, approximate=False)  # ... which trims too
        assert admin.xlen("s") == 0
        for c in (without_xadd, write_only, able, admin):
            c.close()
