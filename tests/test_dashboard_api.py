"""The dashboard's HTTP and WebSocket API on a real Redis: roles, commands, snapshots, timeline,
audit, offline docs. Commands are answered by the real control service (in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from control.service import ControlService
from crowdflow.records import HOLD_STALE_S, Alarm, Forecast, HoldState, ZoneState
from crowdflow.site import Text
from dashboard.app import Hub, create_app

from .seed import seed_recommendation
from .dash import PASSWORDS, messages, users_env


@pytest.fixture
def make_client(site, redis_url, keys, monkeypatch):
    monkeypatch.setenv("CROWDFLOW_USERS", users_env())
    made = []

    def make(**dashboard):
        s = site.model_copy(update={"dashboard": site.dashboard.model_copy(update=dashboard)}) if dashboard else site
        c = TestClient(create_app(s, redis_url, keys))
        c.__enter__()
        made.append(c)
        return c

    yield make
    for c in made:
        c.__exit__(None, None, None)


def login(c: TestClient, role: str) -> dict:
    res = c.post("/api/login", json={"username": role, "password": PASSWORDS[role]})
    assert res.status_code == 200, res.text
    assert res.json()["role"] == role
    return res.json()


@pytest.fixture
def control(site, r, keys):
    """Start the real control service (call after seeding Redis: it restores what it finds)."""
    stop = threading.Event()
    threads = []

    def start() -> ControlService:
        svc = ControlService(site, r, keys, consumer="ctl-test")
        t = threading.Thread(target=svc.run, args=(stop,), daemon=True)
        t.start()
        threads.append(t)
        return svc

    yield start
    stop.set()
    for t in threads:
        t.join(timeout=5)


def test_every_route_and_the_websocket_need_a_session(make_client):
    c = make_client()
    for path in ("/api/site", "/api/zones", "/api/state", "/api/me", "/api/audit", "/api/zones/cangbai-plaza/history"):
        assert c.get(path).status_code == 401, path
    assert c.post("/api/commands", json={"kind": "set_mode", "mode": "emergency"}).status_code == 401
    with pytest.raises(WebSocketDisconnect) as ei:
        with c.websocket_connect("/ws") as ws:
            ws.receive_text()
    assert ei.value.code == 4401
    # /docs works offline: Swagger UI from local files, and the API is described.
    docs = c.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    js = docs.split('src="')[1].split('"')[0]
    assert js.startswith("/") and c.get(js).status_code == 200
    assert "/api/commands" in c.get("/openapi.json").json()["paths"]


def test_a_zone_event_goes_out_once_as_control_wrote_it_then_stale(make_client, site, r, keys):
    """A live zone state is sent as control encoded it; the same state again (only computed_at
    differs) is not sent twice; a changed one is; and the once-a-second sweep sends it as
    unknown once it passes the staleness limit (10 s) with no new event."""
    c = make_client()
    login(c, "viewer")
    zid = "cangbai-plaza"
    with c.websocket_connect("/ws") as ws:
        assert json.loads(ws.receive_text())["type"] == "snapshot"
        now = time.time()
        s = ZoneState(zone_id=zid, status="ok", count=12.0, density=0.1, capacity=100, computed_at=now,
                      updated_at=now - 8.5, sources=["cam-cangbai-plaza"])
        r.xadd(keys.events, {"type": "zone", "rec": s.encode()})
        r.xadd(keys.events, {"type": "zone", "rec": s.model_copy(update={"computed_at": now + 0.5}).encode()})
        r.xadd(keys.events, {"type": "zone", "rec": s.model_copy(update={"count": 13.0}).encode()})
        got, raw = [], []
        while len(got) < 3:
            text = ws.receive_text()
            for msg in messages(text):
                if msg["type"] == "zone" and msg["state"]["zone_id"] == zid and \
                        msg["state"]["reason"] != "no state from control yet":
                    got.append((msg["state"]["status"], msg["state"]["count"]))
                    raw.append(text)
        assert got == [("ok", 12.0), ("ok", 13.0), ("unknown", None)]
        assert '{"type":"zone","state":' + s.encode() + "}" in raw[0]  # as control wrote it
        assert time.time() >= now + 1.5  # unknown only once past the limit


def test_login_is_rate_limited_per_name_and_address(make_client):
    c = make_client(login_attempts_per_min=3)
    for _ in range(3):
        assert c.post("/api/login", json={"username": "viewer", "password": "nope"}).status_code == 401
    res = c.post("/api/login", json={"username": "viewer", "password": PASSWORDS["viewer"]})
    assert res.status_code == 429 and int(res.headers["retry-after"]) > 0  # even the right password waits
    login(c, "operator")  # another name is not blocked


def test_viewer_and_operator_cannot_command_and_nothing_is_written(make_client, r, keys):
    c = make_client()
    login(c, "viewer")
    assert c.get("/api/me").json() == {"user": "viewer", "role": "viewer", "post": "post-bridge-mid",
                                        "expires_at": pytest.approx(time.time() + 8 * 3600, abs=5)}
    for body in ({"kind": "confirm", "recommendation_id": "rec-1"}, {"kind": "set_mode", "mode": "emergency"},
                 {"kind": "ack_alarm", "alarm_id": "a1"}, {"kind": "override", "plan_id": "bridge", "level": "I"}):
        res = c.post("/api/commands", json=body)
        assert res.status_code == 403, body
    login(c, "operator")
    res = c.post("/api/commands", json={"kind": "confirm", "recommendation_id": "rec-1"})
    assert res.status_code == 403 and "needs role commander" in res.json()["detail"]
    assert r.exists(keys.cmd) == 0  # nothing reached control


def test_commands_answer_with_controls_result(make_client, control, site, r, keys):
    rec = seed_recommendation(r, keys, site, "bridge", "III", "bridge-e-mid")
    now = time.time()
    alarm = Alarm(id="al-1", kind="camera_offline", severity="warning", camera_id="cam-jiabin",
                  text=Text(zh="嘉滨路球机离线", en="Jiabin camera offline"), raised_at=now)
    r.hset(keys.alarms, alarm.id, alarm.encode())
    r.xadd(keys.events, {"type": "alarm", "rec": alarm.encode()})
    control()  # restores the seeded recommendation and alarm, as after a restart
    c = make_client()

    login(c, "operator")
    with c.websocket_connect("/ws") as ws:
        snap = json.loads(ws.receive_text())
        assert snap["type"] == "snapshot" and len(snap["zones"]) == len(site.zones)
        assert [x["id"] for x in snap["recommendations"]] == [rec.id]
        bridge = next(p for p in snap["plans"] if p["plan_id"] == "bridge")
        assert bridge["pending"] == rec.id and snap["mode"]["mode"] == "normal"
        res = c.post("/api/commands", json={"kind": "ack_alarm", "alarm_id": "al-1"})
        assert res.status_code == 200 and res.json()["ok"] is True
        for _ in range(500):  # then diffs (control also publishes zones and audit): the acknowledged alarm
            diff = next((m for m in messages(ws.receive_text()) if m["type"] == "alarm" and m["rec"]["id"] == "al-1"),
                        None)
            if diff:
                break
        assert diff["type"] == "alarm" and diff["rec"]["acked_by"] == "operator"

    login(c, "commander")
    res = c.post("/api/commands", json={"kind": "confirm", "recommendation_id": "rec-nope"})
    assert res.status_code == 409 and res.json()["error"] == "recommendation_id: no recommendation 'rec-nope'"
    assert c.post("/api/commands", json={"kind": "confirm"}).status_code == 400  # which recommendation?
    res = c.post("/api/commands", json={"kind": "confirm", "recommendation_id": rec.id, "note": "桥上人多"})
    assert res.status_code == 200, res.text
    state = c.get("/api/state").json()
    plan = next(p for p in state["plans"] if p["plan_id"] == "bridge")
    assert plan["level"] == "III" and plan["pending"] is None
    assert {"type": "one_way", "zone": "bridge-e-mid", "toward": "bridge-n-head"} in plan["active_actions"]
    assert plan["history"][-1]["by"] == "commander" and plan["history"][-1]["via"] == "confirm"
    assert next(x for x in state["recommendations"] if x["id"] == rec.id)["status"] == "confirmed"
    # The decision log records who decided what and why; filters narrow it.
    assert c.post("/api/commands", json={"kind": "set_mode", "mode": "emergency"}).status_code == 200
    log = c.get("/api/audit").json()
    # (the refused confirm of an unknown recommendation is on record too)
    assert [a["action"] for a in log if a["action"] != "order"] == ["set_mode", "confirm", "refuse", "ack_alarm"]
    confirm = c.get("/api/audit", params={"action": "confirm"}).json()
    assert len(confirm) == 1 and confirm[0]["actor"] == "commander" and "桥上人多" in confirm[0]["reason"]
    assert [a["action"] for a in c.get("/api/audit", params={"q": "operator"}).json()] == ["ack_alarm"]
    assert c.get("/api/state").json()["mode"]["mode"] == "emergency"


def test_command_control_does_not_answer_gets_504(make_client, r, keys):
    c = make_client(command_timeout_s=0.5)
    login(c, "commander")
    res = c.post("/api/commands", json={"kind": "set_mode", "mode": "emergency"})
    assert res.status_code == 504 and "did not answer within 0.5 s" in res.json()["error"]
    assert r.xlen(keys.cmd) == 1  # queued for control, not lost


def test_zone_timeline_last_two_hours_and_forecast(make_client, site, r, keys):
    now = time.time()
    zone = site.zone_by_id["cangbai-plaza"]
    old_ms = int((now - 3 * 3600) * 1000)
    for i, (t, n) in enumerate([(now - 3 * 3600, 100), (now - 600, 900), (now - 300, 1200)]):
        s = ZoneState(zone_id=zone.id, status="ok", count=n, density=n / 1900, capacity=zone.capacity,
                      capacity_ratio=n / zone.capacity, updated_at=t, computed_at=t)
        r.xadd(keys.zone_history(zone.id), {"rec": s.encode()}, id=f"{old_ms if i == 0 else int(t * 1000)}-0")
    cur = ZoneState(zone_id=zone.id, status="ok", count=1300, density=0.68, capacity=zone.capacity,
                    capacity_ratio=0.68, updated_at=now, computed_at=now,
                    forecast=[Forecast(horizon_min=10, count=1600, capacity_ratio=0.84)])
    r.hset(keys.zone_state, zone.id, cur.encode())
    c = make_client()
    login(c, "viewer")
    h = c.get(f"/api/zones/{zone.id}/history").json()
    assert [x["count"] for x in h["samples"]] == [900, 1200]  # the 3-hour-old sample is out
    assert h["forecast"] == [{"horizon_min": 10, "count": 1600, "capacity_ratio": 0.84}]
    assert c.get("/api/zones/nowhere/history").status_code == 404


def test_a_slow_client_is_dropped_without_holding_up_the_others():
    async def main():
        hub = Hub()
        slow, fast = hub.add(), hub.add()
        for i in range(300):  # the slow one never reads; the fast one keeps up
            hub.broadcast(f"m{i}")
            assert fast.get_nowait() == f"m{i}"
        assert slow not in hub.clients and fast in hub.clients and hub.dropped == 1
        items = [slow.get_nowait() for _ in range(slow.qsize())]
        assert items[-1] is None  # its sender closes it; the browser reconnects for a snapshot
    asyncio.run(main())


def _alarm(i: int, now: float) -> Alarm:
    return Alarm(id=f"al-{i:03d}", kind="camera_offline", severity="warning", camera_id="cam-jiabin",
                 text=Text(zh="嘉滨路球机离线", en="Jiabin camera offline"), raised_at=now + i)


def _publish_at_once(r, keys, alarms: list[Alarm]) -> None:
    """Alarm events in one MULTI/EXEC: the dashboard's follower reads them in one XREAD and
    queues their messages for each client in one go."""
    pipe = r.pipeline(transaction=True)
    for a in alarms:
        pipe.xadd(keys.events, {"type": "alarm", "rec": a.encode()})
    pipe.execute()


def _frames_until(ws, alarm_id: str) -> list[str]:
    frames = []
    while True:
        frames.append(ws.receive_text())
        if any(m["type"] == "alarm" and m["rec"]["id"] == alarm_id for m in messages(frames[-1])):
            return frames


@contextlib.contextmanager
def viewer_ws(make_client):
    """A viewer's /ws, past its snapshot."""
    c = make_client()
    login(c, "viewer")
    with c.websocket_connect("/ws") as ws:
        assert json.loads(ws.receive_text())["type"] == "snapshot"
        yield ws


