#!/usr/bin/env python3
"""Take the README's screenshots of the dashboard (wall and phone layouts) with headless
Debian chromium.

Runs the real services (embedded Redis unless REDIS_URL is set, control, dashboard, and an
edge agent on the shared sample video, the simulator for every other camera) and waits until the map is live. One pending
recommendation is seeded as control writes it (tests/seed.py), so the console shows the
commander's buttons. Saves
docs/img/dashboard-wall.png (commander, control-room layout) and docs/img/dashboard-phone.png
(staff on the bridge, phone layout). Usage: python scripts/screenshot.py [--out-dir docs/img]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdflow.bus import EmbeddedRedis, Keys, connect  # noqa: E402
from crowdflow.demo import demo_inputs  # noqa: E402
from crowdflow.site import load_site  # noqa: E402
from dashboard.auth import hash_password  # noqa: E402
from tests.seed import seed_recommendation  # noqa: E402
from tests.browser import launch  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.procs import Services, wait_for, wait_http  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=str(REPO / "docs" / "img"))
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
    pw = secrets.token_urlsafe(12)  # one-off passwords: nothing to keep
    users = json.dumps([{"name": "指挥长", "role": "commander", "password_hash": hash_password(pw)},
                        {"name": "桥面民警", "role": "viewer", "password_hash": hash_password(pw), "post": "post-bridge-mid"}])
    prefix = f"shot-{uuid.uuid4().hex[:6]}"
    svc = Services(tmp, url, prefix, extra_env={"CROWDFLOW_MODEL": model, "CROWDFLOW_USERS": users})
    try:
        svc.start("control", "control")
        svc.start("dashboard", "dashboard", "--port", str(port))
        svc.start("edge", "edge", "--camera", "cam-cangbai-plaza", "--source", video, "--loop")
        # Every other camera from the site simulator, on a busy evening (as `make demo` does).
        svc.start("sim", "sim", "--exclude", "cam-cangbai-plaza", "--speed", "30", "--start", "20:15")
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        login = httpx.post(f"{base}/api/login", json={"username": "指挥长", "password": pw}).json()
        cookies = {"cf_session": login["token"]}
        wait_for(lambda: sum(z["status"] == "ok" for z in httpx.get(f"{base}/api/zones", cookies=cookies).json()) >= 15,
                 90, what="the map live")
        site = load_site(REPO / "configs" / "hongyadong.yaml")
        seed_recommendation(connect(url), Keys(prefix), site, "bridge", "III", "bridge-e-mid")
        time.sleep(3)
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pwr:
            browser = launch(pwr)
            for user, layout, size in (("指挥长", "wall", (1600, 900)), ("桥面民警", "phone", (412, 915))):
                page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                page.goto(f"{base}/?layout={layout}")
                page.fill("#username", user)
                page.fill("#password", pw)
                page.click("#login button[type=submit]")
                page.wait_for_function("Object.keys(window.crowdflow.states).length > 0")
                page.wait_for_selector(".card.rec")
                if layout == "wall":
                    page.evaluate("window.crowdflow.showTimeline('cangbai-plaza')")  # as a click on it does
                    page.wait_for_selector("#timeline svg")
                page.mouse.move(1, size[1] - 1)  # no hover tooltip where the login button was
                time.sleep(1.5)
                path = out / f"dashboard-{layout}.png"
                page.screenshot(path=str(path))
                print(f"saved {path}")
                page.close()
            browser.close()
        return 0
    finally:
        svc.stop()
        if embedded:
            embedded.close()
        else:  # a shared server: leave nothing behind
            r = connect(url)
            for k in r.scan_iter(match=Keys(prefix).all_keys_pattern()):
                r.delete(k)


if __name__ == "__main__":
    sys.exit(main())
