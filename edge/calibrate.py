"""`crowdflow calibrate`: pixel ↔ WGS84 point pairs → a checked preset in the site file.

The operator reads pixel positions of ground marks (kerb corners, bollards, drain covers) off
a frame — :func:`grid_image` draws a labelled pixel grid, the current points and the zones as
the current calibration projects them — and their lon/lat off a survey or 天地图 (WGS84/CGCS2000,
never GCJ-02). :func:`check` fits the homography in the site's metric CRS and reports the
reprojection error per point; a calibration that is degenerate, has a point farther off than
``max_point_error_m`` or an RMS error above ``max_rms_m`` is refused with the reason.
:func:`write_points` puts the points into the preset of the site file: ruamel.yaml's
round-trip parser says on which lines the preset's nodes lie, only those are rewritten, and
every comment and the rest of the layout stay as they were; and re-validates the
whole file before writing. :func:`save_reference` stores the frame as one of the preset's
reference views (day, night…) for the agent's view check.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from crowdflow.site import Site, parse_site

from .geometry import CalibrationError, Homography


@dataclass
class PointPair:
    pixel: tuple[float, float]
    lonlat: tuple[float, float]


@dataclass
class CalibrationReport:
    ok: bool
    reason: str
    rms_m: float | None
    errors_m: list[float]

    def text(self) -> str:
        lines = [f"  point {i}: {e:.2f} m" for i, e in enumerate(self.errors_m)]
        head = f"reprojection error: RMS {self.rms_m:.2f} m" if self.rms_m is not None else "no fit"
        return "\n".join([head, *lines, ("OK" if self.ok else f"REFUSED: {self.reason}")])


def read_points(csv_path: str | None, args: list[str] | None) -> list[PointPair]:
    """Points from a CSV (header u,v,lon,lat) and/or ``u,v,lon,lat`` strings."""
    rows: list[list[str]] = []
    if csv_path:
        with open(csv_path, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or row[0].strip().startswith("#") or (i == 0 and not _is_number(row[0])):
                    continue
                rows.append(row)
    rows += [a.split(",") for a in args or []]
    out = []
    for i, row in enumerate(rows):
        if len(row) != 4 or not all(_is_number(x) for x in row):
            raise ValueError(f"point {i}: expected u,v,lon,lat numbers, got {','.join(row)!r}")
        u, v, lon, lat = (float(x) for x in row)
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError(f"point {i}: [{lon}, {lat}] is not a WGS84 lon,lat pair")
        out.append(PointPair((u, v), (lon, lat)))
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def check(site: Site, points: list[PointPair], image_size: tuple[int, int], max_rms_m: float = 1.0,
          max_point_error_m: float = 2.5) -> CalibrationReport:
    w, h = image_size
    if len(points) < 4:
        return CalibrationReport(False, f"needs at least 4 point pairs, got {len(points)}", None, [])
    for i, p in enumerate(points):
        if not (0 <= p.pixel[0] <= w and 0 <= p.pixel[1] <= h):
            return CalibrationReport(False, f"point {i} pixel {p.pixel} lies outside the {w}x{h} image", None, [])
    pix = np.array([p.pixel for p in points])
    ground = np.array(site.projection.to_metric([p.lonlat for p in points]))
    try:
        hom = Homography(pix, ground)
    except CalibrationError as e:
        return CalibrationReport(False, str(e), None, [])
    errs = np.linalg.norm(hom.to_ground(pix) - ground, axis=1)
    errs = [float(e) if np.isfinite(e) else float("inf") for e in errs]
    rms = float(np.sqrt(np.mean(np.square(errs))))
    if len(points) == 4:
        # Four pairs always fit exactly: the error says nothing. Ask for a fifth as a check.
        return CalibrationReport(False, "4 points fit any homography exactly; add a 5th point to check the fit",
                                 rms, errs)
    worst = int(np.argmax(errs))
    if errs[worst] > max_point_error_m:
        return CalibrationReport(False, f"point {worst} is {errs[worst]:.1f} m off (limit {max_point_error_m} m): "
                                        "a mistyped coordinate or a point not on the ground?", rms, errs)
    if rms > max_rms_m:
        return CalibrationReport(False, f"RMS error {rms:.2f} m exceeds {max_rms_m} m", rms, errs)
    return CalibrationReport(True, "", rms, errs)


def _point_line(indent: int, p: PointPair) -> str:
    u, v = p.pixel
    return f"{' ' * indent}- {{pixel: [{u:.1f}, {v:.1f}], lonlat: [{p.lonlat[0]:.7f}, {p.lonlat[1]:.7f}]}}\n"


def _block_end(lines: list[str], last: int, indent: int) -> int:
    """The line after the block item that starts on line ``last`` (its dash at ``indent``)."""
    j = last + 1
    while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
        j += 1
    while j > last + 1 and not lines[j - 1].strip():  # trailing blank lines belong to what follows
        j -= 1
    return j


def _value_line(line: str, key: str, value: str) -> str:
    """``key: <old value>  # comment`` → ``key: value  # comment`` (the comment is kept)."""
    head = line[: len(line) - len(line.lstrip())]
    comment = line.split(" #", 1)[1].rstrip("\n") if " #" in line else None
    return f"{head}{key}: {value}" + (f"  #{comment}" if comment is not None else "") + "\n"


