"""Nothing lost: a bounded on-disk spool for observations Redis could not take.

:class:`Spool` is a sqlite3 table (standard library, crash-safe, survives restarts) of
encoded records in arrival order, bounded by ``max_records`` (the oldest are dropped first,
and counted, when a long outage fills it). :class:`Publisher` sends observations to the
stream; while anything is spooled, new observations queue behind it, so the stream receives
them in capture order with their original ``captured_at`` once Redis is back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import redis

from crowdflow.bus import OBS_MAXLEN, Keys
from crowdflow.records import Observation

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

    def __init__(self, r: redis.Redis, keys: Keys, spool: Spool, batch: int = 200, retry_s: float = 1.0,
                 max_retry_s: float = 30.0):
        self.r = r
        self.keys = keys
        self.spool = spool
        self.batch = batch
        self.published = 0
        self.spooled = 0
        self.replayed = 0
        # After a failure Redis is tried again only after a backoff (retry_s doubling up to
        # max_retry_s): a dead link must not stall the agent for a connect timeout every second.
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self._backoff = retry_s
        self._retry_at = 0.0

    def _failed(self, e: Exception) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_retry_s)

    def _send(self, recs: list[str]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for rec in recs:
            pipe.xadd(self.keys.obs, {"rec": rec}, maxlen=OBS_MAXLEN, approximate=True)
        pipe.execute()

    def drain(self) -> bool:
        """Replay spooled records oldest first; True when the spool is empty."""
        while True:
            rows = self.spool.peek(self.batch)
            if not rows:
                return True
            if time.monotonic() < self._retry_at:
                return False
            try:
                self._send([rec for _, rec in rows])
            except redis.RedisError as e:
                log.debug("replay deferred: %s", e)
                self._failed(e)
                return False
            self._backoff = self.retry_s
            self.spool.remove_upto(rows[-1][0])
            self.replayed += len(rows)
            log.info("replayed %d spooled observations (%d left)", len(rows), len(self.spool))

    def publish(self, obs: Observation) -> bool:
        """True when it reached Redis now, False when it was spooled."""
        rec = obs.encode()
        if time.monotonic() >= self._retry_at and self.drain():
            try:
                self._send([rec])
                self.published += 1
                self._backoff = self.retry_s
                return True
            except redis.RedisError as e:
                log.warning("redis unreachable (%s): spooling %s seq %d", e, obs.camera_id, obs.seq)
                self._failed(e)
        self.spool.put(rec)
        self.spooled += 1
        return False
