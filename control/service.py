"""The control service: the Redis shell around the zone book, plan engine and alarm book.

One loop, run only by the instance holding the leader lease:

1. read observations (consumer group, pending first, as raw bytes), decode and check them
   (bad ones go to ``<p>:obs:dead`` with the reason and the raw bytes), drop duplicates by
   camera and sequence number, apply them in capture-time order;
2. read commands, answer each exactly once (results are kept by command id);
3. once a second, recompute every zone (staleness), run the plan engine and the alarms, and
   write a 10 s history sample per zone;
4. publish every change (hash + ``<p>:events``), append audit entries, mark the observations
   seen and acknowledge the entries: all in ONE MULTI/EXEC fenced by the leader lease
   (:meth:`crowdflow.bus.LeaderLease.transaction`). An observation is therefore marked seen in
   Redis only together with the state it produced; a paused ex-leader's writes are refused.

Failures never end the loop (docs/reliability.md): when the publish fails (Redis down, paused,
out of memory, a key of the wrong type) the writes are kept in memory and retried with
backoff, no new entries are read meanwhile, and the zone book, filters and timers stay as they
are, so a reconnect resumes where it was. A second instance waits for the lease; when the
leader dies it takes over within the lease time (3 s) plus one poll (0.5 s): it restores the
plan state from Redis and claims the dead leader's unacknowledged entries, so nothing is lost
and, thanks to the idempotency keys, nothing is applied twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

import redis

from collections import Counter
from pathlib import Path

from crowdflow.bus import (
    AUDIT_KEEP_S, AUDIT_MAXLEN, EVENTS_KEEP_S, EVENTS_MAXLEN, HISTORY_KEEP_S, HISTORY_MAXLEN, OBS_KEEP_S,
    RESULTS_KEEP_S, RESULTS_MAX,
    RETENTION_SCALE, SCRIPT_KEY_TYPE, SEEN_KEEP_S, TRANSIENT, Backoff, GroupReader, Keys, LeaderLease,
    LeaseLost, SlotMoved, quarantine_wrong_type, raw_client, refresh_slots, seen_many, signature_ok, slot_client,
    text, xadd_many, zadd_many,
)
from crowdflow.records import (
    Alarm,
    LastKnown,
    AuditEntry,
    Command,
    CommandResult,
    HoldState,
    InForce,
    Observation,
    Order,
    PlanState,
    Recommendation,
    RecordError,
    SiteMode,
    ZoneState,
    decode,
)
from crowdflow.site import Site

from .alarms import AlarmBook
from .commands import refusal_audit, too_late
from .inforce import in_force, same_measures
from .orders import OrderBook
from .plans import PlanEngine
from . import snapshot
from .archive import AuditArchive
from .ingest import MAX_RECORD_BYTES, check, entry_time
from .zones import ZoneBook

log = logging.getLogger("crowdflow.control")

GROUP = "control"
FULL_EVERY_S = 1.0
HISTORY_EVERY_S = 10.0
READ_MAX, READ_MIN = 5000, 25  # observations read per cycle (adapted to the cycle time)
SEEN_TRIM_EVERY_S = 60.0  # a camera's dedupe marks are trimmed (and their expiry pushed back) this often
CLAIM_EVERY_S = 5.0  # take over entries left pending by other (dead or fenced) consumers
CONSUMER_GC_EVERY_S = 60.0
CONSUMER_IDLE_MS = 10 * 60 * 1000  # a consumer silent this long with nothing pending is gone
# The Redis type each command of a write batch expects its key to have (for WRONGTYPE repair).
KEY_TYPE = {"hset": "hash", "hdel": "hash", "xadd": "stream", "xack": "stream", "xtrim": "stream", "set": "string",
            "zadd": "zset", "zrem": "zset", "zremrangebyscore": "zset"}
MAINTAIN_EVERY_S = max(2.0, 30.0 / RETENTION_SCALE)  # retention: old command results, dropped recommendations/alarms, audit archive


def tune_gc() -> None:
    """For a long-running control process, once the site is loaded: move everything alive
    now (the site, its geometry) out of the collector's view and collect young objects less
    often. A 10,000-zone site is hundreds of thousands of objects that every full collection
    walked again; the hot path allocates many short-lived ones (records, views), which
    triggered those collections every few hundred allocations. Reference counting still frees
    them at once; only cycles wait longer."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class WriteQueue:
    """Redis writes recorded in order, sent later as one fenced MULTI/EXEC. Mirrors the pipeline
    methods the service uses (``hset``, ``xadd``, …): ``out.hset(k, f, v)`` queues the call."""

    def __init__(self):
        self.ops: list[list] = []  # [method, args, kwargs, failures]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args, **kwargs):
            self.ops.append([name, args, kwargs, 0])

        return record

    def __len__(self) -> int:
        return len(self.ops)


