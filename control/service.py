"""The control service: the Redis shell around the zone book, plan engine and alarm book.

One loop, run only by the instance holding the leader lease:

1. read observations (consumer group, pending first), validate, drop duplicates by camera and
   sequence number (a Redis sorted set per camera, so this survives restarts and failover),
   apply them in capture-time order, and publish the touched zones at once;
2. read commands, answer each exactly once (results are kept by command id);
3. once a second, recompute every zone (staleness), run the plan engine and the alarms, and
   write a 10 s history sample per zone;
4. publish every change (hash + ``<p>:events``), append audit entries, then acknowledge.

A second instance waits for the lease; when the leader dies it takes over within the lease
time (3 s) plus one poll (0.5 s): it restores the plan state from Redis and claims the dead
leader's unacknowledged entries, so nothing is lost and, thanks to the idempotency keys,
nothing is applied twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

import redis

from crowdflow.bus import EVENTS_MAXLEN, HISTORY_MAXLEN, GroupReader, Keys, LeaderLease
from crowdflow.records import (
    Alarm,
    AuditEntry,
    Command,
    CommandResult,
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
from .zones import ZoneBook, site_problem

log = logging.getLogger("crowdflow.control")

GROUP = "control"
FULL_EVERY_S = 1.0
HISTORY_EVERY_S = 10.0
SEEN_KEEP_S = 3 * 3600
# ARGV: prefix, trim-before, then (camera, seq, captured_at) triples → 1 new / 0 duplicate each.
DEDUPE_LUA = """
local out = {}
local trimmed = {}
for i = 3, #ARGV, 3 do
  local key = ARGV[1] .. ':obs:seen:' .. ARGV[i]
  out[#out + 1] = redis.call('ZADD', key, 'NX', ARGV[i + 2], ARGV[i + 1])
  if not trimmed[key] then
    trimmed[key] = true
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  end
end
return out
"""


class ControlService:
    def __init__(self, site: Site, r: redis.Redis, keys: Keys, consumer: str | None = None,
                 stale_after_s: float | None = None, clock: Callable[[], float] = time.time,
                 lease_ms: int = 3000):
        self.site = site
        self.r = r
        self.keys = keys
        self.clock = clock
        self.stale_after_s = stale_after_s if stale_after_s is not None else site.control.stale_after_s
        self.consumer = consumer or f"control-{socket.gethostname()}-{os.getpid()}"
        self.obs_reader = GroupReader(r, keys.obs, GROUP, self.consumer, keys.obs_dead)
        self.cmd_reader = GroupReader(r, keys.cmd, GROUP, self.consumer, keys.cmd_dead)
        self.lease = LeaderLease(r, keys.leader, ttl_ms=lease_ms, instance_id=self.consumer)
        self._dedupe = r.register_script(DEDUPE_LUA)
        self.applied = self.rejected = self.duplicates = 0
        self._reset()

    def _reset(self) -> None:
        self.book = ZoneBook(self.site, self.stale_after_s)
        self.engine = PlanEngine(self.site)
        self.alarms = AlarmBook(self.site)
        self.states: dict[str, ZoneState] = {}
        self._last_full = float("-inf")
        self._last_hist: dict[str, tuple[float, str]] = {}
        self._inforce = None  # the InForce record last published
        self.orders = OrderBook()

    # ------------------------------------------------------------------ start / takeover

    def start(self) -> None:
        """Begin as leader: restore decisions from Redis, claim orphaned work, publish."""
        self._reset()
        for reader in (self.obs_reader, self.cmd_reader):
            reader.ensure_group()
            reader.claim_all()
        plans = {k: decode(PlanState, v) for k, v in self.r.hgetall(self.keys.plan_state).items()}
        recs = {k: decode(Recommendation, v) for k, v in self.r.hgetall(self.keys.recommendations).items()}
        raw_mode = self.r.get(self.keys.mode)
        self.engine.restore(plans, recs, decode(SiteMode, raw_mode) if raw_mode else None)
        self.book.set_actions(self.engine.active_actions())
        self.alarms.restore({k: decode(Alarm, v) for k, v in self.r.hgetall(self.keys.alarms).items()})
        raw_inforce = self.r.get(self.keys.inforce)
        self._inforce = decode(InForce, raw_inforce) if raw_inforce else None
        self.orders.restore({k: decode(Order, v) for k, v in self.r.hgetall(self.keys.orders).items()})
        now = self.clock()
        # A restart begins from nothing: every zone is unknown until fresh data arrives.
        self.states = self.book.states(now)
        pipe = self.r.pipeline(transaction=False)
        self._publish_zones(pipe, self.states)
        for ps in self.engine.plan_states().values():
            self._event(pipe, "plan", ps)
            pipe.hset(self.keys.plan_state, ps.plan_id, ps.encode())
        if raw_mode is None:  # a first start: the site is in normal operation, say so
            mode = SiteMode(mode="normal", since=now, by="system")
            self.engine.mode = mode
            pipe.set(self.keys.mode, mode.encode())
            self._event(pipe, "mode", mode)
        self._publish_inforce(pipe, now)
        pipe.execute()

    # ------------------------------------------------------------------ one cycle

    def step(self, block_ms: int = 100) -> int:
        """One read-apply-publish-ack cycle. Returns the number of stream entries handled."""
        obs_entries = self.obs_reader.read(count=1000, block_ms=block_ms)
        cmd_entries = self.cmd_reader.read(count=100, block_ms=None)
        now = self.clock()
        pipe = self.r.pipeline(transaction=False)
        touched = self._ingest(obs_entries, now)
        if touched:
            fresh = self.book.states(now, touched)
            self.states.update(fresh)
            self._publish_zones(pipe, fresh)
        answered: dict[str, str] = {}
        for entry_id, fields in cmd_entries:
            self._command(pipe, entry_id, fields, now, answered)
        if now - self._last_full >= FULL_EVERY_S:
            self._last_full = now
            # Zones that received nothing are only re-evaluated when they may have gone stale.
            quiet = [zid for zid, s in self.states.items()
                     if s.status == "ok" and s.updated_at is not None and now - s.updated_at > self.stale_after_s]
            if quiet:
                expired = self.book.states(now, quiet)
                self.states.update(expired)
                self._publish_zones(pipe, expired)
            for rec in self.engine.evaluate(now, self.states):
                self.alarms.update_recommendation(now, rec)
            self.alarms.update_zones(now, self.states)
            self._sample_history(pipe, now, self.states)
        if cmd_entries or now == self._last_full:
            self.book.set_actions(self.engine.active_actions())  # cut roads widen their zones
        self._publish_decisions(pipe)
        self._publish_inforce(pipe, now)
        pipe.execute()
        self.obs_reader.ack([i for i, _ in obs_entries])
        self.cmd_reader.ack([i for i, _ in cmd_entries])
        return len(obs_entries) + len(cmd_entries)

    def _ingest(self, entries, now: float) -> set[str]:
        good: list[tuple[str, Observation]] = []
        for entry_id, fields in entries:
            try:
                obs = decode(Observation, fields.get("rec", ""))
            except RecordError as e:
                self.obs_reader.dead_letter(entry_id, fields, str(e))
                self.rejected += 1
                continue
            problem = site_problem(obs, self.site)
            if problem:
                self.obs_reader.dead_letter(entry_id, fields, problem)
                self.rejected += 1
                continue
            good.append((entry_id, obs))
        if not good:
            return set()
        # Idempotency by (camera, seq), in Redis so it holds across restarts and failover: one
        # script call per batch answers, per observation, whether it is new (ZADD NX → 1).
        args = []
        for _, obs in good:
            args += [obs.camera_id, obs.seq, obs.captured_at]
        fresh_flags = self._dedupe(args=[self.keys.prefix, now - SEEN_KEEP_S, *args])
        touched: set[str] = set()
        for (_, obs), new in sorted(zip(good, fresh_flags), key=lambda x: x[0][1].captured_at):
            if not new:
                self.duplicates += 1
                continue
            touched |= self.book.apply(obs, now)
            self.alarms.update_camera(now, obs.camera_id, obs.health)
            self.applied += 1
        return touched

    def _command(self, pipe, entry_id: str, fields: dict, now: float, answered: dict) -> None:
        try:
            cmd = decode(Command, fields.get("rec", ""))
        except RecordError as e:
            self.cmd_reader.dead_letter(entry_id, fields, str(e))
            return
        done = answered.get(cmd.id) or self.r.hget(self.keys.cmd_results, cmd.id)
        if done is not None:  # seen before (a retry or a redelivery): answer again, act once
            self._event(pipe, "command_result", decode(CommandResult, done))
            return
        late = too_late(cmd, now, self.site.control.command_max_age_s)
        if late is not None:
            result, audit = CommandResult(command_id=cmd.id, ok=False, error=late, at=now), [refusal_audit(cmd, now, late)]
        elif cmd.kind == "answer_order":
            error = self.orders.answer(cmd, now)
            result = CommandResult(command_id=cmd.id, ok=error is None, error=error, at=now)
            audit = [refusal_audit(cmd, now, error)] if error else []
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
        answered[cmd.id] = result.encode()
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
        pipe.xadd(self.keys.audit, {"rec": entry.encode()})  # append-only, never trimmed
        self._event(pipe, "audit", entry)

    def _publish_zones(self, pipe, states: dict[str, ZoneState]) -> None:
        if states:
            encoded = {zid: s.encode() for zid, s in states.items()}
            pipe.hset(self.keys.zone_state, mapping=encoded)
            for rec in encoded.values():
                pipe.xadd(self.keys.events, {"type": "zone", "rec": rec}, maxlen=EVENTS_MAXLEN, approximate=True)
            self._sample_history(pipe, states[next(iter(states))].computed_at, states, encoded)

    def _sample_history(self, pipe, now: float, states: dict[str, ZoneState], encoded: dict | None = None) -> None:
        """One sample per zone per 10 s for the 2-hour timeline (spread over time, not bunched),
        and one at every change of status, so live ↔ unknown shows where it happened."""
        for zid, s in states.items():
            last_t, last_status = self._last_hist.get(zid, (float("-inf"), None))
            if now - last_t >= HISTORY_EVERY_S or s.status != last_status:
                self._last_hist[zid] = (now, s.status)
                rec = encoded[zid] if encoded else s.encode()
                pipe.xadd(self.keys.zone_history(zid), {"rec": rec}, maxlen=HISTORY_MAXLEN, approximate=True)

    def _publish_inforce(self, pipe, now: float) -> None:
        """The one record of what is in force (control/inforce.py), on change only."""
        rec = in_force(self.site, self.engine.plan_states(), self.engine.mode, now)
        if not same_measures(self._inforce, rec):
            self.orders.update(self._inforce, rec, now)  # new measures go to their posts' phones
            self._inforce = rec
            pipe.set(self.keys.inforce, rec.encode())
            self._event(pipe, "inforce", rec)
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

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        leader = False
        last_renew = 0.0
        while not stop.is_set():
            try:
                if not leader:
                    if not self.lease.acquire():
                        stop.wait(0.5)
                        continue
                    self.start()
                    leader, last_renew = True, time.monotonic()
                    log.info("control %s leads: %d zones, %d cameras, %d plans", self.consumer,
                             len(self.site.zones), len(self.site.cameras), len(self.site.plans))
                if time.monotonic() - last_renew >= 1.0:
                    if not self.lease.renew():
                        log.warning("control %s lost the lease; standing by", self.consumer)
                        leader = False
                        continue
                    last_renew = time.monotonic()
                self.step()
                backoff = 0.5
            except redis.ConnectionError as e:
                # Unacknowledged entries are re-read after reconnect; decisions are in Redis.
                log.error("redis unreachable (%s); retrying in %.1f s", e, backoff)
                leader = False
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
        if leader:
            try:
                self.lease.release()
            except redis.RedisError:
                pass
