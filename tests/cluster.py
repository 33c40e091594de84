"""A real Redis Cluster for tests (3 masters + 3 replicas on loopback, scripts/redis_cluster.py).

Ports ``CROWDFLOW_TEST_CLUSTER_PORT`` … +5 (default 7641; the bench uses 7601). A test that
needs it skips with the reason when ``redis-server``/``redis-cli`` are absent."""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cluster_module():
    spec = importlib.util.spec_from_file_location("redis_cluster", REPO / "scripts" / "redis_cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def start_cluster(base_port: int | None = None):
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server / redis-cli not installed")
    port = base_port or int(os.environ.get("CROWDFLOW_TEST_CLUSTER_PORT", "7641"))
    c = cluster_module().Cluster(port, f"/tmp/cf-test-cluster-{port}-{uuid.uuid4().hex[:6]}")
    return c.start()
