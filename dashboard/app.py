"""The live map and command console: FastAPI + one WebSocket per client over what control
publishes in Redis.

Reads: the hashes (zone states, plans, recommendations, alarms) and the mode string for a
snapshot, then the one ``<p>:events`` stream for every change. Writes: only Commands, to
``<p>:cmd``; each HTTP command request waits for control's ``command_result`` event.
Every route but ``/api/login`` and the static page needs a session; commands need a role.
"""

from __future__ import annotations

import asyncio
import copy
import contextlib
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Literal

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import EqualJitterBackoff
import xstatic.pkg.leaflet as xleaflet
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi import Path as FPath
from limits.errors import StorageError as LimitsStorageError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, create_model

from crowdflow.bus import CMD_MAXLEN, Backoff, Keys, connect_async
from crowdflow.dispatch import summarise
from crowdflow.site.partitions import camera_partition, partition_keys, plan_partition, zone_partition
from crowdflow.records import (
    EVENT_TYPES,
    Alarm,
    AuditEntry,
    Command,
    CommandResult,
    HoldState,
    InForce,
    Order,
    PlanState,
    Recommendation,
    RecordError,
    SiteMode,
    ZoneState,
    as_of,
    decode,
    hold_as_of,
    merge_in_force,
)
from crowdflow.site import Site
from crowdflow.vocab import COMMAND_FIELDS, COMMAND_ROLE

from .auth import COOKIE, Session, dummy_hash, load_users, role_at_least, verify_password
from .basemap import BasemapError, basemap_path, load_basemap
from .security import (
    STATE_CHANGING, CommandGuard, LoginGuard, RequestView, SessionStore, document_api, limits_storage, origin_allowed,
    parse_networks,
)
from .geo import site_geojson
from .metrics import DashboardMetrics

log = logging.getLogger("crowdflow.dashboard")
STATIC = Path(__file__).parent / "static"
CLIENT_QUEUE = 256  # messages a client may lag behind before it is dropped (it then resyncs)
HISTORY_MAX_MIN = 120  # the timeline shows at most the last 2 hours (what control keeps)
AUDIT_SCAN = 5000  # newest audit entries searched by one filtered query
SESSION_RECHECK_S = 15.0  # an open /ws re-checks its session this often (a logout elsewhere ends it)
# What one WebSocket frame carries at most: the messages already queued for a client go out
# together as {"type":"batch","items":[...]} (one send instead of one per zone). 1 = every
# message its own frame (the benchmark's baseline, scripts/bench_dashboard.py).
WS_BATCH_MAX, WS_BATCH_CHARS = 256, 256 * 1024
KEEP_RECS, KEEP_ALARMS, KEEP_ORDERS = 200, 500, 500  # what a dashboard holds at most (control keeps "open and recent")



# The fields of a zone state's JSON that change without the state changing (what was shown)
VOLATILE = re.compile(r'"(?:computed_at|reason)":(?:"(?:[^"\\]|\\.)*"|[^,}]*)')


class ZoneStore:
    """The dashboard's view of zone states, with its own staleness rule applied."""

    def __init__(self, site: Site, stale_after_s: float):
        self.site = site
        self.stale_after_s = stale_after_s
        self._raw: dict[str, ZoneState] = {}

    def put(self, state: ZoneState) -> None:
        if state.zone_id in self.site.zone_by_id:
            self._raw[state.zone_id] = state

    def get(self, zone_id: str, now: float) -> ZoneState:
        s = self._raw.get(zone_id)
        if s is None:
            zone = self.site.zone_by_id[zone_id]
            return ZoneState(zone_id=zone_id, status="unknown", reason="no state from control yet",
                             capacity=zone.capacity, computed_at=now)
        return as_of(s, now, self.stale_after_s)

    def all(self, now: float) -> list[ZoneState]:
        return [self.get(z.id, now) for z in self.site.zones]

    def expiring(self, now: float) -> list[str]:
        """The zones whose shown state turns with time alone: live in the store, older than
        the staleness limit at ``now`` (:func:`as_of` shows them unknown)."""
        limit = now - self.stale_after_s
        return [zid for zid, s in self._raw.items()
                if s.status == "ok" and s.updated_at is not None and s.updated_at < limit]


