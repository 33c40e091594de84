"""schemathesis over the dashboard's whole OpenAPI, against the real dashboard and control
processes, with a commander's session: no 5xx, every status documented, responses as
documented. A short run here; scripts/fuzz_api.py runs the long one (and the CLI phases)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from .api_server import dashboard_and_control

pytestmark = pytest.mark.e2e
N = int(os.environ.get("CROWDFLOW_API_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api(tmp_path_factory, redis_url):
    import uuid

    import redis

    prefix = f"t-api-{uuid.uuid4().hex[:8]}"
    with dashboard_and_control(tmp_path_factory.mktemp("api"), redis_url, prefix) as (base, auth):
        yield base, auth
    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(k)


def test_every_operation_fuzzed_with_auth(api):
    base, auth = api
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 9
    failures, calls, statuses = [], 0, {}
    for op in ops:
        # Logout would end the session the other operations use; it gets its own run below.
        headers = None if op.path == "/api/logout" else auth

        @settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            nonlocal calls
            resp = case.call(base_url=base, headers=headers)
            calls += 1
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            try:
                case.validate_response(resp)
            except Exception as e:  # collect, report all at the end
                failures.append(f"{op.method.upper()} {op.path} → {resp.status_code}: {str(e)[:300]}")

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # valid and invalid input
            try:
                given(op.as_strategy(generation_mode=mode))(run)()
            except Unsatisfiable:  # no input of this operation can be invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
    assert not [s for s in statuses if s >= 500], statuses
    assert not failures, "\n".join(failures[:10])
    assert calls >= len(ops) * min(N, 5)
    print(f"schemathesis: {calls} calls on {len(ops)} operations, statuses {dict(sorted(statuses.items()))}")
