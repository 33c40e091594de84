"""The edge agent on real vtest frames: per-zone method/confidence, gates, view-moved, heartbeats,
camera offline, latest-frame grabbing."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from crowdflow.records import Observation, decode
from edge.agent import EdgeAgent
from edge.counter import CounterSettings, CrowdCounter
from edge.grabber import FrameGrabber
from edge.spool import Publisher, Spool
from edge.viewcheck import ViewChecker

CAM = "cam-cangbai-plaza"


@pytest.fixture(scope="module")
def frames(vtest_path):
    cap = cv2.VideoCapture(str(vtest_path))
    out = []
    for i in range(60):
        ok, f = cap.read()
        assert ok
        if i in (0, 5, 10, 15, 20, 50):
            out.append(f)
    cap.release()
    return out


def shifted(frame, dx=60, dy=25):
    M = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(frame, M, (frame.shape[1], frame.shape[0]), borderMode=cv2.BORDER_REFLECT)


def make_agent(site, detector, uri, density=None, publisher=None):
    counter = CrowdCounter(detector, density, CounterSettings(target_px=site.edge.tile_target_px,
                                                              dense_per_m2=site.edge.dense_per_m2))
    return EdgeAgent(site, CAM, FrameGrabber(uri), counter, publisher)


def test_view_check_detects_a_shifted_frame(frames):
    vc = ViewChecker(tolerance=0.02)
    vc.set_reference("home", frames[0])
    assert vc.check("home", frames[-1]).ok  # 5 s later, people moved, the view did not
    m = vc.check("home", shifted(frames[-1]))
    assert not m.ok and m.shift_px > 30
    vc.set_reference("other", shifted(frames[0]))
    assert vc.which(shifted(frames[-1])) == "other"
    assert vc.which(frames[-1]) == "home"


def test_agent_counts_zones_and_stops_densities_while_the_view_is_moved(site, detector, frames, vtest_path):
    agent = make_agent(site, detector, str(vtest_path))
    agent.check_interval = 0  # compare every frame (edge.check_interval_s)
    t = time.time()
    for f in frames[:3]:
        counts = agent.process(t, f)
        assert counts is not None and counts["cangbai-plaza"] >= 1
    o = agent.flush(time.time())
    assert o.health == "ok" and o.frames == 3
    (z,) = o.zones
    assert z.zone_id == "cangbai-plaza" and z.count > 0 and z.method in ("detect", "tiled") and 0 < z.confidence <= 1
    assert [g.gate_id for g in o.gates] == ["gate-11f"]  # the camera's gate is always reported

    # Turned away: nothing is counted, the health says why, no zone values go out.
    assert agent.process(time.time(), shifted(frames[3])) is None
    o = agent.flush(time.time())
    assert o.health == "view_moved" and o.zones == [] and o.gates == []
    # Back at the preset: counting resumes.
    assert agent.process(time.time(), frames[4]) is not None
    o = agent.flush(time.time())
    assert o.health == "ok" and o.zones


def test_heartbeats_and_camera_offline_with_backoff(site, detector, tmp_path, redis_url, keys, r):
    missing = tmp_path / "cam.mp4"  # the stream is not there (yet)
    spool = Spool(tmp_path / "s.sqlite")
    agent = EdgeAgent(site, CAM, FrameGrabber(str(missing), backoff_s=0.05, max_backoff_s=0.2),
                      CrowdCounter(detector), Publisher(r, keys, spool))
    stop = threading.Event()
    th = threading.Thread(target=agent.run, args=(stop,))
    th.start()
    time.sleep(2.6)
    stop.set()
    th.join(10)
    got = [decode(Observation, f["rec"]) for _, f in r.xrange(keys.obs)]
    assert len(got) >= 2  # one per second, although no frame ever came
    assert all(o.health == "camera_offline" and o.zones == [] for o in got)
    assert [o.seq for o in got] == sorted({o.seq for o in got})
    assert agent.grabber.reconnects >= 3  # it kept trying, backing off
    spool.close()


def test_grabber_keeps_only_the_newest_frame(vtest_path):
    g = FrameGrabber(str(vtest_path), realtime=False).start()
    try:
        first = g.latest(timeout=5)
        assert first is not None
        time.sleep(0.5)  # a slow consumer: frames arrive meanwhile and are replaced
        second = g.latest(timeout=5)
        assert second is not None and second[0] > first[0]
        assert g.dropped > 0
    finally:
        g.stop()


def test_bytetrack_ids_persist_and_metrics_are_exported(site, detector, vtest_path):
    from prometheus_client import generate_latest

    cap = cv2.VideoCapture(str(vtest_path))
    frames = [cap.read()[1] for _ in range(6)]
    cap.release()
    detector.reset_tracks()
    ids = []
    for f in frames:
        whole, tracked = detector.track(f)
        assert len(whole) >= len(tracked)
        ids.append(set(tracked.ids.tolist()))
    assert ids[-1] and ids[-1] <= ids[1] | ids[-2]  # the same people keep their ids
    detector.reset_tracks()
    agent = make_agent(site, detector, str(vtest_path))
    for f in frames[:3]:
        agent.process(time.time(), f)
    agent.flush(time.time())
    text = generate_latest(agent.metrics.registry).decode()
    assert 'crowdflow_edge_inference_ms_count{camera="cam-cangbai-plaza"} 3.0' in text
    assert 'crowdflow_edge_observations_total{camera="cam-cangbai-plaza",health="ok"} 1.0' in text
    for name in ("fps", "frame_age_seconds", "dropped_frames", "spool_depth", "reconnects"):
        assert f"crowdflow_edge_{name}" in text


def test_no_image_leaves_unless_snapshots_are_enabled(site, detector, vtest_path, tmp_path, redis_url, keys, r):
    import redis as redis_py

    raw = redis_py.Redis.from_url(redis_url)
    cap = cv2.VideoCapture(str(vtest_path))
    frame = cap.read()[1]
    cap.release()
    for enabled in (False, True):
        s = site.model_copy(update={"edge": site.edge.model_copy(update={"snapshots": enabled})})
        spool = Spool(tmp_path / f"s{enabled}.sqlite")
        agent = make_agent(s, detector, str(vtest_path), publisher=Publisher(r, keys, spool))
        agent.process(time.time(), frame)
        agent.flush(time.time())
        snap = raw.get(keys.snapshot(CAM))
        if not enabled:
            assert snap is None and raw.xlen(keys.obs) == 1
        else:
            assert snap[:2] == b"\xff\xd8" and 0 < raw.ttl(keys.snapshot(CAM)) <= 30  # a JPEG, expiring
        spool.close()
    raw.close()


def test_a_dense_zone_is_counted_from_the_density_map(site, detector, shtech_dir, vtest_path, model_path, frames):
    """One policy (edge.counter.choose): a zone with a crowd in it is counted from the density
    map, a zone with a few separated people by detection — the same frames `crowdflow count`
    would count the same way."""
    from edge.density import DEFAULT_HEAD, load_density_model

    head = load_density_model(DEFAULT_HEAD, model_path, threads=2)
    crowd = cv2.resize(cv2.imread(str(shtech_dir / "images" / "IMG_117.jpg")), (480, 360))  # 281 people
    for frame, expect in ((frames[0], "tiled detect"), (crowd, "density")):
        agent = make_agent(site, detector, str(vtest_path), density=head)
        agent.process(time.time(), frame)
        (z,) = agent.flush(time.time()).zones
        assert z.method in expect.split()
        if z.method == "density":
            assert z.count > 50 and 0 < z.confidence < 1  # far more than detection finds at this size
        else:
            assert 1 <= z.count <= 10


def test_agent_follows_the_camera_to_another_calibrated_preset(detector, frames, vtest_path):
    import copy

    import yaml

    from crowdflow.site import parse_site

    from .conftest import SITE_FILE

    raw = yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))
    cam = next(c for c in raw["cameras"] if c["id"] == CAM)
    cam["presets"].append(dict(copy.deepcopy(cam["presets"][0]), id="left"))
    site2 = parse_site(raw)
    agent = make_agent(site2, detector, str(vtest_path))
    agent.check_interval = 0
    agent.views.set_reference("home", frames[0])
    agent.views.set_reference("left", shifted(frames[0]))
    assert agent.process(time.time(), frames[1]) is not None and agent.geometry.preset.id == "home"
    o = agent.flush(time.time())
    assert o.preset == "home"
    assert agent.process(time.time(), shifted(frames[2])) is not None  # turned to the other preset
    o = agent.flush(time.time())
    assert o.health == "ok" and o.preset == "left" and o.zones


def test_http_source_frames_then_reconnects_with_backoff_when_the_server_goes(vtest_path):
    import functools
    import http.server
    import socketserver

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(vtest_path.parent)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    g = FrameGrabber(f"http://127.0.0.1:{srv.server_address[1]}/{vtest_path.name}", backoff_s=0.1,
                     max_backoff_s=0.4).start()
    try:
        got = g.latest(timeout=10)
        assert got is not None and got[1].shape == (360, 480, 3)
        srv.shutdown()
        srv.server_close()
        deadline = time.monotonic() + 15
        while (g.online or g.reconnects < 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not g.online and g.reconnects >= 3 and "cannot open" in g.last_error
    finally:
        g.stop()
