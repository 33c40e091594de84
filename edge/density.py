"""Density-map crowd counting: a small PyTorch MCNN and a generic weights loader.

A density model maps an image to a map whose sum is the number of people. The network is
described as data (:data:`ARCHITECTURES`: columns of conv layers, pools and a 1×1 fuse), so
other multi-column density models load through the same code. Weights come from

* ``.h5`` files of tensors named ``<prefix><branch>.<layer>.conv.{weight,bias}`` (the MCNN
  release: ``DME.branch1.0.conv.weight`` …), or
* ``.pt``/``.pth`` files holding a state dict of :class:`DensityNet` (what
  ``scripts/finetune_density.py`` writes), optionally ``{"arch": ..., "state_dict": ...}``.

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


def resolve_density_model(configured: str | None = None, override: str | None = None) -> str | None:
    """``--density-model`` beats ``CROWDFLOW_DENSITY_MODEL`` beats ``edge.density_model``; None: none."""
    import os

    return override or os.environ.get("CROWDFLOW_DENSITY_MODEL") or configured


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

    def __call__(self, bgr: np.ndarray) -> DensityResult:
        import torch

        x = self.prepare(bgr)
        if self._compiled is not None:
            d = np.asarray(self._compiled(x.numpy())[0])[0, 0]
        else:
            with torch.inference_mode():
                d = self.net(x)[0, 0].numpy()
        return DensityResult(d, float(d.sum()))
