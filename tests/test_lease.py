"""The leader lease's fenced transaction on a real Redis, where the lease is lost at the worst
moment: after the holder's read (WATCH + GET in one round trip, ``LeaderLease._transaction_on``)
and before its EXEC, or while it was busy and its TTL ran out.

Nothing is faked: the interleavings are made by doing, inside ``build`` (which runs after the
read and before EXEC), what another control instance or the clock would do meanwhile. Each
test checks that a refused write left nothing behind, so it fails if the WATCH, the holder
check or the last-holder check of the lapsed path were removed.
"""

from __future__ import annotations

import time

import pytest

from crowdflow.bus import Keys, LeaderLease, LeaseLost, connect

TTL_MS = 300


@pytest.fixture
def tagged(r, keys):
    k = Keys(f"{keys.prefix}:{{p}}")  # one slot, as a partition's keys (works on one node too)
    yield k
    r.delete(k.leader, k.leader_last, k.zone_state)


@pytest.fixture
def other(redis_url):
    c = connect(redis_url)  # another control instance: its own client and connections
    yield c
    c.close()


def outlive_ttl() -> None:
    """Be paused (or busy) past a's lease."""
    time.sleep(TTL_MS / 1000 + 0.15)


def write(k: Keys, value: str, meanwhile=None):
    """A build that queues one write, after doing what happens between read and EXEC."""
    def build(pipe):
        if meanwhile is not None:
            meanwhile()
        pipe.hset(k.zone_state, "z", value)
    return build


def test_taken_by_another_between_the_read_and_exec_writes_nothing(r, other, tagged):
    a = LeaderLease(r, tagged.leader, ttl_ms=TTL_MS, instance_id="a")
    b = LeaderLease(other, tagged.leader, ttl_ms=10_000, instance_id="b")
    assert a.acquire()
    a.transaction(write(tagged, "1"))

    def b_takes_over():  # a paused past its TTL after reading that it held the lease
        outlive_ttl()
        assert b.acquire()

    with pytest.raises(LeaseLost):
        a.transaction(write(tagged, "stale", b_takes_over))
    assert r.hget(tagged.zone_state, "z") == "1"  # a's write refused
    assert r.get(tagged.leader) == "b" and r.pttl(tagged.leader) > 5_000  # b's lease untouched (no PEXPIRE by a)
    b.transaction(write(tagged, "2"))  # and b writes on
    assert r.hget(tagged.zone_state, "z") == "2"


def test_lapsed_then_led_by_another_who_left_writes_nothing(r, other, tagged):
    """The lease expired while a was busy; b took it, led and released it: the lease key is
    free again, but a's state is no longer the newest, so a must not take it back in its
    transaction (the lapsed path checks the last holder)."""
    a = LeaderLease(r, tagged.leader, ttl_ms=TTL_MS, instance_id="a")
    b = LeaderLease(other, tagged.leader, ttl_ms=TTL_MS, instance_id="b")
    assert a.acquire()
    a.transaction(write(tagged, "1"))
    outlive_ttl()
    assert b.acquire()
    b.transaction(write(tagged, "2"))
    b.release()
    assert r.get(tagged.leader) is None
    with pytest.raises(LeaseLost):
        a.transaction(write(tagged, "stale"))
    assert r.hget(tagged.zone_state, "z") == "2" and r.get(tagged.leader) is None
    assert a.relapses == 0


def test_lapsed_with_nobody_in_between_is_taken_back_with_the_write(r, tagged):
    a = LeaderLease(r, tagged.leader, ttl_ms=TTL_MS, instance_id="a")
    assert a.acquire()
    outlive_ttl()
    assert r.get(tagged.leader) is None
    a.transaction(write(tagged, "1"))
    assert r.hget(tagged.zone_state, "z") == "1" and r.get(tagged.leader) == "a" and r.pttl(tagged.leader) > 0
    assert a.relapses == 1


def test_expired_between_the_read_and_exec_then_taken_writes_nothing(r, other, tagged):
    """a read that it held the lease; it expired before EXEC (which aborts the EXEC), and b took
    it meanwhile: the retry must see b and refuse."""
    a = LeaderLease(r, tagged.leader, ttl_ms=TTL_MS, instance_id="a")
    b = LeaderLease(other, tagged.leader, ttl_ms=10_000, instance_id="b")
    assert a.acquire()

    def expire_and_take():
        outlive_ttl()
        assert other.get(tagged.leader) is None  # expired under a's WATCH
        assert b.acquire()

    with pytest.raises(LeaseLost):
        a.transaction(write(tagged, "stale", expire_and_take))
    assert r.hget(tagged.zone_state, "z") is None and r.get(tagged.leader) == "b"


def test_expired_between_the_read_and_exec_taken_and_released_writes_nothing(r, other, tagged):
    a = LeaderLease(r, tagged.leader, ttl_ms=TTL_MS, instance_id="a")
    b = LeaderLease(other, tagged.leader, ttl_ms=10_000, instance_id="b")
    assert a.acquire()

    def b_leads_and_leaves():
        outlive_ttl()
        assert b.acquire()
        b.transaction(write(tagged, "b"))
        b.release()

    with pytest.raises(LeaseLost):
        a.transaction(write(tagged, "stale", b_leads_and_leaves))
    assert r.hget(tagged.zone_state, "z") == "b" and r.get(tagged.leader) is None


def test_expired_between_the_read_and_exec_with_nobody_in_between_writes_once(r, tagged):
    """The expiry alone aborts the EXEC; nobody led meanwhile, so the retry takes the lease back
    and the write is applied, once."""
    a = LeaderLease(r, tagged.leader, ttl_ms=TTL_MS, instance_id="a")
    calls = []
    assert a.acquire()

    def pause_once():
        if not calls:
            outlive_ttl()
        calls.append(1)

    def build(pipe):
        pause_once()
        pipe.hincrby(tagged.zone_state, "n", 1)

    a.transaction(build)
    assert r.hget(tagged.zone_state, "n") == "1" and r.get(tagged.leader) == "a"
