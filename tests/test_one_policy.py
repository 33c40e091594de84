"""One counting policy: `crowdflow count --camera` and the edge agent give the same per-zone
estimates for the same frames, because both run edge.counter.CrowdCounter on the same layout;
the policy itself (edge.counter.choose) is plain code."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import pytest

from edge.counter import CounterSettings, CrowdCounter, choose

from .conftest import REPO

CAM = "cam-cangbai-plaza"


def test_choose_is_the_whole_policy():
    s = CounterSettings(dense_count=10, dense_min_count=5, dense_per_m2=1.0)
    assert choose(None, None, s) == "detect"  # no density model: detection
    assert choose(9.9, None, s) == "detect" and choose(10, None, s) == "density"
    assert choose(6, 4.0, s) == "density"  # a small zone packed beyond dense_per_m2
    assert choose(4, 2.0, s) == "detect"  # … but not for a handful of people
    assert choose(6, 100.0, s) == "detect"


def test_count_cli_and_agent_agree_per_zone(site, detector, model_path, vtest_path):
    from edge.agent import EdgeAgent
    from edge.density import DEFAULT_HEAD, load_density_model
    from edge.grabber import FrameGrabber

    res = subprocess.run([sys.executable, "-m", "crowdflow.cli", "count", str(vtest_path), "--json", "--limit", "4",
                          "--camera", CAM, "--model", str(model_path)], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    cli = [json.loads(x) for x in res.stdout.splitlines()]
    assert all(set(r["zones"]) == {"cangbai-plaza"} for r in cli)
    counter = CrowdCounter(detector, load_density_model(DEFAULT_HEAD, model_path, threads=2),
                           CounterSettings(target_px=site.edge.tile_target_px, dense_per_m2=site.edge.dense_per_m2))
    agent = EdgeAgent(site, CAM, FrameGrabber(str(vtest_path)), counter, None)
    cap = cv2.VideoCapture(str(vtest_path))
    for rec in cli:
        ok, f = cap.read()
        counts = agent.process(time.time(), f)
        z = rec["zones"]["cangbai-plaza"]
        assert counts["cangbai-plaza"] == pytest.approx(z["count"], abs=0.051)
    cap.release()
    o = agent.flush(time.time())
    assert o.zones[0].method == cli[-1]["zones"]["cangbai-plaza"]["method"]