def test_messages_queued_together_go_out_in_one_frame_in_order_a_single_one_bare(make_client, r, keys):
    now = time.time()
    with viewer_ws(make_client) as ws:
        _publish_at_once(r, keys, [_alarm(i, now) for i in range(5)])
        frames = _frames_until(ws, "al-004")
        ids = [m["rec"]["id"] for m in messages(frames[-1]) if m["type"] == "alarm"]
        assert json.loads(frames[-1])["type"] == "batch"  # (the first zone sweep may share it)
        assert ids == [f"al-{i:03d}" for i in range(5)]  # all five in one frame, in order
        r.xadd(keys.events, {"type": "alarm", "rec": _alarm(5, now).encode()})
        frames = _frames_until(ws, "al-005")
        assert json.loads(frames[-1]) == {"type": "alarm", "rec": json.loads(_alarm(5, now).encode())}  # bare


def test_a_client_too_slow_gets_what_was_queued_then_close_4000(make_client, r, keys):
    """300 messages queued at once overflow the client's 256: the hub drops the oldest for its
    close sentinel; the client gets the 255 before the sentinel in one frame, then close 4000."""
    now = time.time()
    with viewer_ws(make_client) as ws:
        _publish_at_once(r, keys, [_alarm(i, now) for i in range(300)])
        frames = []
        with pytest.raises(WebSocketDisconnect) as ei:
            while True:
                frames.append(ws.receive_text())
    assert ei.value.code == 4000
    assert json.loads(frames[-1])["type"] == "batch"
    got = [m["rec"]["id"] for f in frames for m in messages(f) if m["type"] == "alarm"]
    assert got == [f"al-{i:03d}" for i in range(1, 256)]


