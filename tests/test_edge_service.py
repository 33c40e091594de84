"""`crowdflow edge` as a real process: it publishes zone counts and gate flows with method and
confidence, a bad reference view is a clear error, and SIGTERM stops it cleanly."""

from __future__ import annotations

import signal

from crowdflow.records import Observation, decode

from .procs import services, wait_for

CAM = "cam-cangbai-plaza"


def test_edge_service_publishes_and_stops_gracefully(tmp_path, redis_url, keys, r, vtest_path, model_path):
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_MODEL": str(model_path)}) as s:
        edge = s.start("edge", "edge", "--camera", CAM, "--source", str(vtest_path), "--loop")
        got = wait_for(lambda: [decode(Observation, f["rec"]) for _, f in r.xrange(keys.obs)
                                if decode(Observation, f["rec"]).health == "ok"][:2], 60, what="observations")
        o = got[-1]
        assert o.zones[0].zone_id == "cangbai-plaza" and o.zones[0].method in ("detect", "tiled")
        assert o.gates[0].gate_id == "gate-11f"
        n = r.xlen(keys.obs)
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=15) == 0, s.logs()
        assert "stopped:" in s.logs()
        assert r.xlen(keys.obs) >= n  # the open window went out on the way down


def test_missing_reference_view_is_a_clear_error(tmp_path, redis_url, keys, vtest_path, model_path):
    cfg = tmp_path / "site.yaml"
    from .conftest import SITE_FILE

    text = SITE_FILE.read_text().replace("      - id: home\n        image_size: [480, 360]\n",
                                         "      - id: home\n        image_size: [480, 360]\n"
                                         "        reference_image: views/nowhere.jpg\n", 1)
    cfg.write_text(text)
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_MODEL": str(model_path)}) as s:
        edge = s.start("edge", "edge", "--config", str(cfg), "--camera", CAM, "--source", str(vtest_path))
        assert edge.wait(timeout=60) == 2
        assert "reference_image" in s.logs() and "nowhere.jpg" in s.logs()
