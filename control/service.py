"""The control service's Redis shell around :class:`control.zones.ZoneBook`.

Loop: read a batch of observations (consumer group, pending first) → validate → apply →
compute zone states → publish the ones that changed → acknowledge the batch. Once a second at
least (the read blocks for at most that long) states are recomputed, so a zone whose cameras
went quiet turns ``unknown`` on time even when nothing arrives.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable

import redis

from crowdflow.bus import EVENTS_MAXLEN, GroupReader, Keys
from crowdflow.records import Observation, RecordError, ZoneState, decode
from crowdflow.site import Site

from .zones import ZoneBook, site_problem

log = logging.getLogger("crowdflow.control")

GROUP = "control"


def _comparable(s: ZoneState) -> dict:
    d = s.model_dump()
    d.pop("computed_at")
    return d


class ControlService:
    def __init__(
        self,
        site: Site,
        r: redis.Redis,
        keys: Keys,
        consumer: str | None = None,
        stale_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.site = site
        self.r = r
        self.keys = keys
        self.clock = clock
        self.book = ZoneBook(site, stale_after_s if stale_after_s is not None else site.control.stale_after_s)
        self.reader = GroupReader(
            r, keys.obs, GROUP, consumer or f"control-{socket.gethostname()}", keys.obs_dead
        )
        self._published: dict[str, dict] = {}
        self.applied = 0
        self.rejected = 0

    def start(self) -> None:
        self.reader.ensure_group()
        # A restart begins from nothing: every zone is unknown until fresh data arrives.
        self.publish(self.book.states(self.clock()), force=True)

    def step(self, block_ms: int = 1000) -> int:
        """One read-apply-publish-ack cycle. Returns the number of entries handled."""
        entries = self.reader.read(count=1000, block_ms=block_ms)
        for entry_id, fields in entries:
            try:
                obs = decode(Observation, fields.get("rec", ""))
            except RecordError as e:
                self.reader.dead_letter(entry_id, fields, str(e))
                self.rejected += 1
                continue
            problem = site_problem(obs, self.site)
            if problem:
                self.reader.dead_letter(entry_id, fields, problem)
                self.rejected += 1
                continue
            self.book.apply(obs)
            self.applied += 1
        self.publish(self.book.states(self.clock()))
        self.reader.ack([i for i, _ in entries])
        return len(entries)

    def publish(self, states: dict[str, ZoneState], force: bool = False) -> int:
        changed = {
            zid: s for zid, s in states.items() if force or self._published.get(zid) != _comparable(s)
        }
        if not changed:
            return 0
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.zone_state, mapping={zid: s.encode() for zid, s in changed.items()})
        for s in changed.values():
            pipe.xadd(self.keys.events, {"type": "zone", "rec": s.encode()}, maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.execute()
        for zid, s in changed.items():
            self._published[zid] = _comparable(s)
        return len(changed)

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        started = False
        while not stop.is_set():
            try:
                if not started:
                    self.start()
                    started = True
                    log.info("control running: %d zones, %d cameras", len(self.site.zones), len(self.site.cameras))
                self.step()
                backoff = 0.5
            except redis.ConnectionError as e:
                # Keep the in-memory state; unacknowledged entries are re-read after reconnect.
                log.error("redis unreachable (%s); retrying in %.1f s", e, backoff)
                self.reader.replay_pending()
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)