class LiveState:
    """Everything the screen shows, as control last published it (pure; no I/O)."""

    def __init__(self, site: Site, stale_after_s: float):
        self.zones = ZoneStore(site, stale_after_s)
        self.plans: dict[str, PlanState] = {}
        self.recs: dict[str, Recommendation] = {}
        self.alarms: dict[str, Alarm] = {}
        self.mode: SiteMode | None = None
        self.inforce: InForce | None = None  # every partition's, merged (merge_in_force)
        self.inforce_by: dict[str, InForce] = {}  # partition → its own in-force record
        self.orders: dict[str, Order] = {}
        self.holding_areas = {h.id: h for h in site.holding_areas}
        self.holds: dict[str, HoldState] = {}  # holding area → as control last published it

    def apply(self, rec, part: str = "") -> None:
        if isinstance(rec, ZoneState):
            self.zones.put(rec)
        elif isinstance(rec, PlanState):
            self.plans[rec.plan_id] = rec
        elif isinstance(rec, Recommendation):
            self.recs[rec.id] = rec
            _bound(self.recs, KEEP_RECS, lambda x: (x.status == "pending", x.created_at))
        elif isinstance(rec, Alarm):
            self.alarms[rec.id] = rec
            _bound(self.alarms, KEEP_ALARMS, lambda x: (x.cleared_at is None, x.raised_at))
        elif isinstance(rec, SiteMode):
            self.mode = rec
        elif isinstance(rec, InForce):
            self.inforce_by[part] = rec
            self.inforce = merge_in_force(self.inforce_by.values())
        elif isinstance(rec, Order):
            self.orders[rec.id] = rec
            _bound(self.orders, KEEP_ORDERS, lambda x: (x.status in ("sent", "acknowledged"), x.issued_at))
        elif isinstance(rec, HoldState):
            if rec.hold_id in self.holding_areas:
                self.holds[rec.hold_id] = rec

    def hold(self, hold_id: str, now: float) -> HoldState:
        """A holding area's count as the screen shows it at ``now``: a count past its age limit
        is unknown (:func:`hold_as_of`, so a silent control never leaves it live), and a pen
        control has not published yet is unknown too, never an empty or zero count."""
        s = self.holds.get(hold_id)
        if s is None:
            h = self.holding_areas[hold_id]
            return HoldState(hold_id=h.id, gate_id=h.gate, zone_id=h.zone, status="unknown",
                             reason="no count from control yet", area_m2=h.area_m2, computed_at=now)
        return hold_as_of(s, now)

    def all_holds(self, now: float) -> list[HoldState]:
        """Every holding area of the site, in the site file's order."""
        return [self.hold(hid, now) for hid in self.holding_areas]

    def expiring_holds(self, now: float) -> list[str]:
        """The holding areas whose count is live in the store but past its age limit at ``now``."""
        return [hid for hid, s in self.holds.items() if s.status == "ok" and hold_as_of(s, now) is not s]

    def clear_decisions(self) -> None:
        """Before a fresh snapshot: control may have pruned old entries from its hashes."""
        self.plans.clear()
        self.recs.clear()
        self.alarms.clear()
        self.mode = None
        self.inforce = None
        self.inforce_by.clear()
        self.orders.clear()
        self.holds.clear()

    def snapshot(self, now: float) -> dict:
        return {
            "type": "snapshot",
            "at": now,
            "zones": [s.model_dump() for s in self.zones.all(now)],
            "plans": [p.model_dump() for p in self.plans.values()],
            "recommendations": sorted((r.model_dump() for r in self.recs.values()), key=lambda d: -d["created_at"]),
            "alarms": sorted((a.model_dump() for a in self.alarms.values()), key=lambda d: -d["raised_at"]),
            "mode": self.mode.model_dump() if self.mode else None,
            "inforce": self.inforce.model_dump() if self.inforce else None,
            "orders": sorted((o.model_dump() for o in self.orders.values()), key=lambda d: -d["issued_at"]),
            "holds": [h.model_dump() for h in self.all_holds(now)],
        }


def _bound(d: dict, keep: int, rank) -> None:
    """Drop the lowest-ranked entries (decided/cleared, oldest) beyond ``keep``."""
    if len(d) > keep:
        for k in sorted(d, key=lambda k: rank(d[k]))[: len(d) - keep]:
            del d[k]


class Hub:
    """Fan-out to WebSocket clients; a client that falls behind is dropped, never waited for."""

    def __init__(self, queue: int = CLIENT_QUEUE):
        self.clients: set[asyncio.Queue] = set()
        self.dropped = 0
        self.queue = queue

    def add(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=self.queue)
        self.clients.add(q)
        return q

    def remove(self, q: asyncio.Queue) -> None:
        self.clients.discard(q)

    def broadcast(self, message: str) -> None:
        for q in list(self.clients):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:
                self.clients.discard(q)
                self.dropped += 1
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)  # tells the sender to close; the client reconnects


