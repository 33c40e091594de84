#!/usr/bin/env python3
"""Take the README's screenshot of the live map with headless Debian chromium.

Runs the real services (embedded Redis unless REDIS_URL is set, control, dashboard, and an
edge agent on the shared sample video), waits until the video's zone is live, then saves
docs/img/map.png. Usage: python scripts/screenshot.py [--out docs/img/map.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdflow.bus import EmbeddedRedis  # noqa: E402
from crowdflow.demo import demo_inputs  # noqa: E402
from tests.browser import launch  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.procs import Services, wait_for, wait_http  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "map.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    args = ap.parse_args()
    video, model, missing = demo_inputs()
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="crowdflow-shot-"))
    embedded = None
    url = os.environ.get("REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(tmp / "redis")
        url = embedded.url
    port = free_port()
    svc = Services(tmp, url, f"shot-{uuid.uuid4().hex[:6]}", extra_env={"CROWDFLOW_MODEL": model})
    try:
        svc.start("control", "control")
        svc.start("dashboard", "dashboard", "--port", str(port))
        svc.start("edge", "edge", "--camera", "cam-cangbai-plaza", "--source", video, "--loop")
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        wait_for(lambda: any(z["status"] == "ok" for z in httpx.get(f"{base}/api/zones").json()), 90,
                 what="a live zone")
        time.sleep(3)
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(base + "/")
            page.wait_for_function("Object.keys(window.crowdflow.states).length > 0")
            time.sleep(1.5)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
        print(f"saved {args.out}")
        return 0
    finally:
        svc.stop()
        if embedded:
            embedded.close()


if __name__ == "__main__":
    sys.exit(main())
