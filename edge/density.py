"""Density-map crowd counting: density heads on the detector's features, and MCNN-style nets.

A density model maps an image to a map whose sum is the number of people. Two families load
through :func:`load_density_model`:

* :class:`FeatureDensityModel`, the default: a small head (``models/yolo11n-density-head.pt``,
  trained by ``scripts/train_density_head.py``) on the neck features of the YOLO detector the
  agent already runs, computed at the frame's own resolution. The detector's COCO features
  generalise to unseen views far better than a small network trained on one dataset (on the
  held-back ShanghaiTech B photos it has never seen: MAE 13.3 against MCNN's 23.5 on photos
  MCNN was trained on; docs/performance.md).
* :class:`DensityModel`: self-contained multi-column networks such as the MCNN release. The
  network is described as data (:data:`ARCHITECTURES`: columns of conv layers, pools and a
  1×1 fuse), so other multi-column density models load through the same code. Weights come from

* ``.h5`` files of tensors named ``<prefix><branch>.<layer>.conv.{weight,bias}`` (the MCNN
  release: ``DME.branch1.0.conv.weight`` …), or
* ``.pt``/``.pth`` files holding a state dict of :class:`DensityNet`, optionally
  ``{"arch": ..., "state_dict": ...}``.

Names are matched after stripping the common prefix and the ``.conv`` infix, and every tensor
must be used with the right shape: a file for another network is refused with the first
mismatch named, never half-loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (out_channels, kernel, pool_after) per conv layer, per column; then a 1×1 fuse conv.
ARCHITECTURES: dict[str, dict] = {
    "mcnn": {
        "in_channels": 1,
        "grayscale": True,
        "stride": 4,
        "columns": [
            [(16, 9, True), (32, 7, True), (16, 7, False), (8, 7, False)],
            [(20, 7, True), (40, 5, True), (20, 5, False), (10, 5, False)],
            [(24, 5, True), (48, 3, True), (24, 3, False), (12, 3, False)],
        ],
    },
}


class DensityModelError(ValueError):
    pass


DEFAULT_HEAD = Path(__file__).resolve().parents[1] / "models" / "yolo11n-density-head.pt"
NONE = {"none", "off", ""}


def resolve_density_model(configured: str | None = None, override: str | None = None) -> str | None:
    """``--density-model`` beats ``CROWDFLOW_DENSITY_MODEL`` beats ``edge.density_model`` beats
    the shipped head (:data:`DEFAULT_HEAD`); ``none`` turns density counting off (None)."""
    v = _named_density_model(configured, override)
    if v is not None:
        return None if v.strip().lower() in NONE else v
    return str(DEFAULT_HEAD) if DEFAULT_HEAD.exists() else None


def _named_density_model(configured: str | None, override: str | None) -> str | None:
    """The first density-model setting someone made, or None (the default applies)."""
    import os

    return next((v for v in (override, os.environ.get("CROWDFLOW_DENSITY_MODEL"), configured) if v is not None), None)


def open_density_model(configured: str | None, override: str | None, detector_model: str | Path,
                       threads: int | None = None):
    """The density model the settings name (None when off). A broken or unfit file someone
    named is an error; the shipped default head that does not fit the detector in use (another
    YOLO size) is skipped with a warning, leaving detection only."""
    import logging

    named = _named_density_model(configured, override)
    path = resolve_density_model(configured, override)
    if path is None:
        return None
    try:
        return load_density_model(path, detector_model, threads)
    except DensityModelError as e:
        if named is not None:
            raise
        logging.getLogger(__name__).warning("default density head not used: %s", e)
        return None


def load_density_model(path: str | Path, detector_model: str | Path | None = None, threads: int | None = None):
    """A :class:`FeatureDensityModel` for a head file (it needs the detector's weights, whose
    features it reads), else a :class:`DensityModel`."""
    path = Path(path)
    if not path.exists():
        raise DensityModelError(f"density weights not found: {path}")
    if path.suffix.lower() in {".pt", ".pth"}:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and obj.get("arch") in HEADS:
            if detector_model is None:
                raise DensityModelError(f"{path}: a density head reads the detector's features; no detector given")
            return FeatureDensityModel(path, detector_model, threads=threads, _loaded=obj)
    return DensityModel(path, threads=threads)


def _build(arch: dict):
    import torch
    from torch import nn

    class DensityNet(nn.Module):
        """Columns of ``Conv-ReLU(-MaxPool)`` over one input, concatenated, fused by a 1×1 conv."""

        def __init__(self):
            super().__init__()
            self.columns = nn.ModuleList()
            total = 0
            for col in arch["columns"]:
                layers: list[nn.Module] = []
                c_in = arch["in_channels"]
                for c_out, k, pool in col:
                    layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.ReLU(inplace=True)]
                    if pool:
                        layers.append(nn.MaxPool2d(2))
                    c_in = c_out
                self.columns.append(nn.Sequential(*layers))
                total += c_in
            self.fuse = nn.Sequential(nn.Conv2d(total, 1, 1), nn.ReLU(inplace=True))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fuse(torch.cat([c(x) for c in self.columns], dim=1))

    return DensityNet()


def _conv_names(arch: dict) -> list[tuple[str, str]]:
    """(our state-dict prefix, canonical name) of every conv, in order.

    Canonical names follow the MCNN release: ``branch{i}.{layer}`` where ``layer`` is the
    index in a Sequential that has a MaxPool2d after the pooled convs (0, 2, 4, 5 for MCNN)."""
    out = []
    for i, col in enumerate(arch["columns"]):
        ours, theirs = 0, 0
        for _, _, pool in col:
            out.append((f"columns.{i}.{ours}", f"branch{i + 1}.{theirs}"))
            ours += 3 if pool else 2  # conv, relu(, pool)
            theirs += 2 if pool else 1  # conv(, pool): the release's layers fold the ReLU in
    out.append(("fuse.0", "fuse.0"))
    return out


def _read_tensors(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    if path.suffix.lower() in {".h5", ".hdf5"}:
        import h5py

        tensors: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: tensors.__setitem__(name.replace("/", "."), np.asarray(obj))
                         if isinstance(obj, h5py.Dataset) else None)
        return tensors, None
    if path.suffix.lower() in {".pt", ".pth"}:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        arch = None
        if isinstance(obj, dict) and "state_dict" in obj:
            arch = obj.get("arch")
            obj = obj["state_dict"]
        return {k: v.numpy() for k, v in obj.items()}, arch
    raise DensityModelError(f"{path}: unknown weights format {path.suffix!r} (use .h5 or .pt)")


def _canonical(name: str) -> str:
    name = name.replace(".conv.", ".")
    for head in ("module.", "DME."):
        if name.startswith(head):
            name = name[len(head):]
    return name


@dataclass
class DensityResult:
    density: np.ndarray  # H/stride × W/stride, persons per cell
    count: float


class DensityModel:
    """Loads a density network and counts people in BGR frames."""

    def __init__(self, path: str | Path, arch: str | None = None, threads: int | None = None,
                 backend: str = "auto"):
        import torch

        path = Path(path)
        if not path.exists():
            raise DensityModelError(f"density weights not found: {path}")
        tensors, file_arch = _read_tensors(path)
        self.arch_name = arch or file_arch or "mcnn"
        if self.arch_name not in ARCHITECTURES:
            raise DensityModelError(f"{path}: unknown architecture {self.arch_name!r} (known: {sorted(ARCHITECTURES)})")
        self.arch = ARCHITECTURES[self.arch_name]
        self.path = path
        self.net = _build(self.arch)
        state = self.net.state_dict()
        if all(k in tensors for k in state):  # our own state dict
            loaded = {k: torch.from_numpy(np.asarray(tensors[k])) for k in state}
        else:
            canon = {_canonical(k): v for k, v in tensors.items()}
            loaded = {}
            for ours, theirs in _conv_names(self.arch):
                for part in ("weight", "bias"):
                    key = f"{theirs}.{part}"
                    if key not in canon:
                        raise DensityModelError(f"{path}: no tensor {key!r} for a {self.arch_name} network")
                    loaded[f"{ours}.{part}"] = torch.from_numpy(np.asarray(canon.pop(key), dtype=np.float32))
            if canon:
                raise DensityModelError(f"{path}: tensors not used by {self.arch_name}: {sorted(canon)[:5]}")
        for k, v in loaded.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise DensityModelError(f"{path}: {k} has shape {tuple(v.shape)}, {self.arch_name} needs {tuple(state[k].shape)}")
        self.net.load_state_dict(loaded)
        self.net.eval()
        if threads:
            torch.set_num_threads(threads)
        self.stride = self.arch["stride"]
        self.backend = "torch"
        self._compiled = None
        if backend in ("auto", "openvino"):
            try:  # OpenVINO runs this net ~10× faster than eager PyTorch on a 2-core CPU
                import openvino as ov

                example = torch.zeros(1, self.arch["in_channels"], 64, 64)
                om = ov.convert_model(self.net, example_input=example,
                                      input=[(1, self.arch["in_channels"], -1, -1)])
                cfg = {"INFERENCE_NUM_THREADS": threads} if threads else {}
                self._compiled = ov.Core().compile_model(om, "CPU", cfg)
                self.backend = "openvino"
            except Exception:
                if backend == "openvino":
                    raise

    def prepare(self, bgr: np.ndarray):
        import cv2
        import torch

        if self.arch["grayscale"]:
            img = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
            x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
        else:
            x = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1], dtype=np.float32)).permute(2, 0, 1)[None]
        return x  # raw 0–255 values, as the MCNN release was trained

    def __call__(self, bgr: np.ndarray, side: int | None = None) -> DensityResult:
        """``side`` is accepted for the common interface and ignored: these nets run on the
        frame as it is."""
        import torch

        x = self.prepare(bgr)
        if self._compiled is not None:
            d = np.asarray(self._compiled(x.numpy())[0])[0, 0]
        else:
            with torch.inference_mode():
                d = self.net(x)[0, 0].numpy()
        return DensityResult(d, float(d.sum()))


# ---- density heads on the detector's features ---------------------------------------------

# A head reads these neck layers of an ultralytics YOLO detector (strides 8 and 16) and writes
# a map at the first one's stride.
HEADS: dict[str, dict] = {
    "yolo-neck-head": {"layers": [16, 19], "stride": 8},
    # + layer 22 (stride 32): the context of a whole queue or platform end, for a map still at stride 8
    "yolo-neck-head-p5": {"layers": [16, 19, 22], "stride": 8},
}
HEAD_SCALE = 100.0  # heads are trained on density × 100 (better conditioned); outputs are divided back


def _build_head(channels: list[int], hidden: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class NeckDensityHead(nn.Module):
        """Stride-8, stride-16 (and stride-32) features → 1×1 projections, summed (the coarse
        ones upsampled) → two 3×3 conv-ReLU → 1×1 → ReLU: a stride-8 density map (× HEAD_SCALE)."""

        def __init__(self):
            super().__init__()
            self.p3 = nn.Conv2d(channels[0], hidden, 1)
            self.p4 = nn.Conv2d(channels[1], hidden, 1)
            if len(channels) > 2:
                self.p5 = nn.Conv2d(channels[2], hidden, 1)
            self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(hidden, hidden // 2, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(hidden // 2, 1, 1), nn.ReLU())
            # start with a small positive density everywhere: a random start whose last layer is
            # negative everywhere never learns (its ReLU passes no gradient)
            nn.init.constant_(self.body[-2].bias, 0.1)

        def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor | None = None) -> torch.Tensor:
            x = self.p3(p3) + F.interpolate(self.p4(p4), scale_factor=2, mode="nearest")
            if p5 is not None:
                x = x + F.interpolate(self.p5(p5), scale_factor=4, mode="nearest")
            return self.body(x)

    return NeckDensityHead()


def feature_input(bgr: np.ndarray, side: int | None = None, max_side: int = 1280) -> tuple[np.ndarray, float]:
    """(1×3×H×W float32 RGB in 0–1, scale f): the frame scaled to a long side of ``side`` px
    (up or down), or without ``side`` only down to ``max_side``; padded right and bottom to a
    multiple of 32 with ultralytics' grey (114). No letterbox: a pixel (x, y) of the frame is
    (x·f, y·f) of the input."""
    import cv2

    img = bgr if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    f = side / max(h, w) if side else min(1.0, max_side / max(h, w))
    if f != 1.0:
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))),
                         interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    hh, ww = img.shape[:2]
    pad = np.full((-(-hh // 32) * 32, -(-ww // 32) * 32, 3), 114, np.uint8)
    pad[:hh, :ww] = img
    return np.ascontiguousarray(pad[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255.0, f


def density_target(points, h: int, w: int, sigma: float, stride: int = 8, flip: bool = False) -> np.ndarray:
    """Training target: head points (x, y) spread by a Gaussian of ``sigma`` px and summed into
    ``stride``-px cells, so the map sums to the number of points (``flip``: mirrored)."""
    import cv2

    m = np.zeros((h, w), np.float32)
    for x, y in points:
        x = w - 1 - x if flip else x
        m[min(h - 1, max(0, int(y))), min(w - 1, max(0, int(x)))] += 1
    if sigma > 0 and len(points):
        m = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        m *= len(points) / max(float(m.sum()), 1e-9)
    hh, ww = h // stride, w // stride
    return m[: hh * stride, : ww * stride].reshape(hh, stride, ww, stride).sum(axis=(1, 3))


class DetectorFeatures:
    """Neck feature maps of an ultralytics YOLO detector at the input's own resolution.

    * OpenVINO exports (a ``*_openvino_model`` folder or its ``.xml``): the graph is cut after
      the layers' final activation and reshaped to each input size (compiled once per size), so
      an export made for 448×448 detection serves full frames.
    * PyTorch weights (``.pt``): forward hooks on the same layers of ultralytics' model.

    Input: 1×3×H×W float32 RGB in 0–1, H and W multiples of 32. Output: one array per layer."""

    def __init__(self, model: str | Path, layers: list[int], threads: int | None = None):
        self.model = Path(model)
        self.layers = list(layers)
        self.threads = threads
        self._compiled: dict[tuple[int, int], object] = {}
        xml = None
        if self.model.suffix == ".xml":
            xml = self.model
        elif self.model.is_dir():
            xml = next(iter(sorted(self.model.glob("*.xml"))), None)
        if xml is not None:
            self.backend, self._xml = "openvino", xml
        elif self.model.suffix == ".pt" or not self.model.exists():
            self.backend = "torch"
            self._hooked = self._hook_torch()
        else:
            raise DensityModelError(f"{model}: a density head needs the detector as an OpenVINO export or .pt weights")

    def _hook_torch(self):
        from ultralytics import YOLO

        net = YOLO(str(self.model), task="detect").model.float().eval()
        self._out: dict[int, object] = {}
        for i in self.layers:
            net.model[i].register_forward_hook(lambda _m, _i, out, i=i: self._out.__setitem__(i, out))
        return net

    MAX_SIZES = 8  # compiled input sizes kept (a folder of photos of many sizes evicts the oldest)

    def _openvino(self, h: int, w: int):
        if (h, w) in self._compiled:
            self._compiled[(h, w)] = self._compiled.pop((h, w))  # most recently used last
        else:
            while len(self._compiled) >= self.MAX_SIZES:
                self._compiled.pop(next(iter(self._compiled)))
            import openvino as ov

            core = ov.Core()
            m = core.read_model(str(self._xml))
            ops = {o.get_friendly_name(): o for o in m.get_ordered_ops()}
            outs = []
            for i in self.layers:
                conv = ops.get(f"__module.model.{i}.cv2.conv/aten::_convolution/Add")
                if conv is None:
                    raise DensityModelError(f"{self._xml}: no layer {i} output (model.{i}.cv2) in this export")
                acts = [t.get_node() for t in conv.output(0).get_target_inputs()
                        if t.get_node().get_type_name() == "Swish"]
                if not acts:
                    raise DensityModelError(f"{self._xml}: layer {i} has no SiLU output")
                outs.append(acts[0].output(0))
            sub = ov.Model(outs, m.get_parameters(), "neck")
            sub.reshape({0: [1, 3, h, w]})
            cfg = {"INFERENCE_NUM_THREADS": self.threads} if self.threads else {}
            self._compiled[(h, w)] = core.compile_model(sub, "CPU", cfg)
        return self._compiled[(h, w)]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        h, w = x.shape[2:]
        if self.backend == "openvino":
            return [np.asarray(v) for v in self._openvino(h, w)(x).values()]
        import torch

        with torch.inference_mode():
            self._hooked(torch.from_numpy(x))
        return [self._out[i].numpy() for i in self.layers]


class FeatureDensityModel:
    """A density head (:data:`HEADS`) on the detector's neck features. Frames are scaled to the
    long side the head was trained at (its file's ``input_side``; for heads without one, only
    frames over ``max_side`` are scaled, down); the map is returned at 1/``stride`` of the
    frame's own size either way, summing to the count."""

    def __init__(self, path: str | Path, detector_model: str | Path, threads: int | None = None,
                 max_side: int = 1280, _loaded: dict | None = None, features: DetectorFeatures | None = None):
        import torch

        self.path = Path(path)
        obj = _loaded if _loaded is not None else torch.load(self.path, map_location="cpu", weights_only=True)
        self.arch_name = obj["arch"]
        spec = HEADS[self.arch_name]
        self.meta = obj.get("meta", {})
        self.channels, hidden = list(obj["channels"]), int(obj["hidden"])
        self.net = _build_head(self.channels, hidden)
        try:
            self.net.load_state_dict(obj["state_dict"])
        except RuntimeError as e:
            raise DensityModelError(f"{self.path}: weights do not fit a {self.arch_name}: {str(e).splitlines()[0]}") from e
        self.net.eval()
        if threads:
            torch.set_num_threads(threads)
        self.stride = spec["stride"]
        self.max_side = max_side
        # Heads trained on frames brought to one size (their file says which) see every frame
        # at that size: people appear as large as in training whatever the camera's resolution.
        self.input_side = int(obj["input_side"]) if obj.get("input_side") else None
        # another head on the same detector shares its (compiled) feature extractor
        self.features = features if features is not None else DetectorFeatures(detector_model, spec["layers"], threads)
        got = [f.shape[1] for f in self.features(np.zeros((1, 3, 64, 64), np.float32))]
        if got != self.channels:
            raise DensityModelError(
                f"{self.path}: the detector {detector_model} gives {got} channels at layers "
                f"{spec['layers']}; this head was trained on {self.meta.get('backbone', '?')} "
                f"({self.channels}). Use that detector or train a head for this one (scripts/train_density_head.py)")

    def __call__(self, bgr: np.ndarray, side: int | None = None) -> DensityResult:
        """``side``: a long side other than the head's own, for a quick look (the agent's
        once-a-second regime check uses 640 px: a quarter of the work, counts a few percent
        low; docs/performance.md)."""
        import cv2
        import torch

        h, w = bgr.shape[:2]
        x, f = feature_input(bgr, side or self.input_side, self.max_side)
        feats = [torch.from_numpy(a) for a in self.features(x)]
        with torch.inference_mode():
            d = self.net(*feats)[0, 0].numpy() / HEAD_SCALE
        s = self.stride
        d = d[: max(1, round(h * f) // s), : max(1, round(w * f) // s)]
        total = float(d.sum())
        out = (max(1, h // s), max(1, w // s))
        if d.shape != out:  # back to the frame's own grid, keeping the sum
            d = cv2.resize(d, (out[1], out[0]), interpolation=cv2.INTER_AREA if d.shape[0] > out[0] else cv2.INTER_LINEAR)
            d *= total / max(float(d.sum()), 1e-9)
        return DensityResult(d, total)