class ControlService:
    def __init__(self, site: Site, r: redis.Redis, keys: Keys, consumer: str | None = None,
                 stale_after_s: float | None = None, clock: Callable[[], float] = time.time,
                 lease_ms: int = 3000, audit_dir: str | Path | None = None,
                 edge_keys: dict[str, str] | None = None, planner_factory: Callable[[], object] | None = None,
                 raw: redis.Redis | None = None):
        self.site = site
        # camera → its edge's secret: when set, a camera's records must carry that edge's
        # signature (``sig``), so one gateway's Redis user cannot speak for another's cameras.
        self.edge_keys = edge_keys
        # With an archive directory the audit trail is appended to rotated JSON-lines files and
        # trimmed from Redis after AUDIT_KEEP_S; without one it stays in Redis untrimmed.
        self.archive = AuditArchive(audit_dir) if audit_dir else None
        # Measures engine (issue 11): a factory of control.measures planners (one per leadership
        # term, so a takeover starts from what Redis says is in force); None: level bundles only.
        self.planner_factory = planner_factory
        self.r = r
        self.raw = raw or raw_client(r)  # reads what others wrote: bytes, decoded by the record decoder
        self.keys = keys
        self.clock = clock
        self.stale_after_s = stale_after_s if stale_after_s is not None else site.control.stale_after_s
        self.consumer = consumer or f"control-{socket.gethostname()}-{os.getpid()}"
        self.obs_reader = GroupReader(r, keys.obs, GROUP, self.consumer, keys.obs_dead, raw=self.raw)
        self.cmd_reader = GroupReader(r, keys.cmd, GROUP, self.consumer, keys.cmd_dead, raw=self.raw)
        self.lease = LeaderLease(r, keys.leader, ttl_ms=lease_ms, instance_id=self.consumer)
        self.fenced = False  # run() turns it on: every write then requires the lease
        self.leading = False  # run() says whether this instance leads now
        self._renewed_at = float("-inf")  # when the lease was last renewed (monotonic)
        self._batch = READ_MAX
        self.applied = self.rejected = self.duplicates = 0
        self.stats: Counter = Counter()  # errors by kind, reconnects, … (exported as metrics)
        self.rejected_by: Counter = Counter()  # dead letters by reason class
        self.skew_s: dict[str, float] = {}  # camera → its gateway's clock offset, when corrected
        self.leading = False
        self.last_cycle_s = 0.0
        self.newest_applied: float | None = None  # capture time of the newest applied observation
        self.on_cycle: Callable[[float], None] | None = None  # metrics hook
        self._trim_reported: dict[str, tuple[int, int]] = {}  # stream → newest foreign trim reported
        self._started = False
        self._reset()

    def _reset(self) -> None:
        self.book = ZoneBook(self.site, self.stale_after_s)
        self.engine = PlanEngine(self.site, planner=self.planner_factory() if self.planner_factory else None)
        self.alarms = AlarmBook(self.site)
        self.states: dict[str, ZoneState] = {}
        self._last_full = float("-inf")
        self._last_hist: dict[str, tuple[float, str]] = {}
        self.out = WriteQueue()  # writes not yet in Redis
        self._unflushed_seen: set[tuple[str, int]] = set()  # applied here, not yet marked in Redis
        self._answered: dict[str, str] = {}  # command id → result, until the result is in Redis
        self._last_claim = self._last_gc = self._last_maintain = time.monotonic()
        self._inforce = None  # the InForce record last published
        self.orders = OrderBook()
        # queue counts at the holding areas (report_queue); the planner reads the same book
        self.holds = self.engine.holds
        self._holds_published: dict[str, str] = {}  # holding area → status last published
        self._memory_full = True
        self._seen_trimmed: dict[str, float] = {}  # seen-mark key → when last trimmed (monotonic)

    # ------------------------------------------------------------------ start / takeover

    def start(self) -> None:
        """Begin as leader: restore decisions from Redis, claim orphaned work, publish.

        When no other instance led since this one last did (a reconnect, or the lease lapsed
        during a Redis outage and nobody took it), the in-memory zone book, filters, timers and
        unsent writes are kept: they are the newest state there is."""
        for reader in (self.obs_reader, self.cmd_reader):
            reader.ensure_group()
            reader.claim_all()
        now = self.clock()
        if self._started and self.lease.continued:
            log.info("control %s resumes with its state (no other leader in between)", self.consumer)
            self.obs_reader.replay_pending()
            self.cmd_reader.replay_pending()
            self.states = self.book.states(now)
            self._publish_zones(self.out, self.states)
            self._flush()
            return
        self._reset()
        self._started = True
        plans = self._load(self.keys.plan_state, PlanState)
        recs = self._load(self.keys.recommendations, Recommendation)
        mode = self._load_one(self.keys.mode, SiteMode)
        self.engine.restore(plans, recs, mode)
        self.book.set_actions(self.engine.active_actions())
        self.alarms.restore(self._load(self.keys.alarms, Alarm))
        # The previous leader's working memory: filters, camera views, flows, sustain timers and
        # cooldowns. Without it (first start, too old) zones are unknown until data arrives,
        # keeping the last known values that were published.
        self._memory_full = True  # this term's first memory write holds every zone
        if snapshot.load(self.book, self.engine, self._raw_hgetall(self.keys.control_memory), now):
            log.info("control %s restored the previous leader's memory", self.consumer)
            self.stats["memory_restored"] += 1
        else:
            self._seed_last_known(self._load(self.keys.zone_state, ZoneState))
        self._inforce = self._load_one(self.keys.inforce, InForce)
        self.orders.restore(self._load(self.keys.orders, Order))
        self.holds.restore(self._load(self.keys.hold_state, HoldState).values())  # counts survive a takeover
        self._publish_holds(self.out, now, every=True)
        self.states = self.book.states(now)
        out = self.out
        self._publish_zones(out, self.states)
        for ps in self.engine.plan_states().values():
            self._event(out, "plan", ps)
            out.hset(self.keys.plan_state, ps.plan_id, ps.encode())
        if mode is None:  # a first start: the site is in normal operation, say so
            mode = SiteMode(mode="normal", since=now, by="system")
            self.engine.mode = mode
            out.set(self.keys.mode, mode.encode())
            self._event(out, "mode", mode)
        self._publish_inforce(out, now)
        self._flush()

    def _raw_hgetall(self, key: str) -> dict:
        try:
            return self.raw.hgetall(key)
        except redis.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            quarantine_wrong_type(self.r, key, "hash")  # e.g. a version-1 memory (one string)
            return {}

    def _raw_get(self, key: str):
        try:
            return self.raw.get(key)
        except redis.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            quarantine_wrong_type(self.r, key, "string")
            return None

    def _seed_last_known(self, published: dict) -> None:
        for zid, s in published.items():
            if zid not in self.book._last_known:
                if s.status == "ok" and s.count is not None and s.updated_at is not None:
                    self.book._last_known[zid] = LastKnown(count=s.count, density=s.density or 0.0, at=s.updated_at)
                elif s.last_known is not None:
                    self.book._last_known[zid] = s.last_known

    def _load(self, key: str, cls) -> dict:
        """A hash of records, read as bytes; an unreadable field is reported and skipped (it can
        never stop a restart), a key of the wrong type is renamed aside."""
        try:
            raw = self.raw.hgetall(key)
        except redis.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            quarantine_wrong_type(self.r, key, "hash")
            return {}
        out = {}
        for k, v in raw.items():
            try:
                out[text(k)] = decode(cls, v)
            except RecordError as e:
                self.stats["restore_unreadable"] += 1
                log.error("%s field %r unreadable, ignored on restore: %s", key, text(k)[:80], e)
        return out

    def _load_one(self, key: str, cls):
        try:
            raw = self.raw.get(key)
        except redis.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            quarantine_wrong_type(self.r, key, "string")
            return None
        if raw is None:
            return None
        try:
            return decode(cls, raw)
        except RecordError as e:
            self.stats["restore_unreadable"] += 1
            log.error("%s unreadable, ignored on restore: %s", key, e)
            return None

    # ------------------------------------------------------------------ one cycle

    def step(self, block_ms: int = 100) -> int:
        """One read-apply-publish-ack cycle. Returns the number of stream entries handled.

        Raises Redis errors (the caller backs off); whatever was applied in memory stays, with
        its writes queued, and the entries read are re-read after the error."""
        t0 = time.perf_counter()
        try:
            n = self._step(block_ms)
            self.last_cycle_s = time.perf_counter() - t0 - (block_ms / 1000 if n == 0 else 0.0)
            if self.on_cycle is not None:
                self.on_cycle(max(0.0, self.last_cycle_s))
            return n
        except BaseException:
            self.obs_reader.replay_pending()
            self.cmd_reader.replay_pending()
            raise

    def _step(self, block_ms: int) -> int:
        if self.out:  # an earlier publish failed: send it first, read nothing new meanwhile
            self._flush()
        mono = time.monotonic()
        if mono - self._last_claim >= CLAIM_EVERY_S:
            self._last_claim = mono
            for reader in (self.obs_reader, self.cmd_reader):
                reader.claim_all(min_idle_ms=max(10_000, 3 * self.lease.ttl_ms))
        if mono - self._last_gc >= CONSUMER_GC_EVERY_S:
            self._last_gc = mono
            for reader in (self.obs_reader, self.cmd_reader):
                gone = reader.remove_idle_consumers(CONSUMER_IDLE_MS)
                if gone:
                    log.info("removed idle consumers of %s: %s", reader.stream, ", ".join(gone))
        # Commands and observations in one round trip (both streams are in the partition's
        # slot): a command waits at most one blocking read (block_ms) longer than before.
        cmd_entries, obs_entries = GroupReader.read_together(
            [(self.cmd_reader, 100, None), (self.obs_reader, self._batch, block_ms)])
        now = self.clock()
        out = self.out
        touched = self._ingest(obs_entries, now)
        if touched:
            fresh = self.book.states(now, touched)
            self.states.update(fresh)
            self._publish_zones(out, fresh)
        for entry_id, fields in cmd_entries:
            self._command(out, entry_id, fields, now)
        if now - self._last_full >= FULL_EVERY_S:
            self._last_full = now
            # Zones that received nothing are only re-evaluated when they may have gone stale.
            quiet = [zid for zid, s in self.states.items()
                     if s.status == "ok" and s.updated_at is not None and now - s.updated_at > self.stale_after_s]
            if quiet:
                expired = self.book.states(now, quiet)
                self.states.update(expired)
                self._publish_zones(out, expired)
            for rec in self.engine.evaluate(now, self.states):
                self.alarms.update_recommendation(now, rec)
            self.alarms.update_zones(now, self.states)
            self._publish_holds(out, now)
            self._sample_history(out, now, self.states)
            # Incremental: the zones whose memory changed since the last write (all of them
            # on a term's first write), not a dump of every zone each second.
            dirty = self.book.take_dirty()
            out.hset(self.keys.control_memory,
                     mapping=snapshot.dump(self.book, self.engine, now, None if self._memory_full else dirty))
            self._memory_full = False
        if time.monotonic() - self._last_maintain >= MAINTAIN_EVERY_S:
            self._last_maintain = time.monotonic()
            self.maintain(now)
        decided = bool(cmd_entries) or now == self._last_full  # only commands and the plan engine change decisions
        if decided:
            self.book.set_actions(self.engine.active_actions())  # cut roads widen their zones
        self._publish_decisions(out)
        if decided:  # not in every cycle: building and comparing the record cost ~1 ms per cycle
            self._publish_inforce(out, now)
        self.obs_reader.ack([i for i, _ in obs_entries], pipe=out)
        self.cmd_reader.ack([i for i, _ in cmd_entries], pipe=out)
        self._flush()
        self._adapt_batch(time.monotonic() - mono, len(obs_entries))
        return len(obs_entries) + len(cmd_entries)

    def _adapt_batch(self, cycle_s: float, n: int) -> None:
        """Keep a cycle well inside the lease: a busy cycle longer than a quarter of the lease
        (a slow or shared CPU, several partitions in one process) halves the next read, a quick
        full one doubles it back up to READ_MAX. Otherwise the lease lapses mid-cycle, the
        fenced write is refused and the work is done again."""
        if cycle_s > self.lease.ttl_ms / 4000:
            self._batch = max(READ_MIN, self._batch // 2)
        elif n >= self._batch and cycle_s < self.lease.ttl_ms / 16000:
            self._batch = min(READ_MAX, self._batch * 2)

    def maintain(self, now: float) -> None:
        """Retention, so that Redis stays flat over an evening and a season: command results
        after an hour (at most RESULTS_MAX), recommendations and alarms the engine has let go
        of, and the audit trail once archived (Redis keeps the last hour, at most AUDIT_MAXLEN
        entries, for the dashboard's search; the archive keeps everything)."""
        out, k = self.out, self.keys
        old = self.raw.zrangebyscore(k.cmd_results_at, "-inf", now - RESULTS_KEEP_S, start=0, num=1000)
        over = self.raw.zcard(k.cmd_results_at) - len(old) - RESULTS_MAX
        if over > 0:  # a burst: the oldest go, but never one a redelivery could still act on
            young = now - max(self.site.control.command_max_age_s, 60)
            old += self.raw.zrangebyscore(k.cmd_results_at, "-inf", young, start=len(old), num=min(over, 1000))
        if old:
            out.hdel(k.cmd_results, *old)
            out.zrem(k.cmd_results_at, *old)
        gone_recs = [f for f in self.raw.hkeys(k.recommendations) if text(f) not in self.engine.recs]
        if gone_recs:
            out.hdel(k.recommendations, *gone_recs)
        gone_alarms = [f for f in self.raw.hkeys(k.alarms) if text(f) not in self.alarms.alarms]
        if gone_alarms:
            out.hdel(k.alarms, *gone_alarms)
        self.stats["retention_removed"] += len(old) + len(gone_recs) + len(gone_alarms)
        if self.archive is not None:
            self._archive_audit(now)

        # Streams by age: events (live push only), zone timelines, and acknowledged observations,
        # never past the oldest entry still unacknowledged or not yet delivered.
        # Exact trims: approximate ones only drop whole radix-tree nodes (~100 entries), which a
        # zone timeline never fills; the cost is the entries removed, a few per pass.
        out.xtrim(k.events, minid=f"{int((now - EVENTS_KEEP_S) * 1000)}-0", approximate=False)
        hist_min = f"{int((now - HISTORY_KEEP_S) * 1000)}-0"
        for z in self.site.zones:
            out.xtrim(k.zone_history(z.id), minid=hist_min, approximate=False)
        for stream in (k.obs, k.cmd):
            keep_from = int((now - OBS_KEEP_S) * 1000)
            try:
                pend = self.raw.xpending(stream, GROUP)
                if pend and pend.get("pending"):
                    keep_from = min(keep_from, int(text(pend["min"]).split("-")[0]))
                for g in self.raw.xinfo_groups(stream):
                    g = {text(a): b for a, b in g.items()}
                    if text(g.get("name")) == GROUP:
                        keep_from = min(keep_from, int(text(g["last-delivered-id"]).split("-")[0]))
                        self._check_foreign_trim(stream, _sid(g["last-delivered-id"]), g.get("entries-read"))
            except redis.ResponseError:
                continue
            out.xtrim(stream, minid=f"{keep_from}-0", approximate=True)

    def _check_foreign_trim(self, stream: str, delivered: tuple[int, int], entries_read) -> None:
        """Control never trims an entry it has not read; a producer can (``XADD … MAXLEN``, which
        an ACL cannot forbid, or the edge's own hard cap after a very long backlog). When the
        stream's first entry is past the last one delivered to control, the entries added but
        neither read nor still there were deleted unread: say so loudly (metric
        ``crowdflow_control_events_total{kind="stream_trimmed_unread"}``, error log), once."""
        if entries_read is None:
            return
        info = {text(a): b for a, b in self.raw.xinfo_stream(stream).items()}
        first = info.get("first-entry")
        if not first or _sid(first[0]) <= delivered:
            return
        lost = int(info.get("entries-added") or 0) - int(entries_read) - int(info.get("length") or 0)
        mark = (_sid(first[0]), lost)
        if lost > 0 and self._trim_reported.get(stream) != mark:
            self._trim_reported[stream] = mark
            self.stats["stream_trimmed_unread"] += lost
            log.error("%s: %d entries were deleted before control read them (XADD MAXLEN / XTRIM by a producer?): "
                      "lost unread", stream, lost)

    def _archive_audit(self, now: float) -> None:
        """Append the new audit entries to the archive files (fsync'ed), then trim Redis to its
        window, never past the archive cursor. The cursor and the trim go in the same fenced
        transaction: a crash before it repeats lines in the files (dropped by id on reading),
        never loses one; a leader that lost its lease trims nothing."""
        out, k = self.out, self.keys
        cursor = text(self._raw_get(k.audit_archived))
        try:
            new = self.archive.archive(self.raw, k.audit, cursor)
        except OSError as e:  # disk full, unwritable: keep everything in Redis, say so
            self.stats["audit_archive_failed"] += 1
            log.error("audit archive %s: %s; the audit stays in Redis until it can be written", self.archive.dir, e)
            return
        if new and new != cursor:
            out.set(k.audit_archived, new)
        if not new:
            return
        # Keep the last AUDIT_KEEP_S and at most AUDIT_MAXLEN entries, whichever is fewer.
        minid = (int((now - AUDIT_KEEP_S) * 1000), 0)
        extra = self.raw.xlen(k.audit) - AUDIT_MAXLEN
        if extra > 0:
            last_out = self.raw.xrange(k.audit, min="-", max="+", count=extra)[-1][0]
            ms, seq = (int(x) for x in text(last_out).split("-"))
            minid = max(minid, (ms, seq + 1))
        # ... and never an entry not yet archived: the archived cursor itself stays.
        minid = min(minid, tuple(int(x) for x in new.split("-")))
        out.xtrim(k.audit, minid=f"{minid[0]}-{minid[1]}", approximate=False)

    def _flush(self) -> None:
        """Send the queued writes as one MULTI/EXEC (fenced by the lease when leading).

        A command refused on its own (WRONGTYPE: the key is renamed aside and the command
        retried; anything else: retried twice, then dropped with an error log) does not undo
        the others. A refused or lost transaction keeps every write queued for the next try."""
        ops = self.out.ops
        if not ops:
            # Nothing to write: renew the lease on its own (ttl/3), so that a quiet leader keeps
            # its partition instead of letting it lapse and another worker take it.
            if self.fenced and time.monotonic() - self._renewed_at > self.lease.ttl_ms / 3000:
                if not self.lease.renew():
                    raise LeaseLost("lease expired while idle")
                self._renewed_at = time.monotonic()
            return

        def build(pipe):
            for name, args, kwargs, _ in ops:
                getattr(pipe, name)(*args, **kwargs)

        if self.fenced:
            results = self.lease.transaction(build)
            self._renewed_at = time.monotonic()
        else:
            with self.r.pipeline(transaction=True) as pipe:
                build(pipe)
                results = pipe.execute(raise_on_error=False)
        keep = []
        for op, res in zip(ops, results):
            if not isinstance(res, Exception):
                continue
            name, args = op[0], op[1]
            op[3] += 1
            if name == "eval":  # a crowdflow.bus script: its declared keys, one type each
                keys, expected = args[2:2 + args[1]], SCRIPT_KEY_TYPE.get(args[0], "none")
                what = f"{len(set(keys))} keys from {keys[0] if keys else ''}"
            else:
                keys, expected, what = args[:1], KEY_TYPE.get(name, "none"), args[0] if args else ""
            if "WRONGTYPE" in str(res):
                self.stats["wrongtype"] += 1
                for key in dict.fromkeys(keys):
                    quarantine_wrong_type(self.r, key, expected)
            else:
                self.stats["write_refused"] += 1
                log.error("redis refused %s %s: %s", name, what, res)
            if op[3] <= 3:
                keep.append(op)
            else:
                self.stats["write_dropped"] += 1
                log.error("gave up on %s %s after %d refusals", name, what, op[3])
        self.out.ops = keep
        if not keep:
            self._unflushed_seen.clear()
            self._answered.clear()

    def _ingest(self, entries, now: float) -> set[str]:
        out = self.out
        good: list[tuple[str, Observation]] = []
        for entry_id, fields in entries:
            raw = fields.get("rec", b"")
            if len(raw) > MAX_RECORD_BYTES:
                self._reject(entry_id, fields, f"(record): {len(raw):,} bytes, limit {MAX_RECORD_BYTES:,}", kind="size")
                continue
            try:
                obs = decode(Observation, raw)
            except RecordError as e:
                self._reject(entry_id, fields, str(e))
                continue
            if self.edge_keys is not None:
                secret = self.edge_keys.get(obs.camera_id)
                if secret is None:
                    self._reject(entry_id, fields, f"sig: no edge key is configured for camera {obs.camera_id}",
                                 kind="sig")
                    continue
                if not signature_ok(secret, raw, fields.get("sig")):
                    self._reject(entry_id, fields, f"sig: not signed with camera {obs.camera_id}'s edge key",
                                 kind="sig")
                    continue
            verdict = check(obs, self.site, now, entry_time(entry_id) if obs.sent_at is not None else None)
            if verdict.obs is None:
                self._reject(entry_id, fields, verdict.reason)
                continue
            if verdict.skew_s is not None:
                self._clock_skew(obs, verdict.skew_s)
            good.append((entry_id, verdict.obs))
        if not good:
            return set()
        # Idempotency by (camera, seq), in Redis so it holds across restarts and failover. The
        # check only reads; the mark is written with the state it produced (see _flush), so an
        # observation is "seen" exactly when its effect is published.
        by_cam: dict[str, list[int]] = {}
        for _, obs in good:
            by_cam.setdefault(obs.camera_id, []).append(obs.seq)
        # Every camera's ZMSCORE in one EVAL (crowdflow.bus.seen_many: declared keys, one
        # command instead of one per camera, ≈ 5 µs of redis-py each), down the slot master's
        # own client (all keys in the partition's slot): a cluster client looks up the node
        # under its lock, which the partitions' threads of a worker queued on. Not a MULTI:
        # Redis refuses that when it is out of memory, and this only reads.
        try:
            flags = seen_many(slot_client(self.r, self.keys.leader),
                              {self.keys.obs_seen(cam): seqs for cam, seqs in by_cam.items()})
        except (redis.exceptions.MovedError, redis.exceptions.AskError) as e:
            refresh_slots(self.r, self.raw)
            raise SlotMoved(str(e)) from None
        flag = iter(flags)
        seen = {(cam, seq) for cam, seqs in by_cam.items() for seq in seqs if next(flag)}
        touched: set[str] = set()
        batch: list[tuple[str, Observation]] = []
        for entry_id, obs in sorted(good, key=lambda x: x[1].captured_at):
            key = (obs.camera_id, obs.seq)
            if key in seen or key in self._unflushed_seen:
                self.duplicates += 1
                continue
            self._unflushed_seen.add(key)  # a second copy in this batch is a duplicate too
            batch.append((entry_id, obs))
        try:  # the whole batch at once: its zones are fused together (ZoneBook.apply_many)
            touched = self.book.apply_many([obs for _, obs in batch], now)
        except Exception:  # a bug must not turn one record into a crash loop: one by one, to find it
            log.exception("a batch of %d observations could not be applied at once; one by one", len(batch))
            applied = []
            for entry_id, obs in batch:
                try:
                    touched |= self.book.apply(obs, now)
                except Exception as e:
                    log.exception("observation %s could not be applied", entry_id)
                    self._unflushed_seen.discard((obs.camera_id, obs.seq))
                    self._reject(entry_id, {"rec": obs.encode()}, f"internal: {type(e).__name__}: {e}",
                                 kind="internal")
                    continue
                applied.append((entry_id, obs))
            batch = applied
        by_key: dict[str, dict[str, float]] = {}  # camera → its marks (its key made once, not per observation)
        for _, obs in batch:
            self.alarms.update_camera(now, obs.camera_id, obs.health)
            cam_marks = by_key.get(obs.camera_id)
            if cam_marks is None:
                cam_marks = by_key[obs.camera_id] = {}
            cam_marks[str(obs.seq)] = obs.captured_at
        marks = {self.keys.obs_seen(cam): m for cam, m in by_key.items()}
        self.applied += len(batch)
        mono = time.monotonic()
        if marks:  # every camera's marks in one command (crowdflow.bus.zadd_many), in the fenced write
            out.eval(*zadd_many(marks))
        for key, mapping in marks.items():
            # Trimming and the expiry are per camera, not per batch: once a minute is enough
            # (marks live SEEN_KEEP_S, observations older than MAX_AGE_S are refused anyway),
            # and it takes two of the three commands a camera cost every cycle.
            if mono - self._seen_trimmed.get(key, float("-inf")) >= SEEN_TRIM_EVERY_S:
                self._seen_trimmed[key] = mono
                out.zremrangebyscore(key, "-inf", now - SEEN_KEEP_S)
                # a camera taken away leaves nothing behind; refreshed once a minute, so marks
                # live at least SEEN_KEEP_S − 60 s, still well beyond MAX_AGE_S
                out.expire(key, int(SEEN_KEEP_S))
            self.newest_applied = max(self.newest_applied or 0.0, max(mapping.values()))
        return touched

    def _clock_skew(self, obs: Observation, skew: float) -> None:
        """A gateway whose clock is off: its capture times are corrected, and it is reported
        (once per camera per change of more than a second, and as a metric)."""
        self.stats["clock_corrected"] += 1
        prev = self.skew_s.get(obs.camera_id)
        self.skew_s[obs.camera_id] = skew
        if prev is None or abs(prev - skew) > 1.0:
            log.warning("camera %s (agent %s): gateway clock %+.1f s off; capture times corrected",
                        obs.camera_id, obs.agent_id, skew)

    def _reject(self, entry_id: str, fields: dict, reason: str, kind: str | None = None) -> None:
        self.obs_reader.dead_letter(entry_id, fields, reason, pipe=self.out)
        self.rejected += 1
        self.rejected_by[kind or reason_kind(reason)] += 1

    def _command(self, pipe, entry_id: str, fields: dict, now: float) -> None:
        try:
            cmd = decode(Command, fields.get("rec", b""))
        except RecordError as e:
            self.cmd_reader.dead_letter(entry_id, fields, str(e), pipe=pipe)
            self.stats["commands_rejected"] += 1
            return
        done = self._answered.get(cmd.id) or self.raw.hget(self.keys.cmd_results, cmd.id)
        if done is not None:  # seen before (a retry or a redelivery): answer again, act once
            try:
                self._event(pipe, "command_result", decode(CommandResult, done))
            except RecordError as e:
                log.error("stored result of command %s unreadable (%s); not acting again", cmd.id, e)
            return
        late = too_late(cmd, now, self.site.control.command_max_age_s)
        if late is not None:
            result, audit = CommandResult(command_id=cmd.id, ok=False, error=late, at=now), [refusal_audit(cmd, now, late)]
        elif cmd.kind == "answer_order":
            error = self.orders.answer(cmd, now)
            result = CommandResult(command_id=cmd.id, ok=error is None, error=error, at=now)
            audit = [refusal_audit(cmd, now, error)] if error else []
        elif cmd.kind == "report_queue":
            error = self.holds.report(cmd.hold_id, cmd.people, cmd.issued_at, cmd.user, now)
            result = CommandResult(command_id=cmd.id, ok=error is None, error=error, at=now)
            audit = []  # a count, not a decision: its effect on the plan is audited with the plan
            if error is None:
                self._publish_holds(pipe, now, only=cmd.hold_id)
        elif cmd.kind == "ack_alarm":
            error = self.alarms.ack(now, cmd)
            result = CommandResult(command_id=cmd.id, ok=error is None, error=error, at=now)
            audit = [] if error else [self._ack_audit(now, cmd)]
        else:
            result, audit = self.engine.handle(now, cmd, self.states)
            rec = self.engine.recs.get(cmd.recommendation_id or "")
            if rec is not None:
                self.alarms.update_recommendation(now, rec)
        if not result.ok:
            log.warning("command %s (%s by %s/%s) refused: %s", cmd.id, cmd.kind, cmd.user, cmd.role, result.error)
        pipe.hset(self.keys.cmd_results, cmd.id, result.encode())
        pipe.zadd(self.keys.cmd_results_at, {cmd.id: now})
        self._answered[cmd.id] = result.encode()
        self._event(pipe, "command_result", result)
        for entry in audit:
            self._audit(pipe, entry)

    def _ack_audit(self, now: float, cmd: Command) -> AuditEntry:
        return AuditEntry(id=f"a-{int(now * 1000)}-{cmd.id[:8]}", at=now, actor=cmd.user, role=cmd.role,
                          action="ack_alarm", command_id=cmd.id, reason=f"{cmd.alarm_id}: {cmd.note or ''}".strip(": "))

    # ------------------------------------------------------------------ publishing

    def _event(self, pipe, kind: str, rec) -> None:
        pipe.xadd(self.keys.events, {"type": kind, "rec": rec.encode()}, maxlen=EVENTS_MAXLEN, approximate=True)

    def _audit(self, pipe, entry) -> None:
        pipe.xadd(self.keys.audit, {"rec": entry.encode()})  # append-only; archived, then trimmed (maintain)
        self._event(pipe, "audit", entry)

    def _publish_holds(self, pipe, now: float, every: bool = False, only: str | None = None) -> None:
        """Holding areas' queue counts: a new report, a count going stale, or (``every``) all of
        them at a term's start, so that a pen nobody counted shows as unknown, never empty."""
        ids = [only] if only else list(self.holds.areas) if every else sorted(self.holds.reported())
        for hid in ids:
            st = self.holds.state(hid, now)
            if not every and only is None and self._holds_published.get(hid) == st.status:
                continue
            self._holds_published[hid] = st.status
            pipe.hset(self.keys.hold_state, hid, st.encode())
            self._event(pipe, "hold", st)

    def _publish_zones(self, pipe, states: dict[str, ZoneState]) -> None:
        if states:
            encoded = {zid: s.encode() for zid, s in states.items()}
            pipe.hset(self.keys.zone_state, mapping=encoded)
            # one event per zone, as XADD … MAXLEN ~ each, in one command (crowdflow.bus.xadd_many)
            pipe.eval(*xadd_many([self.keys.events] * len(encoded), ("type", "rec"),
                                 [("zone", rec) for rec in encoded.values()], EVENTS_MAXLEN))
            self._sample_history(pipe, states[next(iter(states))].computed_at, states, encoded)

    def _sample_history(self, pipe, now: float, states: dict[str, ZoneState], encoded: dict | None = None) -> None:
        """One sample per zone per 10 s for the 2-hour timeline (spread over time, not bunched),
        and one at every change of status, so live ↔ unknown shows where it happened."""
        streams, rows = [], []
        for zid, s in states.items():
            last_t, last_status = self._last_hist.get(zid, (float("-inf"), None))
            if now - last_t >= HISTORY_EVERY_S or s.status != last_status:
                self._last_hist[zid] = (now, s.status)
                streams.append(self.keys.zone_history(zid))
                rows.append((encoded[zid] if encoded else s.encode(),))
        if streams:  # each zone's XADD … MAXLEN ~, all in one command (crowdflow.bus.xadd_many)
            pipe.eval(*xadd_many(streams, ("rec",), rows, HISTORY_MAXLEN))

    def _publish_inforce(self, pipe, now: float) -> None:
        """The one record of what is in force (control/inforce.py), on change only; the
        measures that came into force go to their posts as orders (control/orders.py)."""
        rec = in_force(self.site, self.engine.plan_states(), self.engine.mode, now)
        if not same_measures(self._inforce, rec):
            self.orders.update(self._inforce, rec, now)
            self._inforce = rec
            pipe.set(self.keys.inforce, rec.encode())
            self._event(pipe, "inforce", rec)
        for oid in self.orders.prune(now):
            pipe.hdel(self.keys.orders, oid)
        orders, audit = self.orders.take_changes()
        for o in orders:
            pipe.hset(self.keys.orders, o.id, o.encode())
            self._event(pipe, "order", o)
        for entry in audit:
            self._audit(pipe, entry)

    def _publish_decisions(self, pipe) -> None:
        plans, recs, mode = self.engine.take_changes()
        for ps in plans:
            pipe.hset(self.keys.plan_state, ps.plan_id, ps.encode())
            self._event(pipe, "plan", ps)
        for rec in recs:
            pipe.hset(self.keys.recommendations, rec.id, rec.encode())
            self._event(pipe, "recommendation", rec)
        if mode is not None:
            pipe.set(self.keys.mode, mode.encode())
            self._event(pipe, "mode", mode)
        for entry in self.engine.take_audit():
            self._audit(pipe, entry)
        for alarm in self.alarms.take_changes():
            pipe.hset(self.keys.alarms, alarm.id, alarm.encode())
            self._event(pipe, "alarm", alarm)

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, may_lead: Callable[[], bool] | None = None) -> None:
        """Lead when the lease is free, follow otherwise; never return before ``stop``.

        Redis errors of every class are caught here: the loop waits with the one backoff
        policy (:class:`crowdflow.bus.Backoff`, capped at 2 s so that control is back within
        seconds of Redis) and keeps its in-memory state; a lost lease makes it a follower.

        ``may_lead`` (partitioned control, :mod:`control.workers`) is asked before taking the
        lease and after every cycle while leading: False hands the partition over (the writes
        are flushed, the lease released) so that workers share the partitions evenly."""
        self.fenced = True
        backoff = Backoff(cap_s=2.0)
        leader = False
        self.leading = False
        while not stop.is_set():
            try:
                if leader and may_lead is not None and not may_lead():
                    self._flush()
                    self.lease.release()
                    leader = self.leading = False
                    self.stats["handed_over"] += 1
                    log.info("control %s hands %s over (rebalancing)", self.consumer, self.keys.prefix)
                    continue
                if not leader:
                    if may_lead is not None and not may_lead():
                        stop.wait(0.5)
                        continue
                    if not self.lease.acquire():
                        stop.wait(0.5)
                        continue
                    self.start()
                    leader = self.leading = True
                    self.stats["leader_terms"] += 1
                    log.info("control %s leads: %d zones, %d cameras, %d plans", self.consumer,
                             len(self.site.zones), len(self.site.cameras), len(self.site.plans))
                self.step()
                if backoff.failures:
                    log.info("redis answers again after %d failed tries", backoff.failures)
                backoff.succeeded()
            except LeaseLost as e:
                log.warning("control %s lost the lease (%s); standing by", self.consumer, e)
                self.stats["lease_lost"] += 1
                leader = self.leading = False
            except TRANSIENT as e:
                self.stats["reconnects"] += 1
                wait = backoff.failed()
                log.error("redis unreachable (%s: %s); retrying in %.1f s, state kept", type(e).__name__, e, wait)
                refresh_slots(self.r, self.raw)  # a cluster's dead master: learn its promoted replica
                stop.wait(wait)
            except redis.RedisError as e:
                self.stats[f"redis_{error_kind(e)}"] += 1
                wait = backoff.failed()
                log.error("redis error (%s: %s); retrying in %.1f s, state kept", type(e).__name__, e, wait)
                stop.wait(wait)
            except Exception:  # a bug: report it loudly, never stop watching the site
                self.stats["internal_error"] += 1
                log.exception("unexpected error in the control loop; retrying")
                stop.wait(backoff.failed())
        if leader:
            try:
                self.lease.release()
            except redis.RedisError:
                pass
        self.leading = False


def _sid(entry_id) -> tuple[int, int]:
    ms, _, seq = text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def error_kind(e: Exception) -> str:
    """A short label for a Redis error (metrics, logs): oom, wrongtype, readonly, …"""
    msg = str(e).split(" ", 1)[0].lower() if str(e) else ""
    if isinstance(e, redis.exceptions.OutOfMemoryError) or msg == "oom":
        return "oom"
    if msg in ("wrongtype", "readonly", "noscript", "loading", "busy", "masterdown", "execabort", "noperm",
               "noauth", "crossslot", "moved", "ask", "tryagain", "clusterdown"):
        return msg
    return type(e).__name__.lower()


def reason_kind(reason: str) -> str:
    """The class of a dead-letter reason for metrics: the field path before the colon, with
    list indexes dropped (``zones[3].count: …`` → ``zones.count``)."""
    import re

    head = reason.split(":", 1)[0]
    return re.sub(r"\[\d+\]", "", head)[:40] or "(record)"
