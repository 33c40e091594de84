"""A real dashboard + control pair on a loopback port, for API fuzzing (schemathesis)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .dash import PASSWORDS, users_env
from .faults import fault_port
from .procs import REPO


@contextlib.contextmanager
def dashboard_and_control(tmp: Path, redis_url: str, prefix: str):
    """Yields (base_url, bearer headers of a commander)."""
    port = fault_port()
    env = dict(os.environ, REDIS_URL=redis_url, CROWDFLOW_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1",
               CROWDFLOW_DATA_DIR=str(tmp / "var"), CROWDFLOW_USERS=users_env())
    procs = [subprocess.Popen([sys.executable, "-m", "crowdflow.cli", *args], cwd=REPO, env=env,
                              stdout=open(tmp / f"{args[0]}.log", "w"), stderr=subprocess.STDOUT)
             for args in (["control", "--audit-dir", "none"], ["dashboard", "--port", str(port)])]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError((tmp / "dashboard.log").read_text())
            time.sleep(0.2)
        token = httpx.post(f"{base}/api/login", json={"username": "commander",
                                                      "password": PASSWORDS["commander"]}).json()["token"]
        yield base, {"Authorization": f"Bearer {token}"}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
