"""`crowdflow count` on real photos and real video."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO


def run(*args, model_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crowdflow.cli", "count", *args, "--model", str(model_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_count_folder_json(shtech_dir, model_path):
    res = run(str(shtech_dir / "images"), "--json", "--limit", "3", model_path=model_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 3
    for rec in lines:
        assert {"source", "frame", "count", "ms"} <= set(rec)
        assert rec["source"].endswith(".jpg") and rec["frame"] == 0
        assert rec["count"] > 0  # every ShanghaiTech B photo has 12+ people
    assert "3/3" in res.stderr  # the progress bar went to stderr


def test_count_video_frames(vtest_path, model_path):
    res = run(str(vtest_path), "--json", "--limit", "5", model_path=model_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["frame"] for x in lines] == [0, 1, 2, 3, 4]
    assert all(x["count"] >= 1 for x in lines)


def test_count_missing_input_is_a_clear_error(model_path, tmp_path):
    res = run(str(tmp_path / "nothing.mp4"), model_path=model_path)
    assert res.returncode == 2 and "input not found" in res.stderr