def test_a_revoked_session_closes_the_websocket_while_messages_keep_coming(make_client, r, keys, monkeypatch):
    """A logout elsewhere ends an open /ws within the re-check period even when the queue is
    never idle for that long (a busy site)."""
    monkeypatch.setattr("dashboard.app.SESSION_RECHECK_S", 0.5)
    c = make_client()
    token = login(c, "viewer")["token"]
    stop = threading.Event()

    def stream():  # an alarm every 50 ms for up to 6 s
        for i in range(120):
            if stop.wait(0.05):
                return
            r.xadd(keys.events, {"type": "alarm", "rec": _alarm(i, time.time()).encode()})

    t = threading.Thread(target=stream, daemon=True)
    with c.websocket_connect("/ws") as ws:
        assert json.loads(ws.receive_text())["type"] == "snapshot"
        t.start()
        try:
            ws.receive_text()  # the stream flows
            other = make_client()  # another dashboard instance: the logout is shared through Redis
            assert other.post("/api/logout", headers={"authorization": f"Bearer {token}"}).json()["revoked"]
            out = time.monotonic()
            with pytest.raises(WebSocketDisconnect) as ei:
                while True:
                    ws.receive_text()
            assert ei.value.code == 4401
            assert time.monotonic() - out < 2.0 and t.is_alive()  # closed while the stream still flowed
        finally:
            stop.set()
            t.join()


