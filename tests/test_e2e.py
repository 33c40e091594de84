"""End to end on real parts: vtest.avi → YOLO edge agent → Redis → control → GET /api/zones."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import free_port
from .dash import PASSWORDS, users_env
from .procs import services, wait_for, wait_http

pytestmark = pytest.mark.e2e


def plaza(base: str, auth: dict) -> dict:
    zones = httpx.get(f"{base}/api/zones", headers=auth, timeout=5).json()
    return next(z for z in zones if z["zone_id"] == "cangbai-plaza")


def test_video_to_map(tmp_path, redis_url, keys, vtest_path, model_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"CROWDFLOW_MODEL": str(model_path), "CROWDFLOW_USERS": users_env()}
    with services(tmp_path, redis_url, keys.prefix, extra_env=env) as s:
        s.start("control", "control", "--stale-after", "4")
        s.start("dashboard", "dashboard", "--port", str(port))
        wait_http(f"{base}/healthz")
        token = httpx.post(f"{base}/api/login", json={"username": "viewer", "password": PASSWORDS["viewer"]}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        # Before any observation every zone is unknown, never empty.
        zones = httpx.get(f"{base}/api/zones", headers=auth).json()
        assert len(zones) == 19 and all(z["status"] == "unknown" and z["count"] is None for z in zones)

        edge = s.start("edge", "edge", "--camera", "cam-cangbai-plaza", "--source", str(vtest_path),
                       "--max-frames", "50")
        live = wait_for(lambda: (z := plaza(base, auth))["status"] == "ok" and z, 90, what="plaza live")
        assert live["count"] > 0 and live["density"] > 0
        # detection (tiled where the plaza runs far into the view: its camera looks along the strip)
        assert live["sources"] == ["cam-cangbai-plaza"] and live["method"] in ("detect", "tiled")
        assert abs(time.time() - live["updated_at"]) < 10
        assert edge.wait(timeout=90) == 0, s.logs()

        # The edge agent has stopped: after the stale limit (4 s) the zone is unknown, with
        # its last value kept for display, never shown as zero or as live.
        gone = wait_for(lambda: (z := plaza(base, auth))["status"] == "unknown" and z, 20, what="plaza unknown")
        assert gone["count"] is None and gone["capacity_ratio"] is None
        assert gone["last_known"]["count"] > 0
        assert gone["reason"].startswith("stale")