def _points_edits(lines, pre, pts, points, w, h) -> list[tuple[int, int, list[str]]]:
    edits = []
    first, col = pts.lc.item(0)
    end = _block_end(lines, pts.lc.item(len(pts) - 1)[0], col - 2)
    if lines[first].lstrip().startswith("-"):
        edits.append((first, end, [_point_line(col - 2, p) for p in points]))
    else:  # a flow list on the key's line
        kl = pre.lc.key("points")[0]
        ind = len(lines[kl]) - len(lines[kl].lstrip())
        edits.append((kl, end if end > kl else kl + 1, [f"{' ' * ind}points:\n"] + [_point_line(ind + 2, p) for p in points]))
    if "image_size" in pre:
        kl = pre.lc.key("image_size")[0]
        edits.append((kl, kl + 1, [_value_line(lines[kl], "image_size", f"[{w}, {h}]")]))
    return edits


def write_points(config: str | Path, camera_id: str, preset_id: str, image_size: tuple[int, int],
                 points: list[PointPair] | None, out: str | Path | None = None,
                 reference_image: str | None = None) -> Path:
    """Replace (or add) the preset's points — and, given, a reference view — in the site file.

    The file is parsed with a round-trip YAML library (ruamel.yaml), which knows the line and
    column of every node: exactly the lines of the preset's ``image_size``, ``points`` and
    ``reference_image`` are rewritten, and every other byte — comments, wrapped lists, quoting
    — stays as it was. The edited text is validated as a whole site before anything is
    written. ``out``: write there instead of over ``config``."""
    import yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(config)
    text = path.read_text(encoding="utf-8")
    try:
        doc = YAML().load(text)
    except YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from e
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    cams = doc.get("cameras") if hasattr(doc, "get") else None
    cam = next((c for c in cams or [] if hasattr(c, "get") and str(c.get("id")) == camera_id), None)
    if cam is None:
        raise ValueError(f"{path}: no camera {camera_id!r} in cameras")
    presets = cam.get("presets")
    if not presets:
        raise ValueError(f"{path}: camera {camera_id} has no presets list")
    w, h = image_size
    k = next((i for i, p in enumerate(presets) if str(p.get("id")) == preset_id), None)
    if k is None and not points:
        raise ValueError(f"{path}: camera {camera_id} has no preset {preset_id!r}; give its points")
    if k is None:  # a new preset after the last one
        line, col = presets.lc.item(len(presets) - 1)
        end = _block_end(lines, line, col - 2)
        ind = " " * col
        block = [f"{ind[:-2]}- id: {preset_id}\n", f"{ind}image_size: [{w}, {h}]\n"]
        if reference_image is not None:
            block.append(f"{ind}reference_image: {reference_image}\n")
        block.append(f"{ind}points:\n")
        block += [_point_line(col + 2, p) for p in points]
        lines[end:end] = block
    else:
        pre = presets[k]
        edits: list[tuple[int, int, list[str]]] = []  # (first line, end line, new lines), applied bottom-up
        pts = pre.get("points")
        if points is None:  # only the reference view changes
            pass
        elif not pts or not hasattr(pts, "lc"):
            raise ValueError(f"{path}: preset {preset_id} of camera {camera_id} has no points list")
        else:
            edits += _points_edits(lines, pre, pts, points, w, h)
        if reference_image is not None:
            old = pre.get("reference_image")
            refs = [] if not old else [str(old)] if isinstance(old, str) else [str(r) for r in old]
            refs += [] if reference_image in refs else [reference_image]
            value = refs[0] if len(refs) == 1 else "[" + ", ".join(refs) + "]"
            if "reference_image" in pre:
                kl = pre.lc.key("reference_image")[0]
                kend = _block_end(lines, kl, len(lines[kl]) - len(lines[kl].lstrip()))
                edits.append((kl, kend, [_value_line(lines[kl], "reference_image", value)]))
            else:
                kl, kc = pre.lc.key("id")
                edits.append((kl + 1, kl + 1, [f"{' ' * kc}reference_image: {value}\n"]))
        for a, b, new in sorted(edits, key=lambda e: (-e[0], -e[1])):
            lines[a:b] = new
    text = "".join(lines)
    parse_site(yaml.safe_load(text), str(out or path))  # refuses a broken result (ConfigError)
    target = Path(out) if out else path
    target.write_text(text, encoding="utf-8")
    return target


