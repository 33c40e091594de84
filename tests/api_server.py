"""Real dashboard + control processes on loopback ports (API fuzzing, shared rate limits)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from .dash import PASSWORDS, users_env
from .faults import fault_port
from .procs import REPO


def site_file_with(tmp: Path, **dashboard) -> Path:
    """A copy of the shipped site file with some ``dashboard`` settings changed (the basemap's
    path, relative to the original, made absolute)."""
    original = REPO / "configs" / "hongyadong.yaml"
    raw = yaml.safe_load(original.read_text(encoding="utf-8"))
    if raw["dashboard"].get("basemap_file"):
        raw["dashboard"]["basemap_file"] = str((original.parent / raw["dashboard"]["basemap_file"]).resolve())
    raw["dashboard"].update(dashboard)
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


@contextlib.contextmanager
def dashboards_and_control(tmp: Path, redis_url: str, prefix: str, n: int = 1, config: Path | None = None):
    """Yields ([base_url of each dashboard], bearer headers of a commander)."""
    ports = [fault_port() for _ in range(n)]
    env = dict(os.environ, REDIS_URL=redis_url, CROWDFLOW_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1",
               CROWDFLOW_DATA_DIR=str(tmp / "var"), CROWDFLOW_USERS=users_env())
    if config is not None:
        env["CROWDFLOW_CONFIG"] = str(config)
    runs = [["control", "--audit-dir", "none"]] + [["dashboard", "--port", str(p)] for p in ports]
    procs = [subprocess.Popen([sys.executable, "-m", "crowdflow.cli", *args], cwd=REPO, env=env,
                              stdout=open(tmp / f"{args[0]}-{i}.log", "w"), stderr=subprocess.STDOUT)
             for i, args in enumerate(runs)]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.monotonic() + 30
        for i, base in enumerate(bases, start=1):
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError((tmp / f"dashboard-{i}.log").read_text())
                time.sleep(0.2)
        token = httpx.post(f"{bases[0]}/api/login", json={"username": "commander",
                                                          "password": PASSWORDS["commander"]}).json()["token"]
        yield bases, {"Authorization": f"Bearer {token}"}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def dashboard_and_control(tmp: Path, redis_url: str, prefix: str):
    """Yields (base_url, bearer headers of a commander)."""
    with dashboards_and_control(tmp, redis_url, prefix) as (bases, auth):
        yield bases[0], auth
