"""The live map: FastAPI + WebSocket over the zone states control publishes in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

import redis.asyncio as aioredis
import xstatic.pkg.leaflet as xleaflet
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from crowdflow.bus import Keys
from crowdflow.records import RecordError, ZoneState, as_of, decode
from crowdflow.site import Site

from .geo import site_geojson

log = logging.getLogger("crowdflow.dashboard")
STATIC = Path(__file__).parent / "static"
CLIENT_QUEUE = 256  # messages a client may lag behind before it is dropped (it then resyncs)


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


class Hub:
    """Fan-out to WebSocket clients; a client that falls behind is dropped, never waited for."""

    def __init__(self):
        self.clients: set[asyncio.Queue] = set()

    def add(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)
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
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)  # tells the sender to close; the client reconnects


def _zone_msg(s: ZoneState) -> str:
    return json.dumps({"type": "zone", "state": s.model_dump()}, ensure_ascii=False)


def create_app(site: Site, redis_url: str, keys: Keys, stale_after_s: float | None = None) -> FastAPI:
    stale = stale_after_s if stale_after_s is not None else site.control.stale_after_s
    store = ZoneStore(site, stale)
    hub = Hub()
    geojson = site_geojson(site)

    async def follow(r: aioredis.Redis) -> None:
        """Load the snapshot, then follow the updates stream; resync after any Redis error."""
        shown: dict[str, str] = {}
        while True:
            try:
                last_id = "$"
                info = await r.xinfo_stream(keys.events) if await r.exists(keys.events) else None
                if info:
                    last_id = info["last-generated-id"]
                for zid, raw in (await r.hgetall(keys.zone_state)).items():
                    with contextlib.suppress(RecordError):
                        store.put(decode(ZoneState, raw))
                while True:
                    resp = await r.xread({keys.events: last_id}, count=500, block=1000)
                    for _, entries in resp or []:
                        for entry_id, fields in entries:
                            last_id = entry_id
                            if fields.get("type") != "zone":
                                continue
                            try:
                                store.put(decode(ZoneState, fields.get("rec", "")))
                            except RecordError as e:
                                log.warning("bad zone state %s: %s", entry_id, e)
                    now = time.time()
                    for s in store.all(now):
                        key = s.model_dump_json(exclude={"computed_at", "reason"})
                        if shown.get(s.zone_id) != key:
                            shown[s.zone_id] = key
                            hub.broadcast(_zone_msg(s))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down or restarting: keep serving, retry
                log.error("zone follower: %s; retrying", e)
                await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        r = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_connect_timeout=3)
        task = asyncio.create_task(follow(r))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await r.aclose()

    app = FastAPI(title="Crowdflow dashboard", version="0.1.0", lifespan=lifespan)
    app.state.store = store
    app.state.hub = hub

    @app.get("/api/site")
    def get_site() -> dict:
        """Site geometry (zones, cameras, roads, gates, posts) as GeoJSON, names in zh/en."""
        return geojson

    @app.get("/api/zones")
    def get_zones() -> list[dict]:
        """Every configured zone's current state; no fresh data means status ``unknown``."""
        return [s.model_dump() for s in store.all(time.time())]

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "clients": len(hub.clients)}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        q = hub.add()
        try:
            snapshot = {"type": "snapshot", "zones": [s.model_dump() for s in store.all(time.time())]}
            await websocket.send_text(json.dumps(snapshot, ensure_ascii=False))
            while True:
                msg = await q.get()
                if msg is None:
                    await websocket.close(code=4000, reason="too slow; reconnect for a snapshot")
                    return
                await websocket.send_text(msg)
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