def save_reference(config: str | Path, camera_id: str, preset_id: str, frame: np.ndarray,
                   name: str | None = None) -> str:
    """Store ``frame`` as a reference view of the preset, beside the site file:
    ``references/<camera>/<preset>-<UTC time>.jpg``. Refuses a frame with too little texture
    to be matched (:class:`edge.viewcheck.ViewUnverifiable`). Returns the path relative to the
    site file's folder, as ``presets[].reference_image`` takes it."""
    import time

    from .viewcheck import ViewReference

    ViewReference(frame)  # raises ViewUnverifiable with the reason
    rel = Path("references") / camera_id / (name or f"{preset_id}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jpg")
    dest = Path(config).parent / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(dest), frame, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"cannot write {dest}")
    return rel.as_posix()


def grid_image(frame: np.ndarray, step: int = 50, points: list[PointPair] | None = None,
               zones_px: list[np.ndarray] | None = None) -> np.ndarray:
    """The frame with a labelled pixel grid (to read positions off), the points and zones."""
    out = frame.copy()
    h, w = out.shape[:2]
    for x in range(0, w, step):
        cv2.line(out, (x, 0), (x, h), (0, 255, 255) if x % (step * 2) == 0 else (0, 160, 160), 1)
        cv2.putText(out, str(x), (x + 2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1)
    for y in range(0, h, step):
        cv2.line(out, (0, y), (w, y), (0, 255, 255) if y % (step * 2) == 0 else (0, 160, 160), 1)
        cv2.putText(out, str(y), (2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1)
    for poly in zones_px or []:
        cv2.polylines(out, [np.round(poly).astype(np.int32)], True, (0, 128, 255), 2)
    for i, p in enumerate(points or []):
        c = (int(round(p.pixel[0])), int(round(p.pixel[1])))
        cv2.circle(out, c, 5, (0, 0, 255), -1)
        cv2.putText(out, str(i), (c[0] + 6, c[1] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
    return out