def test_one_frame_carries_at_most_ws_batch_max_messages():
    from dashboard.app import WS_BATCH_MAX, take_queued

    async def main():
        q = asyncio.Queue()
        for i in range(WS_BATCH_MAX + 10):
            q.put_nowait(json.dumps({"type": "n", "i": i}))
        frames = []
        while not q.empty():
            text, closing = take_queued(q, q.get_nowait())
            assert not closing
            frames.append(text)
        return frames
    frames = asyncio.run(main())
    assert [len(messages(f)) for f in frames] == [WS_BATCH_MAX, 10]
    assert [m["i"] for f in frames for m in messages(f)] == list(range(WS_BATCH_MAX + 10))


def test_live_state_keeps_open_items_when_it_bounds_memory(site):
    from dashboard.app import KEEP_RECS, LiveState
    from crowdflow.records import Recommendation

    st = LiveState(site, 10)
    pending = Recommendation(id="rec-open", plan_id="bridge", level="IV", from_level=None, created_at=1e9,
                             status="pending")
    st.apply(pending)
    for i in range(KEEP_RECS + 50):
        st.apply(Recommendation(id=f"rec-{i}", plan_id="bridge", level="IV", from_level=None,
                                created_at=1e9 + 10 + i, status="rejected"))
    assert len(st.recs) == KEEP_RECS and "rec-open" in st.recs  # the oldest decided ones went
    assert "rec-0" not in st.recs and f"rec-{KEEP_RECS + 49}" in st.recs


