"""crowdflow.bus's many-keys scripts on a real Redis: they do what the one-key commands they
replace do (ZMSCORE, ZADD, XADD … MAXLEN ~), beyond Lua's unpack limit too. Refused whole when
Redis is out of memory inside control's fenced MULTI/EXEC: tests/test_faults_redis.py (OOM)."""

from __future__ import annotations

from crowdflow.bus import Keys, seen_many, xadd_many, zadd_many


def test_marks_then_seen_for_many_keys_and_members(r, keys):
    k = Keys(f"{keys.prefix}:{{p}}")
    big = {str(s): float(s) for s in range(0, 5000, 2)}  # 2,500 pairs: 5,000 values, chunked
    pipe = r.pipeline(transaction=True)
    pipe.eval(*zadd_many({k.obs_seen("a"): big, k.obs_seen("b"): {"7": 1.5}}))
    pipe.execute()
    assert r.zcard(k.obs_seen("a")) == 2500 and r.zscore(k.obs_seen("a"), "4998") == 4998.0
    assert r.zscore(k.obs_seen("b"), "7") == 1.5
    asked = {k.obs_seen("a"): list(range(3000)), k.obs_seen("b"): [7, 8], k.obs_seen("none"): [1]}
    flags = seen_many(r, asked)
    assert flags == [s % 2 == 0 for s in range(3000)] + [True, False, False]
    # the same answer as ZMSCORE key by key
    expect = [x is not None for key, m in asked.items() for x in r.zmscore(key, m)]
    assert flags == expect


def test_events_to_several_streams_in_order_and_trimmed(r, keys):
    k = Keys(f"{keys.prefix}:{{p}}")
    streams = [k.events] * 3 + [k.zone_history("z1"), k.zone_history("z2")]
    rows = [("zone", f"r{i}") for i in range(5)]
    pipe = r.pipeline(transaction=True)
    pipe.eval(*xadd_many(streams, ("type", "rec"), rows, 1000))
    pipe.execute()
    assert [f for _, f in r.xrange(k.events)] == [{"type": "zone", "rec": f"r{i}"} for i in range(3)]
    assert [f["rec"] for _, f in r.xrange(k.zone_history("z2"))] == ["r4"]
    many = [("zone", str(i)) for i in range(3000)]
    r.eval(*xadd_many([k.events] * 3000, ("type", "rec"), many, 100))
    assert 100 <= r.xlen(k.events) < 1000  # MAXLEN ~ 100: trimmed by whole nodes, as XADD does
