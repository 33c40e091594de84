"""What cameras do to an agent, on real vtest frames and synthetic failures: a black, foggy or
snowy (noise) first frame gives `view_unverified` (never a crash, never zeros for "empty"), a
picture that stops changing is `frozen`, reference views stored by `crowdflow calibrate
--save-reference` are what the agent checks against."""

from __future__ import annotations

import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from crowdflow.site import load_site
from edge.agent import EdgeAgent
from edge.counter import CounterSettings, CrowdCounter
from edge.grabber import FrameGrabber
from edge.viewcheck import FrozenDetector, ViewChecker, ViewUnverifiable

from .conftest import SITE_FILE

CAM = "cam-cangbai-plaza"


@pytest.fixture(scope="module")
def frames(vtest_path):
    cap = cv2.VideoCapture(str(vtest_path))
    out = [cap.read()[1] for _ in range(40)]
    cap.release()
    return out


def black(f):
    return np.zeros_like(f)


def fog(f):
    return cv2.GaussianBlur((f * 0.12 + 200 * 0.88).astype(np.uint8), (0, 0), 3)


def snow(f):  # lost signal / extreme gain: noise without structure
    return np.clip(np.random.default_rng(1).normal(128, 40, f.shape), 0, 255).astype(np.uint8)


def agent_for(site, detector, vtest_path, config_dir=None):
    counter = CrowdCounter(detector, None, CounterSettings(target_px=site.edge.tile_target_px))
    return EdgeAgent(site, CAM, FrameGrabber(str(vtest_path)), counter, None, config_dir=config_dir)


@pytest.mark.parametrize("bad", [black, fog, snow])
def test_a_featureless_first_frame_is_view_unverified_then_the_view_is_taken(site, detector, frames, vtest_path, bad):
    agent = agent_for(site, detector, vtest_path)
    t = time.time()
    assert agent.process(t, bad(frames[0])) is None  # no crash, and no zeros for "nobody there"
    o = agent.flush(t + 1)
    assert o.health == "view_unverified" and o.zones == []
    assert "texture" in agent.state_reason
    assert agent.process(t + 1.1, frames[1]) is not None  # a real view: adopted and counted
    o = agent.flush(t + 2)
    assert o.health == "ok" and len(o.zones) == 1 and o.zones[0].count >= 1


def test_fog_over_a_stored_reference_is_unverified_not_moved(frames):
    vc = ViewChecker()
    vc.set_reference("home", frames[0])
    m = vc.check("home", fog(frames[20]))
    assert not m.ok and not m.verifiable
    shifted = np.roll(frames[20], 80, axis=1)
    m = vc.check("home", shifted)
    assert not m.ok and m.verifiable  # a real picture that does not match: moved
    with pytest.raises(ViewUnverifiable, match="texture"):
        vc.set_reference("night", black(frames[0]))


def test_a_second_reference_view_covers_the_night(frames):
    dark = np.clip((frames[0] / 255.0) ** 2.5 * 255 * 0.3, 0, 255).astype(np.uint8)
    night_later = np.clip((frames[30] / 255.0) ** 2.5 * 255 * 0.3, 0, 255).astype(np.uint8)
    vc = ViewChecker()
    vc.set_reference("home", frames[0])
    vc.set_reference("home", dark, add=True)
    assert vc.check("home", night_later).ok and vc.check("home", frames[30]).ok


def test_frozen_picture_is_reported_and_recovers(site, detector, frames, vtest_path):
    agent = agent_for(site, detector, vtest_path)
    t0 = time.time()
    assert agent.process(t0, frames[0]) is not None
    still = frames[1].copy()
    for k in range(1, 13):  # the same picture, once a second, for 12 s (edge.frozen_after_s: 10)
        agent.process(t0 + k, still.copy())
    assert agent.state == "frozen"
    o = agent.flush(t0 + 12.5)
    assert o.health == "frozen" and o.zones == []
    assert agent.process(t0 + 13, frames[5]) is not None  # it moves again
    assert agent.flush(t0 + 14).health == "ok"


def test_real_footage_is_never_frozen(frames):
    fd = FrozenDetector(after_s=0.5)
    assert not any(fd.update(i * 0.1, f) for i, f in enumerate(frames))  # 4 s of a quiet plaza at 10 fps


def test_calibrate_stores_reference_views_and_the_agent_checks_against_them(tmp_path, frames, site, detector, vtest_path):
    out = tmp_path / "site.yaml"
    frame = tmp_path / "view.png"
    cv2.imwrite(str(frame), frames[0])
    run = [sys.executable, "-m", "crowdflow.cli", "calibrate", "--config", str(SITE_FILE), "--camera", CAM,
           "--preset", "home", "--frame", str(frame), "--save-reference", "--out", str(out)]
    r = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pre = load_site(out).camera(CAM).preset("home")
    assert len(pre.references) == 1 and pre.references[0].startswith(f"references/{CAM}/home-")
    assert (tmp_path / pre.references[0]).exists()
    # comments and every other line of the site file are kept
    before, after = SITE_FILE.read_text().splitlines(), out.read_text().splitlines()
    assert len(after) == len(before) + 1 and [x for x in after if x not in before] == [
        f"        reference_image: {pre.references[0]}"]
    agent = EdgeAgent(load_site(out), CAM, FrameGrabber(str(vtest_path)), CrowdCounter(detector), None,
                      config_dir=tmp_path)
    assert len(agent.views.refs["home"]) == 1
    assert agent.process(time.time(), np.roll(frames[10], 80, axis=1)) is None and agent.state == "view_moved"
    # a black frame is refused as a reference, with the reason, and nothing is written
    cv2.imwrite(str(frame), black(frames[0]))
    r = subprocess.run(run[:-2] + ["--out", str(tmp_path / "other.yaml")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "texture" in r.stderr and not (tmp_path / "other.yaml").exists()


def test_view_checks_follow_capture_time_not_the_machines_speed(site, detector, frames, vtest_path):
    """Once per `edge.check_interval_s` (1 s) of the frames' capture time, however fast or slow
    the frames are processed; a clock stepped back checks again at once."""
    agent = agent_for(site, detector, vtest_path)
    checked = []
    check = agent.views.check
    agent.views.check = lambda pid, f: checked.append(pid) or check(pid, f)
    t0 = 1_000_000.0
    for i in range(20):  # 0.19 s of capture time, processed in seconds: one check
        assert agent.process(t0 + 0.01 * i, frames[i]) is not None
    assert len(checked) == 1
    for k in range(1, 6):  # one frame a second of capture time, processed at once: each checked
        assert agent.process(t0 + k, frames[20 + k]) is not None
    assert len(checked) == 6
    agent.process(t0 - 60, frames[30])  # the clock stepped back a minute
    assert len(checked) == 7
