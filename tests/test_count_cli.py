"""`crowdflow count` on real photos and real video."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2

from .conftest import REPO


def run(*args, model_path) -> subprocess.CompletedProcess:
    """No --density-model: the shipped density head, as a user gets it."""
    return subprocess.run([sys.executable, "-m", "crowdflow.cli", "count", *args, "--model", str(model_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_count_folder_json(shtech_dir, model_path, tmp_path):
    res = run(str(shtech_dir / "images"), "--json", "--limit", "3", "--csv", str(tmp_path / "c.csv"),
              "--json-out", str(tmp_path / "c.json"), "--annotate", str(tmp_path / "ann"), model_path=model_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 3
    for rec in lines:
        assert {"source", "frame", "count", "method", "confidence", "ms"} <= set(rec)
        assert rec["source"].endswith(".jpg") and rec["frame"] == 0
        assert rec["count"] > 10  # every ShanghaiTech B photo has 12+ people
        assert rec["method"] in ("detect", "tiled", "density") and 0 < rec["confidence"] <= 1
    assert "3/3" in res.stderr  # the progress bar went to stderr
    assert json.loads((tmp_path / "c.json").read_text()) == lines
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert [float(r["count"]) for r in rows] == [x["count"] for x in lines]
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == sorted(Path(x["source"]).name for x in lines)


def test_count_video_frames(vtest_path, model_path, tmp_path):
    out = tmp_path / "v.mp4"
    res = run(str(vtest_path), "--json", "--limit", "5", "--camera", "cam-cangbai-plaza", "--annotate", str(out),
              model_path=model_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["frame"] for x in lines] == [0, 1, 2, 3, 4]
    assert all(x["count"] >= 1 and x["method"] != "density" for x in lines)  # a sparse plaza
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()


def test_count_missing_input_is_a_clear_error(model_path, tmp_path):
    res = run(str(tmp_path / "nothing.mp4"), model_path=model_path)
    assert res.returncode == 2 and "input not found" in res.stderr


def test_count_with_another_density_model_and_with_none(shtech_dir, model_path):
    img = str(shtech_dir / "images" / "IMG_117.jpg")  # 281 people
    mcnn = run(img, "--json", "--density-model", str(model_path.parent / "mcnn_shtechB_110.h5"), model_path=model_path)
    assert mcnn.returncode == 0, mcnn.stderr
    rec = json.loads(mcnn.stdout)
    assert rec["method"] == "density" and rec["count"] > 150
    off = run(img, "--json", "--density-model", "none", model_path=model_path)
    assert off.returncode == 0 and "detection only" in off.stderr
    assert json.loads(off.stdout)["method"] != "density"
    bad = run(img, "--density-model", "nowhere.pt", model_path=model_path)
    assert bad.returncode == 2 and "nowhere.pt" in bad.stderr