def hold(site, hid: str, people: float | None, at: float | None, by: str = "staff-11f") -> HoldState:
    """A holding area's state as control publishes it: a count taken at ``at`` (None: never)."""
    h = next(x for x in site.holding_areas if x.id == hid)
    return HoldState(hold_id=h.id, gate_id=h.gate, zone_id=h.zone, area_m2=h.area_m2,
                     status="ok" if people is not None else "unknown",
                     reason=None if people is not None else "no count reported", people=people,
                     density=None if people is None else people / h.area_m2, reported_at=at,
                     reported_by=by if people is not None else None, computed_at=at or time.time())


def test_hold_counts_are_served_and_a_count_control_leaves_standing_turns_unknown(make_client, site, r, keys):
    """Every holding area is served (snapshot, /api/holds); a count past HOLD_STALE_S is unknown
    with the last count and its time, even when control never said so (it went silent); a pen
    control has not published is unknown, never 0. A live count that ages past the limit while
    the page is open is pushed again as unknown by the dashboard's own once-a-second sweep."""
    now = time.time()
    r.hset(keys.hold_state, "hold-11f", hold(site, "hold-11f", 320.0, now - HOLD_STALE_S - 60).encode())
    r.hset(keys.hold_state, "hold-1f", hold(site, "hold-1f", 150.0, now - 10).encode())
    r.hset(keys.hold_state, "hold-xsz-9", hold(site, "hold-xsz-9", None, None).encode())
    c = make_client()
    login(c, "viewer")
    holds = {h["hold_id"]: h for h in c.get("/api/holds").json()}
    assert list(holds) == [h.id for h in site.holding_areas]  # every pen, in the site file's order
    stale = holds["hold-11f"]
    assert stale["status"] == "unknown" and stale["people"] is None and stale["density"] is None
    assert stale["last_people"] == 320.0 and stale["last_at"] == pytest.approx(now - HOLD_STALE_S - 60)
    assert stale["reason"].startswith("stale: last count")
    fresh = holds["hold-1f"]
    assert fresh["status"] == "ok" and fresh["people"] == 150.0 and fresh["density"] == pytest.approx(0.5)
    assert fresh["reported_by"] == "staff-11f"
    assert holds["hold-xsz-9"]["status"] == "unknown" and holds["hold-xsz-9"]["reason"] == "no count reported"
    assert holds["hold-bridge-n"]["status"] == "unknown" and holds["hold-bridge-n"]["people"] is None
    assert "/api/holds" in c.get("/openapi.json").json()["paths"]

    with c.websocket_connect("/ws") as ws:
        snap = json.loads(ws.receive_text())
        assert {h["hold_id"]: h["status"] for h in snap["holds"]}["hold-11f"] == "unknown"
        assert len(snap["holds"]) == len(site.holding_areas)
        # a count taken just inside the limit: sent live, then unknown once it passes the limit
        t = time.time() - HOLD_STALE_S + 1.5
        r.xadd(keys.events, {"type": "hold", "rec": hold(site, "hold-xsz-6", 90.0, t, "metro-ops").encode()})
        got = []
        deadline = time.time() + 10
        while len(got) < 2 and time.time() < deadline:
            got += [(m["rec"]["status"], m["rec"]["people"], m["rec"]["last_people"])
                    for m in messages(ws.receive_text()) if m["type"] == "hold" and m["rec"]["hold_id"] == "hold-xsz-6"]
        assert got == [("ok", 90.0, None), ("unknown", None, 90.0)]
        assert time.time() >= t + HOLD_STALE_S  # unknown only once past the limit
    assert c.get("/api/state").json()["holds"][2]["status"] == "unknown"


