"""Run the real `crowdflow` services as subprocesses for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


class Services:
    def __init__(self, tmp: Path, redis_url: str, prefix: str, extra_env: dict | None = None):
        self.tmp = tmp
        self.env = dict(os.environ, REDIS_URL=redis_url, CROWDFLOW_REDIS_PREFIX=prefix,
                        PYTHONUNBUFFERED="1", YOLO_OFFLINE="1", CROWDFLOW_DATA_DIR=str(tmp / "var"),
                        **(extra_env or {}))
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        p = subprocess.Popen([sys.executable, "-m", "crowdflow.cli", *args], cwd=REPO, env=self.env,
                             stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.procs.append((name, p, log))
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {n} (rc={p.poll()}) ---\n{log.read_text(errors='replace')[-3000:]}"
                         for n, p, log in self.procs)

    def stop(self) -> None:
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        for _, p, _ in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def services(tmp: Path, redis_url: str, prefix: str, **kw):
    s = Services(tmp, redis_url, prefix, **kw)
    try:
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.stop()


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, OSError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def wait_http(url: str, timeout: float = 30.0) -> None:
    wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, timeout, what=url)
