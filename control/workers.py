"""Partitioned control: N workers share the site's partitions (docs/scaling.md).

Each ``crowdflow control`` process of a partitioned site (``control.partitions``) is one
:class:`Worker`. It runs one :class:`control.service.ControlService` per partition, each on
the partition's part of the site (:func:`crowdflow.site.partitions.sub_site`) and keys
(``<prefix>:{<partition>}:…``, one cluster slot), each in its own thread, each leading its
partition only while it holds that partition's lease: so at most one worker writes a
partition (fencing as before), and a partition whose worker dies is taken over within the
lease time.

Who leads what: workers announce themselves in ``<prefix>:{workers}:alive`` (a sorted set
scored by the Redis server's clock, refreshed every ``lease/3``; a member silent for a lease
time is gone). With ``n`` live workers and ``P`` partitions, a worker leads at most
``share = ceil(P / n)``: it takes free partitions while below its share and, when a worker
joins and the share drops, hands over the ones beyond it (the last in id order), which the
newcomer then takes. A dead worker's partitions go to the survivors as soon as its leases
and its membership expire (both one lease time), so within ``lease + poll``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid

import redis

from crowdflow.bus import TRANSIENT, Keys, raw_client
from crowdflow.site import Site
from crowdflow.site.partitions import partition_keys, sub_site

from .service import ControlService

log = logging.getLogger("crowdflow.control.workers")

# KEYS: the membership zset. ARGV: worker id, ttl ms, "leave" to remove. → the live members.
# The server's clock scores the members, so workers on hosts with skewed clocks still agree.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == 'leave' then
  redis.call('zrem', KEYS[1], ARGV[1])
else
  redis.call('zadd', KEYS[1], now, ARGV[1])
end
redis.call('zremrangebyscore', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('pexpire', KEYS[1], 10 * tonumber(ARGV[2]))
return redis.call('zrange', KEYS[1], 0, -1)
"""


class Worker:
    def __init__(self, site: Site, r: redis.Redis, keys: Keys, worker_id: str | None = None,
                 lease_ms: int | None = None, stale_after_s: float | None = None, audit_dir: str | None = None,
                 edge_keys: dict[str, str] | None = None, planner_factory=None):
        self.site = site
        self.r = r
        self.keys = keys
        self.id = worker_id or f"control-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.lease_ms = lease_ms or site.control.lease_ms
        self.parts = partition_keys(site, keys)
        raw = raw_client(r)  # one bytes client shared by the partitions' loops (thread-safe)
        self.services = {
            pid: ControlService(sub_site(site, pid), r, k, consumer=self.id, stale_after_s=stale_after_s,
                                lease_ms=self.lease_ms, raw=raw,
                                audit_dir=f"{audit_dir}/{pid}" if audit_dir else None,  # one archive per partition
                                edge_keys=edge_keys, planner_factory=planner_factory)
            for pid, k in self.parts.items()
        }
        self.members: list[str] = [self.id]
        self._lock = threading.Lock()
        self._trying: set[str] = set()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ membership

    def heartbeat(self, leave: bool = False) -> list[str]:
        members = self.r.eval(_HEARTBEAT, 1, self.keys.workers, self.id, self.lease_ms, "leave" if leave else "")
        members = [m.decode() if isinstance(m, bytes) else m for m in members]
        if not leave:
            with self._lock:
                self.members = members if self.id in members else members + [self.id]
        return members

    @property
    def share(self) -> int:
        return math.ceil(len(self.services) / max(1, len(self.members)))

    def leading(self) -> list[str]:
        return sorted(pid for pid, svc in self.services.items() if svc.leading)

    def may_lead(self, pid: str) -> bool:
        """Asked by a partition's loop: keep leading / try to take the lease now?

        Only a partition whose lease is free competes for a slot of this worker's share, so
        partitions led elsewhere never crowd out the one that was just handed over."""
        svc = self.services[pid]
        if not svc.leading and svc.lease.holder() not in (None, self.id):
            with self._lock:
                self._trying.discard(pid)
            return False
        with self._lock:
            self._trying.discard(pid)  # its previous try (if any) is over
            held = self.leading()
            share = self.share
            if pid in held:
                return pid in held[:share]
            if len(held) + len(self._trying) < share:
                self._trying.add(pid)
                return True
            return False

    # ------------------------------------------------------------------ running

    def run(self, stop: threading.Event) -> None:
        """Heartbeat in this thread, one control loop per partition in its own; return at ``stop``."""
        for pid, svc in self.services.items():
            t = threading.Thread(target=svc.run, args=(stop, lambda pid=pid: self.may_lead(pid)),
                                 name=f"control-{pid or 'site'}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("control worker %s: %d partitions (%s)", self.id, len(self.services), ", ".join(self.services))
        last_led: list[str] = []
        while not stop.is_set():
            try:
                self.heartbeat()
            except (TRANSIENT, redis.RedisError) as e:  # the loops back off on their own
                log.error("worker heartbeat failed (%s: %s)", type(e).__name__, e)
            led = self.leading()
            if led != last_led:
                log.info("worker %s leads %s (share %d of %d partitions, %d workers)", self.id, led or "nothing",
                         self.share, len(self.services), len(self.members))
                last_led = led
            stop.wait(self.lease_ms / 3000)
        for t in self._threads:
            t.join(timeout=10)
        try:
            self.heartbeat(leave=True)
        except redis.RedisError:
            pass

    def start(self) -> tuple[threading.Event, threading.Thread]:
        """Run in a background thread (tests, benchmarks); set the event to stop."""
        stop = threading.Event()
        t = threading.Thread(target=self.run, args=(stop,), name=f"worker-{self.id}", daemon=True)
        t.start()
        return stop, t


def wait_balanced(workers: list[Worker], partitions: int, timeout_s: float = 20) -> float:
    """Seconds until every partition is led by exactly one of ``workers`` and none leads more
    than its share (a helper for tests and the benchmark)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        led = [pid for w in workers for pid in w.leading()]
        if len(led) == partitions and len(set(led)) == partitions and \
                all(len(w.leading()) <= math.ceil(partitions / len(workers)) for w in workers):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError(f"not balanced after {timeout_s} s: {[(w.id, w.leading()) for w in workers]}")
