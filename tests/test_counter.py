"""The crowd counter on real frames: person scale from the calibration, tile plans, seam
merging without double counts, the density loaders (the shipped head on the detector's
features, the MCNN release), and accuracy regression on dev photos."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from edge.counter import CounterSettings, CrowdCounter, PersonScale, Tile, merge_tiles, plan_tiles
from edge.density import DEFAULT_HEAD, DensityModel, DensityModelError, FeatureDensityModel, load_density_model
from edge.detector import Detections
from edge.geometry import CameraGeometry


@pytest.fixture(scope="module")
def mcnn_path(model_path):
    p = model_path.parent / "mcnn_shtechB_110.h5"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="module")
def mcnn(mcnn_path):
    return DensityModel(mcnn_path, threads=2)


@pytest.fixture(scope="module")
def density(model_path):
    """The default density model: the shipped head on the shared detector's features."""
    return load_density_model(DEFAULT_HEAD, model_path, threads=2)


@pytest.fixture(scope="module")
def vtest_frame(vtest_path):
    cap = cv2.VideoCapture(str(vtest_path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 150)  # a busy moment of the clip
    ok, f = cap.read()
    cap.release()
    assert ok
    return f


def test_person_scale_from_calibration_grows_toward_the_camera(site):
    cam = site.camera("cam-cangbai-plaza")
    g = CameraGeometry(site, cam)
    s = PersonScale.from_geometry(g, (480, 360))
    assert s.source == "calibration" and s.b > 0
    # Hand check at the bottom centre: head point from similar triangles, through the homography.
    foot = np.array([[240.0, 300.0]])
    G = g.homography.to_ground(foot)[0]
    H = cam.height_m
    head_g = G + (G - g.position_m) * 1.7 / (H - 1.7)
    expected = 300.0 - g.homography.to_image(head_g[None])[0, 1]
    assert s(300.0) == pytest.approx(expected, rel=0.1)
    # The same camera at twice the resolution: people are twice as tall in pixels.
    assert PersonScale.from_geometry(g, (960, 720))(600.0) == pytest.approx(2 * s(300.0), rel=1e-6)


def test_tile_plan_covers_the_frame_with_person_sized_overlaps():
    s = PersonScale(0.0, 0.12)  # 12 px people at row 100, 90 px at the bottom of a 768-row frame
    tiles = plan_tiles(1024, 768, s, 448, CounterSettings(max_tiles=12))
    assert 1 < len(tiles) <= 12
    cover = np.zeros((768, 1024), bool)
    for t in tiles:
        cover[t.y0:t.y1, t.x0:t.x1] = True
    assert cover.all()
    # Tiles higher up are smaller (more enlargement where people are small).
    assert min(t.size[0] for t in tiles if t.y0 == 0) < max(t.size[0] for t in tiles)
    # A frame whose people are large enough at the detector's input is one tile.
    assert plan_tiles(480, 360, PersonScale(80.0, 0.0), 448) == [Tile(0, 0, 480, 360)]


def test_merge_drops_boxes_cut_by_a_seam_and_duplicates_in_overlaps():
    # One person at x 90–130 seen whole in the right tile, cut in the left one, and a second
    # person inside the overlap seen whole by both tiles.
    tiles = [Tile(0, 0, 120, 200), Tile(80, 0, 200, 200)]
    left = Detections(np.array([[90.0, 10, 119.5, 100], [85.0, 110, 110, 190]]), np.array([0.8, 0.9]))
    right = Detections(np.array([[10.0, 10, 50, 100], [5.0, 111, 30, 190]]), np.array([0.85, 0.7]))
    merged = merge_tiles(tiles, [left, right], 200, 200, 448, CounterSettings())
    assert len(merged) == 2
    assert np.allclose(sorted(merged.xyxy[:, 0]), [85.0, 90.0])


def test_tiled_detection_has_no_double_counts_on_seams(detector, vtest_frame):
    """vtest enlarged 2×: people are big, so a single pass is reliable; forcing small tiles puts
    seams through people, and the merged count must still match."""
    big = cv2.resize(vtest_frame, (960, 720))
    single = detector(big)
    counter = CrowdCounter(detector, settings=CounterSettings(target_px=200, max_upscale=1.6, max_tiles=12,
                                                          tile_conf=detector.conf))  # same threshold as the single pass
    tiled, tiles = counter.detect_tiled(big, PersonScale(120.0, 0.0))
    assert len(tiles) >= 4
    # Some single-pass people are crossed by an interior seam.
    seams_x = {t.x0 for t in tiles if t.x0 > 0} | {t.x1 for t in tiles if t.x1 < 960}
    seams_y = {t.y0 for t in tiles if t.y0 > 0} | {t.y1 for t in tiles if t.y1 < 720}
    crossed = sum(any(b[0] < x < b[2] for x in seams_x) or any(b[1] < y < b[3] for y in seams_y)
                  for b in single.xyxy)
    assert len(single) >= 5 and crossed >= 3
    assert abs(len(tiled) - len(single)) <= max(1, round(0.15 * len(single)))
    # No two merged boxes are the same person (heavy overlap).
    from torchvision.ops import box_iou
    import torch

    iou = box_iou(torch.tensor(tiled.xyxy), torch.tensor(tiled.xyxy)).numpy()
    np.fill_diagonal(iou, 0)
    assert iou.max() < 0.5


def test_mcnn_loads_through_the_generic_loader_and_round_trips(mcnn, tmp_path, shtech_dir):
    import torch

    density = mcnn
    img = cv2.imread(str(shtech_dir / "images" / "IMG_1.jpg"))
    res = density(img)
    assert res.density.shape == (768 // 4, 1024 // 4)
    assert density.backend in ("openvino", "torch")
    # Our own state-dict format gives the same network.
    p = tmp_path / "mcnn.pt"
    torch.save({"arch": "mcnn", "state_dict": density.net.state_dict()}, p)
    again = DensityModel(p, backend="torch")
    assert again(img).count == pytest.approx(res.count, rel=0.01)  # OpenVINO vs eager PyTorch
    # A file for another network is refused, naming the tensor.
    bad = {k: v for k, v in density.net.state_dict().items()}
    bad["fuse.0.weight"] = torch.zeros(1, 31, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(DensityModelError, match="fuse.0.weight"):
        DensityModel(tmp_path / "bad.pt")
    with pytest.raises(DensityModelError, match="not found"):
        DensityModel(tmp_path / "missing.h5")


# Accuracy regression on validation photos (every 5th, sorted by name; see
# scripts/eval_counting.py), which neither the detector nor the density head was trained on.
# Measured by that script (docs/performance.md): on these six the automatic counter's
# relative errors are 0.17, 0.26, 0.11, 0.10, 0.19, 0.09 (mean 0.15), and 10.6 % over the
# whole validation part. The limits allow about 1.5× the measured mean and 0.45 for one
# photo, so a change that makes counting clearly worse fails here.
REGRESSION = {  # image: the method the regime choice must make
    "IMG_158.jpg": "density",  # 12 people (density from 8: edge.counter.CounterSettings.dense_count)
    "IMG_293.jpg": "density",  # 23
    "IMG_19.jpg": "density",  # 43
    "IMG_90.jpg": "density",  # 84
    "IMG_1.jpg": "density",  # 233
    "IMG_117.jpg": "density",  # 281
}
MEAN_REL_ERROR_LIMIT = 0.25
ONE_REL_ERROR_LIMIT = 0.45


def test_accuracy_regression_on_dev_photos(detector, density, shtech_dir):
    with open(shtech_dir / "counts.csv") as f:
        gt = {r["image_file"]: int(r["count"]) for r in csv.DictReader(f)}
    counter = CrowdCounter(detector, density)
    errs = {}
    for name, regime in REGRESSION.items():
        res = counter.count(cv2.imread(str(shtech_dir / "images" / name)))
        assert (res.method == "density") == (regime == "density"), (name, res.method)
        assert 0 < res.confidence <= 1
        errs[name] = abs(res.count - gt[name]) / gt[name]
    assert max(errs.values()) <= ONE_REL_ERROR_LIMIT, errs
    assert np.mean(list(errs.values())) <= MEAN_REL_ERROR_LIMIT, errs


# Fixed CCTV views the counter never trained on: every 6th frame of the Beijing-BRT groups held
# back from training and from every choice (edge.datasets.BRT_VAL_GROUPS; 28 frames, 10–48
# people, overhead platform cameras, daylight and dusk), counted as `crowdflow count` counts.
# Measured (scripts/eval_counting.py --set brt, docs/performance.md): mean relative error 0.19
# on these 28 (17.3 % on all 165 held-back frames). The limit is about 1.3× that: a head or a
# policy change that reads unseen CCTV views clearly worse fails here. The ≤ 10 % target is not
# met (docs/performance.md says by how much).
BRT_LIMIT = 0.25


def test_cctv_accuracy_on_held_back_views(detector, density):
    from edge import datasets

    from .conftest import SHARED, shared_path

    shared_path("data", "beijing_brt_cctv")
    samples = [s for s in datasets.load("brt", SHARED) if s.part == "val"][::6]
    counter = CrowdCounter(detector, density)
    errs = {s.name: abs(counter.count(cv2.imread(str(s.path))).count - s.count) / s.count for s in samples}
    assert len(errs) >= 25 and {s.group for s in samples} >= {"1-20170419", "2-20170506", "2-20170507"}
    assert np.mean(list(errs.values())) <= BRT_LIMIT, {k: round(v, 2) for k, v in errs.items()}


def test_density_head_reads_the_detector_features_at_any_frame_size(density, model_path, shtech_dir, vtest_frame):
    assert isinstance(density, FeatureDensityModel) and density.features.backend == "openvino"
    import json

    img = cv2.imread(str(shtech_dir / "images" / "IMG_117.jpg"))  # a validation photo: 281 people
    heads = np.array(json.loads((shtech_dir / "points.json").read_text())["IMG_117.jpg"])
    res = density(img)
    assert res.density.shape == (768 // 8, 1024 // 8)
    assert res.count == pytest.approx(float(res.density.sum()), rel=1e-4)
    assert abs(res.count - len(heads)) / len(heads) < 0.2  # measured 257 (−9 %)
    # The map puts people where the annotated heads are: each quarter of the photo (165, 108,
    # 5 and 3 heads) gets its share.
    seen = res.density.reshape(2, 48, 2, 64).sum(axis=(1, 3)).ravel()
    truth = np.histogram2d(heads[:, 1], heads[:, 0], bins=[2, 2], range=[[0, 768], [0, 1024]])[0].ravel()
    assert np.all(np.abs(seen - truth) <= np.maximum(5, 0.25 * truth)), (seen, truth)
    # A frame that is no multiple of 32 (vtest: 768×576 after scaling) and one over max_side
    # (scaled down inside) both give a map on the frame's own 1/8 grid with the same sum.
    odd = cv2.resize(vtest_frame, (770, 578))
    r = density(odd)
    assert r.density.shape == (578 // 8, 770 // 8) and r.count == pytest.approx(float(r.density.sum()), rel=1e-3)
    big = cv2.resize(img, (2048, 1536), interpolation=cv2.INTER_CUBIC)
    rb = density(big)
    assert rb.density.shape == (1536 // 8, 2048 // 8)
    assert rb.count == pytest.approx(res.count, rel=0.05)  # both seen at the head's 1280 px
    # A low-resolution camera: the frame is brought up to the head's size, people with it.
    assert density.input_side == 1280
    small = density(cv2.resize(img, (512, 384), interpolation=cv2.INTER_AREA))
    assert small.density.shape == (384 // 8, 512 // 8)
    assert abs(small.count - len(heads)) / len(heads) < 0.25


def test_density_head_refuses_a_detector_it_was_not_trained_for(model_path, tmp_path):
    import torch

    obj = torch.load(DEFAULT_HEAD, map_location="cpu", weights_only=True)
    assert obj["arch"] == "yolo-neck-head" and obj["meta"]["shtech/val"]["mae"] > 0 and obj["meta"]["brt/val"]["mae"] > 0
    # A head file that claims other channel counts (as a head for YOLO11s would) is refused,
    # naming what the detector gives and what the head needs.
    obj = dict(obj, channels=[128, 256])
    obj["state_dict"] = {k: (torch.zeros(v.shape[0], v.shape[1] * 2, *v.shape[2:]) if k in ("p3.weight", "p4.weight") else v)
                         for k, v in obj["state_dict"].items()}
    bad = tmp_path / "head-s.pt"
    torch.save(obj, bad)
    with pytest.raises(DensityModelError, match=r"gives \[64, 128\] channels"):
        load_density_model(bad, model_path)
    with pytest.raises(DensityModelError, match="no detector"):
        load_density_model(DEFAULT_HEAD, None)
    # The head's own weights must fit its declared shape.
    obj = torch.load(DEFAULT_HEAD, map_location="cpu", weights_only=True)
    obj["state_dict"]["body.1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(obj, bad)
    with pytest.raises(DensityModelError, match="do not fit"):
        load_density_model(bad, model_path)


def test_density_model_resolution_order(monkeypatch, model_path):
    from edge.density import open_density_model, resolve_density_model

    monkeypatch.delenv("CROWDFLOW_DENSITY_MODEL", raising=False)
    assert resolve_density_model(None, None) == str(DEFAULT_HEAD)  # shipped with the repo
    assert resolve_density_model("cfg.h5", None) == "cfg.h5"
    monkeypatch.setenv("CROWDFLOW_DENSITY_MODEL", "env.h5")
    assert resolve_density_model("cfg.h5", None) == "env.h5"
    assert resolve_density_model("cfg.h5", "arg.h5") == "arg.h5"
    assert resolve_density_model("cfg.h5", "none") is None
    monkeypatch.setenv("CROWDFLOW_DENSITY_MODEL", "off")
    assert open_density_model("cfg.h5", None, model_path) is None
    # A file someone named must exist; the error says which.
    monkeypatch.delenv("CROWDFLOW_DENSITY_MODEL")
    with pytest.raises(DensityModelError, match="missing.pt"):
        open_density_model("missing.pt", None, model_path)


def test_detector_features_from_pytorch_weights_have_the_heads_shapes(tmp_path):
    """The .pt path (what a machine with internet runs, yolo11n.pt): forward hooks on the same
    layers. Built here from ultralytics' yolo11n.yaml (no download; untrained weights), so only
    the plumbing is checked: the layers, channel counts and strides the head reads."""
    from ultralytics import YOLO

    from edge.density import DetectorFeatures

    p = tmp_path / "yolo11n-untrained.pt"
    YOLO("yolo11n.yaml").save(str(p))
    f = DetectorFeatures(p, [16, 19, 22])
    assert f.backend == "torch"
    a3, a4, a5 = f(np.random.default_rng(0).random((1, 3, 256, 320), dtype=np.float32))
    assert a3.shape == (1, 64, 32, 40) and a4.shape == (1, 128, 16, 20) and a5.shape == (1, 256, 8, 10)


def test_density_head_on_a_sparse_cctv_view_counts_people_not_clutter(density, vtest_path):
    """vtest (PETS 2009, an elevated campus camera, 3–8 people among cones, a tripod and grass)
    hand-counted on frames the head never trained on (tests/data/vtest_hand_counts.csv;
    frames from 400 on). Before the head saw pseudo-labelled frames 0–399 of this view it
    read about twice the people there (mean relative error 1.26); measured now 0.16."""
    from .conftest import REPO

    with open(REPO / "tests" / "data" / "vtest_hand_counts.csv") as f:
        truth = {int(r["frame"]): int(r["count"]) for r in csv.DictReader(f) if int(r["frame"]) >= 400}
    cap = cv2.VideoCapture(str(vtest_path))
    errs = {}
    for i, n in truth.items():
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        assert ok
        errs[i] = abs(density(frame).count - n) / n
    cap.release()
    assert np.mean(list(errs.values())) <= 0.25 and max(errs.values()) <= 0.5, errs


def test_detector_features_keep_a_bounded_set_of_compiled_sizes(model_path):
    from edge.density import DetectorFeatures

    f = DetectorFeatures(model_path, [16, 19], threads=2)
    f.MAX_SIZES = 2
    for h, w in ((64, 64), (64, 96), (64, 64), (96, 64)):
        a3, a4 = f(np.zeros((1, 3, h, w), np.float32))
        assert a3.shape[2:] == (h // 8, w // 8) and a4.shape[2:] == (h // 16, w // 16)
    assert list(f._compiled) == [(64, 64), (96, 64)]  # 64×96 was the least recently used