def take_queued(q: asyncio.Queue, first: str) -> tuple[str, bool]:
    """One WebSocket frame: ``first`` and the messages already queued behind it, in order, at
    most :data:`WS_BATCH_MAX` of them and about :data:`WS_BATCH_CHARS`; more than one go out
    as ``{"type":"batch","items":[...]}``, joined as encoded (never decoded again). The flag
    says the hub's close sentinel (``None``, client too slow) came next: send, then close."""
    items, size = [first], len(first)
    while len(items) < WS_BATCH_MAX and size < WS_BATCH_CHARS and not q.empty():
        msg = q.get_nowait()
        if msg is None:
            return _frame(items), True
        items.append(msg)
        size += len(msg)
    return _frame(items), False


def _frame(items: list[str]) -> str:
    return items[0] if len(items) == 1 else '{"type":"batch","items":[' + ",".join(items) + "]}"


def _msg(kind: str, rec) -> str:
    return json.dumps({"type": kind, "rec": rec.model_dump()}, ensure_ascii=False)


def _command_request_model() -> type[BaseModel]:
    """The console's command request, derived from :class:`Command`: the same fields and
    checks, less what the session says (``user``, ``role``, ``post``) and the schema version. ``id``
    and ``issued_at`` are made by the client — a retried request carries the same id and
    acts once; without them (scripts) the dashboard mints them, and a retry acts again."""
    fields = {}
    for name, f in Command.model_fields.items():
        if name in ("v", "user", "role", "post"):
            continue
        if name in ("id", "issued_at"):
            f = copy.copy(f)  # same constraints, but optional
            f.default = None
            fields[name] = (f.annotation | None, f)
        else:
            fields[name] = (f.annotation, f)
    # Strict like the Command record itself: ``"auto": 0`` or ``"level": 3`` is refused, not coerced.
    return create_model("CommandRequest", __config__=ConfigDict(extra="forbid", strict=True), **fields)


CommandRequest = _command_request_model()
MAX_CLIENT_AHEAD_S = 300  # a command dated further ahead of the server's clock is refused


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


def _in(host: str, net) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host) in net
    except ValueError:
        return False


