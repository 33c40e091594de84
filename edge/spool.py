"""Nothing lost: a bounded on-disk spool for observations Redis could not take.

:class:`Spool` is a sqlite3 table (standard library, crash-safe, survives restarts) of
encoded records in arrival order, bounded by ``max_records`` (the oldest are dropped first,
and counted, when a long outage fills it). :class:`Publisher` sends observations to the
stream; while anything is spooled, new observations queue behind it, so the stream receives
them in capture order with their original ``captured_at`` once Redis is back. Each record
gets ``sent_at`` (this gateway's clock) when it is sent, so control can tell a gateway clock that
is off from a record that is merely late.

When the spool itself cannot be written (disk full, read-only, corrupt file), records wait in a
bounded memory queue (:data:`MEMORY_MAX`) and are counted; the agent never stops for it.
Redis is retried with the services' one backoff policy (:class:`crowdflow.bus.Backoff`, capped
at 2 s) so that a zone is live again within seconds of Redis returning.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

import redis

from crowdflow.bus import OBS_MAXLEN, TRANSIENT, Backoff, Keys, sign_record, xadd_replicated
from crowdflow.records import Observation, RecordError, decode

MEMORY_MAX = 10_000  # records held in memory while the spool file cannot be written

log = logging.getLogger("crowdflow.edge.spool")


class Spool:
    def __init__(self, path: str | Path, max_records: int = 100_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, rec TEXT NOT NULL)")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def put(self, rec: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO spool (rec) VALUES (?)", (rec,))
            n = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
            if n > self.max_records:
                over = n - self.max_records
                self._db.execute("DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?)", (over,))
                self.dropped += over
                log.warning("spool full (%d records): dropped the %d oldest", self.max_records, over)

    def peek(self, n: int = 100) -> list[tuple[int, str]]:
        with self._lock:
            return self._db.execute("SELECT id, rec FROM spool ORDER BY id LIMIT ?", (n,)).fetchall()

    def remove_upto(self, last_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM spool WHERE id <= ?", (last_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Publisher:
    """XADD observations; spool them while Redis is unreachable and replay them in order."""

    def __init__(self, r: redis.Redis, keys: Keys, spool: Spool, batch: int = 200, retry_s: float = 0.25,
                 max_retry_s: float = 2.0, clock=time.time, signing_key: str | None = None):
        self.r = r
        self.keys = keys
        self.spool = spool
        self.batch = batch
        self.clock = clock
        self.signing_key = signing_key  # this camera's secret: control checks the records are ours
        self.published = 0
        self.spooled = 0
        self.replayed = 0
        self.memory: deque[str] = deque()  # records waiting while the spool file fails
        self.lost = 0  # records dropped because neither Redis, the spool nor memory could hold them
        self.spool_errors = 0
        # After a failure Redis is tried again only after a backoff: a dead link must not stall
        # the agent for a connect timeout every second.
        self.backoff = Backoff(cap_s=max_retry_s, base_s=retry_s)
        self._retry_at = 0.0

    def _failed(self, e: Exception) -> None:
        self._retry_at = time.monotonic() + self.backoff.failed()

    def _stamp(self, rec: str) -> str:
        try:
            obs = decode(Observation, rec)
        except RecordError:
            return rec  # sent as it is: control dead-letters it with the reason, nothing vanishes
        return obs.model_copy(update={"sent_at": self.clock()}).encode()

    def _send(self, recs: list[str]) -> None:
        entries = []
        for rec in recs:
            rec = self._stamp(rec)
            fields = {"rec": rec}
            if self.signing_key:
                fields["sig"] = sign_record(self.signing_key, rec)
            entries.append(fields)
        # on a Redis Cluster only what a replica confirmed counts as sent (survives a failover)
        xadd_replicated(self.r, self.keys.obs, entries, maxlen=OBS_MAXLEN)

    @property
    def waiting(self) -> int:
        return len(self.spool) + len(self.memory)

    def drain(self) -> bool:
        """Replay spooled records oldest first (the spool file, then the memory queue); True
        when nothing is left."""
        while True:
            try:
                rows = self.spool.peek(self.batch)
            except sqlite3.Error as e:
                self._spool_failed(e)
                rows = []
            source = "spool"
            if not rows:
                if not self.memory:
                    return True
                rows = [(None, rec) for rec in list(self.memory)[: self.batch]]
                source = "memory"
            if time.monotonic() < self._retry_at:
                return False
            try:
                self._send([rec for _, rec in rows])
            except redis.RedisError as e:
                log.debug("replay deferred: %s", e)
                self._failed(e)
                return False
            self.backoff.succeeded()
            if source == "spool":
                self.spool.remove_upto(rows[-1][0])
            else:
                for _ in rows:
                    self.memory.popleft()
            self.replayed += len(rows)
            log.info("replayed %d spooled observations (%d left)", len(rows), self.waiting)

    def _spool_failed(self, e: Exception) -> None:
        self.spool_errors += 1
        if self.spool_errors == 1 or self.spool_errors % 100 == 0:
            log.error("spool %s not writable (%s): holding records in memory (%d)", self.spool.path, e,
                      len(self.memory))

    def _hold(self, rec: str) -> None:
        if not self.memory:
            try:
                self.spool.put(rec)
                return
            except sqlite3.Error as e:
                self._spool_failed(e)
        self.memory.append(rec)
        if len(self.memory) > MEMORY_MAX:
            self.memory.popleft()
            self.lost += 1

    def publish(self, obs: Observation) -> bool:
        """True when it reached Redis now, False when it was spooled."""
        rec = obs.encode()
        if time.monotonic() >= self._retry_at and self.drain():
            try:
                self._send([rec])
                self.published += 1
                self.backoff.succeeded()
                return True
            except redis.RedisError as e:
                if isinstance(e, TRANSIENT):
                    log.warning("redis unreachable (%s): spooling %s seq %d", e, obs.camera_id, obs.seq)
                else:
                    log.error("redis refused an observation (%s): spooling %s seq %d", e, obs.camera_id, obs.seq)
                self._failed(e)
        self._hold(rec)
        self.spooled += 1
        return False
