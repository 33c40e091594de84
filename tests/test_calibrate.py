"""`crowdflow calibrate`: hand-worked points, refusals with reasons, write-back keeping comments."""

from __future__ import annotations

import difflib
import subprocess
import sys

import numpy as np
import pytest

from crowdflow.site import load_site
from edge.calibrate import PointPair, check, write_points
from edge.geometry import Homography

from .conftest import REPO, SITE_FILE

CAM = "cam-cangbai-plaza"


def hand_points(site, n=6):
    """A top-down view: 1 px = 5 cm, image x east, image y south, from a fixed ground origin."""
    x0, y0 = site.projection.to_metric([(106.5794, 29.5638)])[0]
    pix = [(40.0, 40.0), (440.0, 40.0), (440.0, 320.0), (40.0, 320.0), (240.0, 180.0), (100.0, 250.0)][:n]
    ground = [(x0 + 0.05 * u, y0 - 0.05 * v) for u, v in pix]
    return [PointPair(p, ll) for p, ll in zip(pix, site.projection.to_lonlat(ground))], (x0, y0)


def test_homography_reproduces_hand_worked_ground_points(site):
    pts, (x0, y0) = hand_points(site)
    ground = np.array(site.projection.to_metric([p.lonlat for p in pts]))
    hom = Homography(np.array([p.pixel for p in pts]), ground)
    # (300, 60) px is 15 m east and 3 m south of the origin.
    assert hom.to_ground(np.array([[300.0, 60.0]]))[0] == pytest.approx([x0 + 15.0, y0 - 3.0], abs=1e-3)
    assert hom.to_image(np.array([[x0 + 15.0, y0 - 3.0]]))[0] == pytest.approx([300.0, 60.0], abs=1e-3)
    rep = check(site, pts, (480, 360))
    assert rep.ok and rep.rms_m < 0.01


def test_bad_calibrations_are_refused_with_the_reason(site):
    pts, _ = hand_points(site)
    typo = list(pts)
    lon, lat = typo[5].lonlat
    typo[5] = PointPair(typo[5].pixel, (lon, lat + 0.0001))  # ~11 m north: a mistyped digit
    rep = check(site, typo, (480, 360))
    assert not rep.ok and "m off" in rep.reason and rep.errors_m[5] > 2.5
    rep = check(site, pts[:4], (480, 360))
    assert not rep.ok and "5th point" in rep.reason
    line = [PointPair((10.0 * i, 10.0 * i), p.lonlat) for i, p in enumerate(pts)]
    assert not check(site, line, (480, 360)).ok
    outside = [PointPair((900.0, 10.0), pts[0].lonlat), *pts[1:]]
    assert "outside" in check(site, outside, (480, 360)).reason


def test_write_back_keeps_the_rest_of_the_file(site, tmp_path):
    pts, _ = hand_points(site)
    out = tmp_path / "site.yaml"
    write_points(SITE_FILE, CAM, "home", (480, 360), pts, out=out)
    before, after = SITE_FILE.read_text().splitlines(), out.read_text().splitlines()
    assert [x for x in before if x.lstrip().startswith("#")] == [x for x in after if x.lstrip().startswith("#")]
    diff = [x for x in difflib.unified_diff(before, after, lineterm="", n=0) if x[:1] in "+-" and x[:3] not in ("+++", "---")]
    assert len(diff) == 5 + 6 and all("pixel:" in x for x in diff)  # the points block only
    got = load_site(out).camera(CAM).preset("home")
    assert [p.pixel for p in got.points] == [pytest.approx(p.pixel) for p in pts]
    assert [p.lonlat for p in got.points] == [pytest.approx(p.lonlat, abs=1e-7) for p in pts]
    # A new preset is added to the camera.
    write_points(out, CAM, "left", (480, 360), pts, out=out)
    cam = load_site(out).camera(CAM)
    assert [p.id for p in cam.presets] == ["home", "left"]


def test_calibrate_cli_checks_and_writes(tmp_path, site):
    pts, _ = hand_points(site)
    csv = tmp_path / "pts.csv"
    csv.write_text("u,v,lon,lat\n" + "".join(f"{p.pixel[0]},{p.pixel[1]},{p.lonlat[0]},{p.lonlat[1]}\n" for p in pts))
    out = tmp_path / "site.yaml"
    ok = subprocess.run([sys.executable, "-m", "crowdflow.cli", "calibrate", "--config", str(SITE_FILE), "--camera", CAM,
                         "--points", str(csv), "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "RMS 0.00 m" in ok.stdout and out.exists()
    bad = subprocess.run([sys.executable, "-m", "crowdflow.cli", "calibrate", "--config", str(SITE_FILE), "--camera", CAM,
                          "--points", str(csv), "--point", f"100,100,{pts[0].lonlat[0] + 0.001},{pts[0].lonlat[1]}",
                          "--out", str(tmp_path / "bad.yaml")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 1 and "REFUSED" in bad.stdout and not (tmp_path / "bad.yaml").exists()
