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

Sent is not yet applied: every record sent is also kept in the spool file's ``sent`` table until
control has applied it — its ``(camera, seq)`` is in ``<p>:obs:seen:<camera>``, which the edge's
own Redis user may read (``ZMSCORE``, that key only). A record still missing when a record sent
after it has been applied was lost between the two: another producer trimmed the shared
stream (``XADD … MAXLEN``, which no Redis ACL can forbid an edge user), a failover or a restart
without persistence dropped it, or control refused it. It is sent again, once (control applies
each ``(camera, seq)`` once); missing after that too, it is counted (``unapplied``) and logged.
Nothing is sent again while control applies nothing (stopped, lagging): the originals are still
in the stream.
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
CONFIRM_EVERY_S = 2.0  # how often the publisher asks which of its sent records control applied
CONFIRM_GRACE_S = 2.0  # a record younger than this is never called missing
CONFIRM_BATCH = 500  # sent records checked per pass (oldest first, plus the newest few)

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
        # sent, not yet known applied by control (see the module's docstring)
        self._db.execute("CREATE TABLE IF NOT EXISTS sent (id INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL,"
                         " seq INTEGER NOT NULL, rec TEXT NOT NULL, at REAL NOT NULL, tries INTEGER NOT NULL)")

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

    # -- sent records awaiting control's confirmation

    def sent_add(self, rows: list[tuple[str, int, str, float, int]]) -> None:
        """(camera, seq, rec, sent at, tries) for records just sent; bounded like the spool."""
        with self._lock:
            self._db.executemany("INSERT INTO sent (camera, seq, rec, at, tries) VALUES (?, ?, ?, ?, ?)", rows)
            over = self._db.execute("SELECT COUNT(*) FROM sent").fetchone()[0] - self.max_records
            if over > 0:  # unconfirmed for so long: control is away; the originals are in the stream
                self._db.execute("DELETE FROM sent WHERE id IN (SELECT id FROM sent ORDER BY id LIMIT ?)", (over,))

    def sent_rows(self, oldest: int, newest: int) -> list[tuple[int, str, int, str, float, int]]:
        """The ``oldest`` and the ``newest`` sent rows (id, camera, seq, rec, at, tries), by id."""
        with self._lock:
            rows = self._db.execute("SELECT id, camera, seq, rec, at, tries FROM sent ORDER BY id LIMIT ?",
                                    (oldest,)).fetchall()
            rows += self._db.execute("SELECT id, camera, seq, rec, at, tries FROM sent WHERE id > ? "
                                     "ORDER BY id DESC LIMIT ?", (rows[-1][0] if rows else 0, newest)).fetchall()
        return sorted(rows)

    def sent_remove(self, ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM sent WHERE id = ?", [(i,) for i in ids])

    def sent_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM sent").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Publisher:
    """XADD observations; spool them while Redis is unreachable and replay them in order."""

    def __init__(self, r: redis.Redis, keys: Keys, spool: Spool, batch: int = 200, retry_s: float = 0.25,
                 max_retry_s: float = 2.0, clock=time.time, signing_key: str | None = None,
                 confirm: bool = True):
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
        self.confirm_enabled = confirm  # keep sent records until control applied them (module docstring)
        self.resent = 0  # records sent again because they went missing before control applied them
        self.unapplied = 0  # records still not applied after that: refused by control, or lost twice
        self._confirm_at = 0.0
        self._unreadable: set[str] = set()  # cameras whose applied set this user may not read
        self._last_applied = 0  # the newest sent row (spool id) control is known to have applied
        # After a failure Redis is tried again only after a backoff: a dead link must not stall
        # the agent for a connect timeout every second.
        self.backoff = Backoff(cap_s=max_retry_s, base_s=retry_s)
        self._retry_at = 0.0

    def _failed(self, e: Exception) -> None:
        self._retry_at = time.monotonic() + self.backoff.failed()

    def _stamp(self, rec: str) -> tuple[str, Observation | None]:
        try:
            obs = decode(Observation, rec)
        except RecordError:
            return rec, None  # sent as it is: control dead-letters it with the reason, nothing vanishes
        return obs.model_copy(update={"sent_at": self.clock()}).encode(), obs

    def _send(self, recs: list[str], tries: int = 0) -> None:
        entries, sent = [], []
        for rec in recs:
            stamped, obs = self._stamp(rec)
            fields = {"rec": stamped}
            if self.signing_key:
                fields["sig"] = sign_record(self.signing_key, stamped)
            entries.append(fields)
            if obs is not None and obs.camera_id not in self._unreadable:
                sent.append((obs.camera_id, obs.seq, rec, time.time(), tries))
        # on a Redis Cluster only what a replica confirmed counts as sent (survives a failover)
        xadd_replicated(self.r, self.keys.obs, entries, maxlen=OBS_MAXLEN)
        if self.confirm_enabled and sent:
            try:
                self.spool.sent_add(sent)
            except sqlite3.Error as e:  # the file is full or broken: these go unchecked, as before
                self._spool_failed(e)

    def confirm(self, force: bool = False) -> int:
        """Ask control's applied sets which sent records arrived; send again, once, those missing
        below an applied one (module docstring). Returns how many were sent again. At most every
        :data:`CONFIRM_EVERY_S` unless ``force``; Redis errors only postpone it."""
        now = time.time()
        if not self.confirm_enabled or (not force and time.monotonic() < self._confirm_at):
            return 0
        self._confirm_at = time.monotonic() + CONFIRM_EVERY_S
        try:
            rows = self.spool.sent_rows(CONFIRM_BATCH, 50)
        except sqlite3.Error as e:
            self._spool_failed(e)
            return 0
        if not rows:
            return 0
        by_camera: dict[str, list] = {}
        for row in rows:
            by_camera.setdefault(row[1], []).append(row)
        pipe = self.r.pipeline(transaction=False)
        for cam, cam_rows in by_camera.items():
            pipe.zmscore(self.keys.obs_seen(cam), [row[2] for row in cam_rows])
        try:
            answers = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:
            log.debug("confirmation deferred: %s", e)
            return 0
        applied, unreadable = set(), []
        for (cam, cam_rows), scores in zip(by_camera.items(), answers):
            if isinstance(scores, redis.exceptions.NoPermissionError):
                # a user made before this check, or a camera that is not this user's: not checkable
                unreadable += [row[0] for row in cam_rows]
                if cam not in self._unreadable:
                    self._unreadable.add(cam)
                    log.warning("this edge's Redis user may not read %s (%s): %s's records lost before control "
                                "applied them are not sent again; re-run `crowdflow edge-users` to allow it",
                                self.keys.obs_seen(cam), scores, cam)
            elif isinstance(scores, Exception):
                log.debug("confirmation deferred: %s", scores)
                return 0
            else:
                applied |= {row[0] for row, score in zip(cam_rows, scores) if score is not None}
        self._last_applied = max(applied | {self._last_applied})
        skip = applied | set(unreadable)
        missing = [row for row in rows if row[0] not in skip and row[0] < self._last_applied
                   and now - row[4] >= CONFIRM_GRACE_S]
        again = [row for row in missing if row[5] == 0]
        given_up = [row for row in missing if row[5] > 0]
        if given_up:
            log.error("%d observations sent twice and never applied (%s seq %s): refused by control (its dead "
                      "letters say why) or lost again", len(given_up), given_up[0][1],
                      ", ".join(str(row[2]) for row in given_up[:10]))
        self.unapplied += len(given_up)
        if again:
            try:
                self._send([row[3] for row in again], tries=1)
            except redis.RedisError as e:
                log.debug("sending missing observations again deferred: %s", e)
                again = []
            else:
                self.resent += len(again)
                log.warning("%d observations sent but never applied by control (seq %s…): sent again; another "
                            "producer may have trimmed the stream", len(again), again[0][2])
        try:
            self.spool.sent_remove(sorted(applied) + unreadable + [row[0] for row in given_up + again])
        except sqlite3.Error as e:
            self._spool_failed(e)
        return len(again)

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
                self.confirm()
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