def create_app(site: Site, redis_url: str, keys: Keys, stale_after_s: float | None = None,
               config_dir: Path | None = None) -> FastAPI:
    cfg = site.dashboard
    basemap: dict = {}
    bm_path = basemap_path(site, config_dir if config_dir is not None else Path.cwd())
    if bm_path is not None:
        try:
            basemap = load_basemap(site, bm_path)
            log.info("basemap %s: %d features", bm_path, len(basemap["features"]))
        except BasemapError as e:
            basemap = {"error": str(e)}
            log.warning("no basemap: %s", e)
    stale = stale_after_s if stale_after_s is not None else site.control.stale_after_s
    state = LiveState(site, stale)
    store = state.zones
    hub = Hub(max(CLIENT_QUEUE, 2 * len(site.zones) + 64))  # one sweep of every zone fits (staleness)
    users = load_users(site)
    if not users:
        log.warning("no dashboard users: nobody can log in (dashboard.users or CROWDFLOW_USERS; "
                    "make hashes with `crowdflow hash-password`)")
    trusted = parse_networks(cfg.trusted_proxies)
    limits_store = limits_storage(redis_url, keys.prefix)
    guard = LoginGuard(redis_url, keys.prefix, cfg.login_attempts_per_min, storage=limits_store)
    command_guard = CommandGuard(limits_store, cfg.commands_per_min)
    decoy = dummy_hash()  # unknown users cost one scrypt too: names cannot be told apart by time
    waiting: dict[str, asyncio.Future] = {}  # command id → future of its CommandResult
    zone_raw: dict[str, tuple[ZoneState, str]] = {}  # zone → (last record from an event, its JSON)
    hold_unknown: set[str] = set()  # holding areas whose count went stale here and was sent as unknown
    geojson = {"wgs84": site_geojson(site, "wgs84"), "gcj02": site_geojson(site, "gcj02")}
    clients: dict[str, aioredis.Redis] = {}
    # Partitions (docs/scaling.md): the dashboard reads and follows every one; an unpartitioned
    # site is the one partition "" under ``keys``.
    parts = partition_keys(site, keys)
    first_part = next(iter(parts))
    zone_part, plan_part, cam_part = zone_partition(site), plan_partition(site), camera_partition(site)

    def keys_of_zone(zone_id: str) -> Keys:
        return parts.get(zone_part.get(zone_id, first_part), parts[first_part])

    def command_partitions(cmd: Command) -> list[str]:
        """Where a command goes: the partition of its plan area (set_mode: every partition;
        report_queue: the partition of the holding area's zone, whose worker keeps its counts)."""
        if cmd.kind == "set_mode" or len(parts) == 1:
            return list(parts)
        if cmd.kind == "report_queue":
            h = state.holding_areas.get(cmd.hold_id or "")
            pid = zone_part.get(h.zone) if h is not None else None
            return [pid if pid in parts else first_part]  # unknown: refused there, with the reason
        plan = cmd.plan_id
        if cmd.recommendation_id and cmd.recommendation_id in state.recs:
            plan = state.recs[cmd.recommendation_id].plan_id
        pid = plan_part.get(plan or "")
        alarm = state.alarms.get(cmd.alarm_id or "")
        if alarm is not None:
            pid = plan_part.get(alarm.plan_id or "") or zone_part.get(alarm.zone_id or "") or \
                cam_part.get(alarm.camera_id or "")
        return [pid if pid in parts else first_part]  # unknown: refused there, with the reason

    async def load_snapshot(r: aioredis.Redis) -> dict[str, str]:
        """Read every hash and the mode of every partition; return the events id to follow from
        per partition (taken first)."""
        last_ids = {}
        for pid, k in parts.items():
            last_ids[pid] = "0-0"
            if await r.exists(k.events):
                last_ids[pid] = (await r.xinfo_stream(k.events))["last-generated-id"]
        state.clear_decisions()
        for pid, k in parts.items():
            for key, cls in ((k.zone_state, ZoneState), (k.plan_state, PlanState),
                             (k.recommendations, Recommendation), (k.alarms, Alarm), (k.hold_state, HoldState)):
                for field, raw in (await r.hgetall(key)).items():
                    try:
                        state.apply(decode(cls, raw))
                    except RecordError as e:
                        log.warning("bad %s[%s]: %s", key, field, e)
            raw = await r.get(k.mode)
            if raw:
                try:
                    state.apply(decode(SiteMode, raw))
                except RecordError as e:
                    log.warning("bad %s: %s", k.mode, e)
            # the in-force record and the orders: per partition; the screen shows every
            # partition's measures merged (LiveState.inforce)
            raw = await r.get(k.inforce)
            if raw:
                try:
                    state.apply(decode(InForce, raw), part=pid)
                except RecordError as e:
                    log.warning("bad %s: %s", k.inforce, e)
            for field, raw in (await r.hgetall(k.orders)).items():
                try:
                    state.apply(decode(Order, raw))
                except RecordError as e:
                    log.warning("bad %s[%s]: %s", k.orders, field, e)
        return last_ids

    def handle(entry_id: str, fields: dict, part: str = "") -> None:
        kind = fields.get("type")
        cls = EVENT_TYPES.get(kind)
        if cls is None:
            log.warning("event %s: unknown type %r", entry_id, kind)
            return
        try:
            rec = decode(cls, fields.get("rec", ""))
        except RecordError as e:
            log.warning("event %s (%s): %s", entry_id, kind, e)
            return
        if isinstance(rec, CommandResult):
            fut = waiting.get(rec.command_id)
            if fut is not None and not fut.done():
                # a command sent to several partitions (set_mode) is done when all answered;
                # a refusal by any of them is the answer
                fut.answers.append(rec)
                if not rec.ok or len(fut.answers) >= fut.expected:
                    fut.set_result(rec)
            return
        state.apply(rec, part)
        if isinstance(rec, ZoneState):  # control's own encoding, sent on as it came while live
            zone_raw[rec.zone_id] = (rec, fields["rec"])
        if isinstance(rec, InForce):  # what every partition has in force, not this one's alone
            rec = state.inforce
        if isinstance(rec, HoldState):  # as shown now (hold_as_of): a count already too old arrives unknown
            if rec.hold_id not in state.holding_areas:
                return None
            shown = state.hold(rec.hold_id, time.time())
            (hold_unknown.add if shown is not rec else hold_unknown.discard)(rec.hold_id)
            rec = shown
        if not isinstance(rec, ZoneState):  # zones go out below, after staleness is applied
            hub.broadcast(_msg(kind, rec))
        return rec

    async def follow(r: aioredis.Redis) -> None:
        """Load the snapshot, then follow the events stream of every partition (one reader
        each: a cluster refuses an XREAD across slots); resync after any Redis error."""
        shown: dict[str, str] = {}
        first = True
        backoff = Backoff(cap_s=2.0)  # the services' one policy (crowdflow.bus)
        last_sweep = [0.0]
        sweep_all = [True]  # the next sweep looks at every zone (set again after each snapshot)

        def push_holds() -> None:
            """Once a second: a holding area's count that passed its age limit with no word from
            control (control down, or its report lost) goes out as unknown, once."""
            now = time.time()
            for hid in state.expiring_holds(now):
                if hid not in hold_unknown:
                    hold_unknown.add(hid)
                    hub.broadcast(_msg("hold", state.hold(hid, now)))

        def push_zones(touched: set[str]) -> None:
            """Send the zones whose shown state changed: those in the events just read and, once
            a second, the zones that went stale meanwhile (every zone after a fresh snapshot, and
            the zones never sent). A scan of all zones per batch would cost O(zones) per event
            batch: at 10,000 cameras that alone saturated a core; serialising every zone once a
            second held the event loop for tens of milliseconds, the latency's tail."""
            now = time.time()
            ids = touched
            if now - last_sweep[0] >= 1.0:
                last_sweep[0] = now
                push_holds()
                if sweep_all[0] or len(shown) < len(site.zones):
                    sweep_all[0] = False
                    ids = [z.id for z in site.zones]
                else:
                    ids = set(touched).union(store.expiring(now))
            for zid in ids:
                if zid not in site.zone_by_id:
                    continue
                s = store.get(zid, now)
                hit = zone_raw.get(zid)
                if hit is not None and hit[0] is s:
                    # Live (not stale here): the record as control encoded it, with the same
                    # encoder; re-serialising it twice (key and message) was most of the
                    # follower's CPU per zone event, after decoding.
                    raw = hit[1]
                    key = VOLATILE.sub("", raw)
                else:
                    raw = None
                    key = s.model_dump_json(exclude={"computed_at", "reason"})
                if shown.get(zid) != key:
                    shown[zid] = key
                    app.state.metrics.send_lag.observe(max(0.0, now - s.computed_at))
                    hub.broadcast('{"type":"zone","state":' + (raw or s.model_dump_json()) + "}")

        async def read(pid: str, k: Keys, last_id: str) -> None:
            while True:
                resp = await r.xread({k.events: last_id}, count=500, block=1000)
                touched: set[str] = set()
                for _, entries in resp or []:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        rec = handle(entry_id, fields, pid)
                        if isinstance(rec, ZoneState):
                            touched.add(rec.zone_id)
                push_zones(touched)

        while True:
            try:
                last_ids = await load_snapshot(r)
                sweep_all[0] = True  # the snapshot changed zones without events
                hold_unknown.clear()  # the snapshot (sent as shown now) carries every count
                if not first:  # clients may have missed changes while Redis was away
                    hub.broadcast(json.dumps(state.snapshot(time.time()), ensure_ascii=False))
                first = False
                backoff.succeeded()
                async with asyncio.TaskGroup() as tg:  # one reader fails: all resync
                    for pid, k in parts.items():
                        tg.create_task(read(pid, k, last_ids[pid]))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down or restarting: keep serving, retry
                if isinstance(e, BaseExceptionGroup):
                    e = e.exceptions[0]
                wait = backoff.failed()
                log.error("event follower: %s; retrying in %.1f s", e, wait)
                await asyncio.sleep(wait)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # The same policy as the services (crowdflow.bus.command_retry): a reset connection after a
        # Redis restart is retried, never an "Exception in ASGI application". A cluster URL gives
        # redis.asyncio.RedisCluster (crowdflow.bus.connect_async).
        retry = dict(retry=AsyncRetry(EqualJitterBackoff(cap=0.5, base=0.05), 2),
                     retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        follow_r = connect_async(redis_url, **retry)
        clients["r"] = connect_async(redis_url, socket_timeout=5, **retry)
        clients["sessions"] = SessionStore(clients["r"], keys.prefix, cfg.session_ttl_s)
        task = asyncio.create_task(follow(follow_r))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await follow_r.aclose()
            await clients["r"].aclose()

    app = FastAPIOffline(title="Crowdflow dashboard", version="0.2.0", lifespan=lifespan, redoc_url=None,
                         description="The live map and command console of the Hongyadong crowd-flow "
                                     "system. Log in with POST /api/login; the session cookie (or "
                                     "`Authorization: Bearer <token>`) authorises the rest.")
    app.state.store = store
    app.state.live = state
    app.state.hub = hub
    app.state.refused_logins = 0
    app.state.redis_errors = 0
    metrics = app.state.metrics = DashboardMetrics(app)

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        peer = request.client.host if request.client else None
        if peer not in ("127.0.0.1", "::1", "testclient") and not any(
                peer and _in(peer, n) for n in trusted):
            raise HTTPException(403, "metrics are for the site's own scraper")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")
    document_api(app, public={"/api/login", "/api/logout"}, command_model=CommandRequest)

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(LimitsStorageError)  # the rate limits' Redis (same server) unreachable
    async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("redis error on %s %s: %s", request.method, request.url.path, exc)
        app.state.redis_errors += 1
        return JSONResponse({"detail": "Redis is unreachable; retry shortly"}, status_code=503,
                            headers={"Retry-After": "2"})

    @app.middleware("http")
    async def same_origin(request: Request, call_next):
        # A browser page from elsewhere must not act with the user's cookie (CSRF).
        if request.method in STATE_CHANGING and not origin_allowed(
                request.headers.get("origin"), RequestView.of(request, trusted), cfg.allowed_origins):
            return JSONResponse({"detail": f"Origin {request.headers.get('origin')!r} is not this dashboard"},
                                status_code=403)
        return await call_next(request)

    # ------------------------------------------------------------------ sessions and roles

    def token_of(request) -> str | None:
        token = request.cookies.get(COOKIE)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        return token

    async def session_of(request) -> Session | None:
        return await clients["sessions"].check(token_of(request), users)

    def require(role: str):
        async def dep(request: Request) -> Session:
            s = await session_of(request)
            if s is None:
                raise HTTPException(401, "not logged in or session expired")
            if not role_at_least(s.role, role):
                raise HTTPException(403, f"needs role {role}; {s.user} is {s.role}")
            return s
        return dep

    viewer = Depends(require("viewer"))
    from . import whatif as _whatif  # what-if panel (issue 11): its own module, its own routes

    _whatif.mount(app, site, state, viewer)

    @app.post("/api/login", tags=["session"])
    async def login(body: LoginRequest, request: Request, response: Response) -> dict:
        """Start a session (cookie ``cf_session``; the token is also returned for scripts).
        Failed attempts are limited, shared by every dashboard instance, per user name and
        address, per address, per user name and overall (429 with Retry-After; the limit lifts
        by itself when its minute has passed). Unknown names cost the same as wrong passwords."""
        view = RequestView.of(request, trusted)
        wait, which = await guard.retry_after(body.username, view.client)
        if wait > 0:
            raise HTTPException(429, f"too many failed logins ({which}); try again in {wait:.0f} s",
                                headers={"Retry-After": str(int(wait) + 1)})
        u = users.get(body.username)
        ok = await asyncio.to_thread(verify_password, body.password, u.password_hash if u else decoy)
        if u is None or not ok:
            await guard.failed(body.username, view.client)
            app.state.refused_logins += 1
            log.warning("refused login for %r from %s", body.username[:64], view.client)
            raise HTTPException(401, "wrong user name or password")
        await guard.succeeded(body.username, view.client)
        token, s = await clients["sessions"].issue(u)
        secure = cfg.cookie_secure if cfg.cookie_secure is not None else view.scheme == "https"
        response.set_cookie(COOKIE, token, max_age=int(cfg.session_ttl_s), httponly=True, samesite="strict",
                            secure=secure)
        return {"user": s.user, "role": s.role, "post": s.post, "expires_at": s.expires_at, "token": token}

    @app.post("/api/logout", tags=["session"])
    async def logout(request: Request, response: Response) -> dict:
        """End this session everywhere at once (it is deleted in Redis, not just forgotten here)."""
        revoked = await clients["sessions"].revoke(token_of(request))
        response.delete_cookie(COOKIE)
        return {"ok": True, "revoked": revoked}

    @app.get("/api/me", tags=["session"])
    def me(s: Session = viewer) -> dict:
        """Who this session is: user, role, post, expiry."""
        return {"user": s.user, "role": s.role, "post": s.post, "expires_at": s.expires_at}

    # ------------------------------------------------------------------ reading

    @app.get("/api/site", tags=["read"])
    def get_site(s: Session = viewer) -> dict:
        """Site geometry as GeoJSON (zones, cameras, roads, gates, posts, basemap), names in
        zh/en, plus the plans' action catalogue and the optional tile layer. Coordinates are
        in the tiles' datum (WGS84 unless ``dashboard.tiles.datum`` is gcj02)."""
        return geojson[cfg.tiles.datum if cfg.tiles else "wgs84"]

    @app.get("/api/basemap", tags=["read"])
    def get_basemap(s: Session = viewer) -> dict:
        """The OSM basemap near the site (streets, footways, steps, buildings, metro), with
        its attribution; 404 saying why when the site has none or its file is unusable."""
        if not basemap or "error" in basemap:
            raise HTTPException(404, basemap.get("error") or "no basemap configured (dashboard.basemap_file)")
        return basemap

    @app.get("/api/orders", tags=["read"])
    def get_orders(s: Session = viewer) -> dict:
        """Orders sent to posts with their answers (newest first), and per evening the
        dispatch response: confirmation → in place (median, 90th percentile)."""
        orders = sorted(state.orders.values(), key=lambda o: -o.issued_at)
        return {"orders": [o.model_dump() for o in orders],
                "summary": summarise(orders, site.site.timezone)}

    @app.get("/api/zones", tags=["read"])
    def get_zones(s: Session = viewer) -> list[dict]:
        """Every configured zone's current state; no fresh data means status ``unknown``."""
        return [z.model_dump() for z in store.all(time.time())]

    @app.get("/api/holds", tags=["read"])
    def get_holds(s: Session = viewer) -> list[HoldState]:
        """Every holding area's queue count (queue pens behind a metering, metro concourses), as
        reported with ``report_queue``: people, density in p/m² of the pen, when and by whom.
        A count older than the limit (``crowdflow.records.HOLD_STALE_S``), or none at all, is
        status ``unknown`` with the reason and the last count (``last_people``, ``last_at``)."""
        return state.all_holds(time.time())

    @app.get("/api/state", tags=["read"])
    def get_state(s: Session = viewer) -> dict:
        """The full snapshot the WebSocket sends first: zones, plans, recommendations, alarms, mode,
        measures in force, orders and holding areas' queue counts."""
        return state.snapshot(time.time())

    @app.get("/api/zones/{zone_id}/history", tags=["read"])
    async def zone_history(zone_id: str, minutes: float = Query(HISTORY_MAX_MIN, gt=0, le=HISTORY_MAX_MIN),
                           s: Session = viewer) -> dict:
        """The zone's timeline (one sample per 10 s from ``<p>:zone:hist:<zone>``) over the last
        ``minutes``, and control's forecast from its current state."""
        if zone_id not in site.zone_by_id:
            raise HTTPException(404, f"no zone {zone_id!r} in the site config")
        start = int((time.time() - minutes * 60) * 1000)
        entries = await clients["r"].xrange(keys_of_zone(zone_id).zone_history(zone_id), min=start, max="+")
        samples = []
        for entry_id, fields in entries:
            try:
                z = decode(ZoneState, fields.get("rec", ""))
            except RecordError as e:
                log.warning("history %s %s: %s", zone_id, entry_id, e)
                continue
            samples.append({"t": z.updated_at if z.status == "ok" and z.updated_at else z.computed_at,
                            "status": z.status, "count": z.count, "capacity_ratio": z.capacity_ratio,
                            "density": z.density})
        now = time.time()
        cur = store.get(zone_id, now)
        return {"zone_id": zone_id, "capacity": cur.capacity, "now": now, "samples": samples,
                "current": cur.model_dump(),
                "forecast": [f.model_dump() for f in cur.forecast] if cur.status == "ok" else []}

    @app.get("/api/audit", tags=["read"])
    async def audit(q: str | None = Query(None, description="text anywhere in actor, action, plan, level or reason"),
                    actor: str | None = None, action: str | None = None, plan_id: str | None = None,
                    limit: int = Query(100, ge=1, le=1000), s: Session = viewer) -> list[dict]:
        """The decision log (``<p>:audit``), newest first, filtered."""
        entries = []
        for k in parts.values():  # every partition's log, merged newest first
            entries += await clients["r"].xrevrange(k.audit, max="+", min="-", count=AUDIT_SCAN)
        if len(parts) > 1:
            entries.sort(key=lambda e: tuple(int(x) for x in e[0].split("-")), reverse=True)
        out = []
        needle = q.lower() if q else None
        for entry_id, fields in entries:
            try:
                a = decode(AuditEntry, fields.get("rec", ""))
            except RecordError as e:
                log.warning("audit %s: %s", entry_id, e)
                continue
            if actor and a.actor != actor or action and a.action != action or plan_id and a.plan_id != plan_id:
                continue
            if needle and needle not in " ".join(str(x) for x in (a.actor, a.role, a.action, a.plan_id, a.level_from,
                                                                   a.level_to, a.reason, a.recommendation_id)).lower():
                continue
            out.append(a.model_dump())
            if len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------------ commanding

    @app.post("/api/commands", tags=["command"],
              responses={200: {"description": "control applied it"}, 400: {"description": "malformed"},
                         403: {"description": "role too low; nothing is written"},
                         409: {"description": "control refused it (error says why)"},
                         429: {"description": "too many commands (per user, address or overall); see Retry-After"},
                         504: {"description": "control did not answer in time"}})
    async def command(body: CommandRequest, request: Request, s: Session = viewer) -> JSONResponse:
        """Send a command to control and wait for its answer. ``confirm``/``reject``/
        ``override``/``set_auto``/``set_mode`` need a commander, ``ack_alarm`` an operator."""
        needed = COMMAND_ROLE[body.kind]
        if not role_at_least(s.role, needed):
            raise HTTPException(403, f"{body.kind} needs role {needed}; {s.user} is {s.role}")
        missing = [f for f in COMMAND_FIELDS[body.kind] if getattr(body, f) is None]
        if missing:
            raise HTTPException(400, f"{body.kind} needs {', '.join(missing)}")
        now = time.time()
        if body.issued_at is not None and body.issued_at > now + MAX_CLIENT_AHEAD_S:
            raise HTTPException(409, f"issued_at: {body.issued_at - now:.3g} s ahead of the server's clock; "
                                     "check the device's time")
        fields = body.model_dump()
        fields["id"] = fields["id"] or uuid.uuid4().hex
        fields["issued_at"] = fields["issued_at"] or now
        try:
            cmd = decode(Command, {"v": 1, **fields, "user": s.user, "role": s.role, "post": s.post})
        except RecordError as e:
            raise HTTPException(400, str(e)) from None
        wait, which = await command_guard.take(s.user, RequestView.of(request, trusted).client)
        if wait > 0:
            raise HTTPException(429, f"too many commands ({which}); try again in {wait:.0f} s",
                                headers={"Retry-After": str(int(wait) + 1)})
        targets = command_partitions(cmd)
        fut = waiting.get(cmd.id)  # a retry while the first request still waits shares its answer
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            fut.expected, fut.answers = len(targets), []
            waiting[cmd.id] = fut
        try:
            for pid in targets:
                await clients["r"].xadd(parts[pid].cmd, {"rec": cmd.encode()}, maxlen=CMD_MAXLEN, approximate=True)
            log.info("command %s %s by %s (%s)", cmd.id, cmd.kind, s.user, s.role)
            try:
                res: CommandResult = await asyncio.wait_for(asyncio.shield(fut), cfg.command_timeout_s)
            except asyncio.TimeoutError:
                return JSONResponse({"command_id": cmd.id, "ok": None,
                                     "error": f"control did not answer within {cfg.command_timeout_s:g} s; "
                                              f"the command stays queued in "
                                              f"{', '.join(parts[p].cmd for p in targets)}"}, status_code=504)
        finally:
            waiting.pop(cmd.id, None)
        return JSONResponse(res.model_dump(), status_code=200 if res.ok else 409)

    @app.get("/api/commands/{command_id}", tags=["command"])
    async def command_result(command_id: str = FPath(min_length=8, max_length=64), s: Session = viewer) -> dict:
        """Control's answer to a command (kept an hour): what ``POST /api/commands`` answered,
        or will answer, e.g. after a 504. A command sent to several partitions is refused
        when any refused it. 404 while not answered yet, or once the hour has passed."""
        answers = []
        for k in parts.values():
            raw = await clients["r"].hget(k.cmd_results, command_id)
            if raw is not None:
                try:
                    answers.append(decode(CommandResult, raw))
                except RecordError as e:
                    log.warning("stored result of command %s: %s", command_id, e)
        if not answers:
            raise HTTPException(404, f"no answer to command {command_id!r}: not answered yet, or over an hour old")
        refused = [a for a in answers if not a.ok]
        return (refused[0] if refused else max(answers, key=lambda a: a.at)).model_dump()

    # ------------------------------------------------------------------ live push

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"ok": True, "clients": len(hub.clients)}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        """A full snapshot, then every change. Needs a session (cookie or bearer header); closes
        (code 4401) when it expires."""
        if not origin_allowed(websocket.headers.get("origin"), RequestView.of(websocket, trusted),
                              cfg.allowed_origins):
            await websocket.close(code=4403, reason="foreign Origin")
            return
        try:
            s = await session_of(websocket)
        except redis.RedisError:
            await websocket.close(code=1013, reason="Redis unreachable; retry")
            return
        if s is None:
            await websocket.close(code=4401, reason="not logged in or session expired")
            return
        await websocket.accept()
        q = hub.add()
        try:
            await websocket.send_text(json.dumps(state.snapshot(time.time()), ensure_ascii=False))
            recheck_at = time.monotonic() + SESSION_RECHECK_S
            while True:
                # Expired, or revoked meanwhile (logout elsewhere, password changed)? Checked on
                # time even while messages keep coming (a busy site never leaves the queue idle).
                now = time.monotonic()
                if time.time() >= s.expires_at or (now >= recheck_at and await session_of(websocket) is None):
                    await websocket.close(code=4401, reason="session expired or revoked")
                    return
                if now >= recheck_at:
                    recheck_at = now + SESSION_RECHECK_S
                if q.empty():
                    try:
                        msg = await asyncio.wait_for(q.get(), timeout=max(0.01, min(
                            s.expires_at - time.time(), recheck_at - now)))
                    except asyncio.TimeoutError:
                        continue
                else:  # a queued message is taken at once: wait_for costs a task per message
                    msg = q.get_nowait()
                closing = msg is None
                if not closing:
                    text, closing = take_queued(q, msg)
                    await websocket.send_text(text)
                if closing:  # after what was queued before it
                    await websocket.close(code=4000, reason="too slow; reconnect for a snapshot")
                    return
        except WebSocketDisconnect:
            pass
        finally:
            hub.remove(q)

    app.mount("/static/leaflet", StaticFiles(directory=xleaflet.BASE_DIR), name="leaflet")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app