def test_report_queue_is_answered_by_control_and_refused_with_its_reason(make_client, control, site, r, keys):
    control()
    c = make_client()
    login(c, "viewer")  # report_queue needs a viewer (crowdflow.vocab): the staff at the pen
    res = c.post("/api/commands", json={"kind": "report_queue", "hold_id": "hold-1f", "people": 150})
    assert res.status_code == 200 and res.json()["ok"] is True, res.text
    stored = HoldState.model_validate_json(r.hget(keys.hold_state, "hold-1f"))
    assert stored.status == "ok" and stored.people == 150 and stored.reported_by == "viewer"
    shown = next(h for h in c.get("/api/holds").json() if h["hold_id"] == "hold-1f")
    assert shown["people"] == 150 and shown["density"] == pytest.approx(0.5)
    # 5000 people in 300 m² is 16.7 p/m²: refused with control's reason, nothing changes
    res = c.post("/api/commands", json={"kind": "report_queue", "hold_id": "hold-1f", "people": 5000})
    assert res.status_code == 409 and "above the physical limit of 10 p/m²" in res.json()["error"]
    assert HoldState.model_validate_json(r.hget(keys.hold_state, "hold-1f")).people == 150
    res = c.post("/api/commands", json={"kind": "report_queue", "hold_id": "hold-nope", "people": 5})
    assert res.status_code == 409 and "no holding area 'hold-nope'" in res.json()["error"]
    assert c.post("/api/commands", json={"kind": "report_queue", "hold_id": "hold-1f"}).status_code == 400


def test_report_queue_goes_to_the_partition_of_the_pens_zone(raw, redis_url, keys, monkeypatch):
    """On a partitioned site a count goes to the worker that keeps that pen (its zone's
    partition), not to the first partition; an unknown pen goes to the first (refused there)."""
    from crowdflow.site import parse_site
    from crowdflow.site.partitions import partition_keys

    from .partitioned import partitioned

    monkeypatch.setenv("CROWDFLOW_USERS", users_env())
    psite = parse_site(partitioned(raw))
    psite = psite.model_copy(update={"dashboard": psite.dashboard.model_copy(update={"command_timeout_s": 0.3})})
    parts = partition_keys(psite, keys)
    import redis as redis_sync

    rr = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        with TestClient(create_app(psite, redis_url, keys)) as c:
            login(c, "viewer")
            for hid, part in (("hold-xsz-6", "metro"), ("hold-bridge-n", "bridge"), ("hold-11f", "complex")):
                res = c.post("/api/commands", json={"kind": "report_queue", "hold_id": hid, "people": 10})
                assert res.status_code == 504 and parts[part].cmd in res.json()["error"], (hid, res.text)
            assert {p: rr.xlen(k.cmd) for p, k in parts.items()} == {"metro": 1, "bridge": 1, "complex": 1}
    finally:
        for k in parts.values():
            rr.delete(k.cmd)
        rr.close()
