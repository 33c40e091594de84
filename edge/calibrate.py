"""`crowdflow calibrate`: pixel ↔ WGS84 point pairs → a checked preset in the site file.

The operator reads pixel positions of ground marks (kerb corners, bollards, drain covers) off
a frame — :func:`grid_image` draws a labelled pixel grid, the current points and the zones as
the current calibration projects them — and their lon/lat off a survey or 天地图 (WGS84/CGCS2000,
never GCJ-02). :func:`check` fits the homography in the site's metric CRS and reports the
reprojection error per point; a calibration that is degenerate, has a point farther off than
``max_point_error_m`` or an RMS error above ``max_rms_m`` is refused with the reason.
:func:`write_points` puts the points into the preset of the YAML file in place, leaving every
other line (comments included) as it was, and re-validates the whole file before writing.
"""

from __future__ import annotations

import csv
import re
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


def _point_line(indent: str, p: PointPair) -> str:
    u, v = p.pixel
    return f"{indent}- {{pixel: [{u:.1f}, {v:.1f}], lonlat: [{p.lonlat[0]:.7f}, {p.lonlat[1]:.7f}]}}\n"


def write_points(config: str | Path, camera_id: str, preset_id: str, image_size: tuple[int, int],
                 points: list[PointPair], out: str | Path | None = None) -> Path:
    """Replace (or add) the preset's points in the YAML text; every other line stays as it was.

    The edited text is validated as a whole site before anything is written. ``out``: write
    there instead of over ``config``."""
    path = Path(config)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cam_re = re.compile(rf"^(\s*)- id:\s*['\"]?{re.escape(camera_id)}['\"]?\s*(#.*)?$")
    ci = next((i for i, line in enumerate(lines) if cam_re.match(line.rstrip("\n"))), None)
    if ci is None:
        raise ValueError(f"{path}: no camera {camera_id!r} (a '- id: {camera_id}' line)")
    cam_indent = len(cam_re.match(lines[ci].rstrip("\n")).group(1))
    end = len(lines)
    for j in range(ci + 1, len(lines)):  # the camera's block ends at the next item at its indent or less
        s = lines[j]
        if s.strip() and not s.lstrip().startswith("#") and len(s) - len(s.lstrip()) <= cam_indent:
            end = j
            break
    pre_re = re.compile(rf"^(\s*)- id:\s*['\"]?{re.escape(preset_id)}['\"]?\s*(#.*)?$")
    pi = next((i for i in range(ci + 1, end) if pre_re.match(lines[i].rstrip("\n"))), None)
    w, h = image_size
    if pi is not None:
        ind = len(pre_re.match(lines[pi].rstrip("\n")).group(1))
        pend = end
        for j in range(pi + 1, end):
            s = lines[j]
            if s.strip() and len(s) - len(s.lstrip()) <= ind:
                pend = j
                break
        block = lines[pi:pend]
        k = next((i for i, s in enumerate(block) if s.strip().startswith("points:")), None)
        if k is None:
            raise ValueError(f"{path}: preset {preset_id} of camera {camera_id} has no 'points:' line")
        kind = len(block[k]) - len(block[k].lstrip())
        m = k + 1
        while m < len(block) and (block[m].strip().startswith("- {pixel") or block[m].strip().startswith("#")) \
                and len(block[m]) - len(block[m].lstrip()) > kind:
            m += 1
        item_indent = " " * (kind + 2)
        new_block = block[: k + 1] + [_point_line(item_indent, p) for p in points] + block[m:]
        new_block = [re.sub(r"image_size:\s*\[[^\]]*\]", f"image_size: [{w}, {h}]", s) for s in new_block]
        lines[pi:pend] = new_block
    else:
        pk = next((i for i in range(ci + 1, end) if lines[i].strip().startswith("presets:")), None)
        if pk is None:
            raise ValueError(f"{path}: camera {camera_id} has no 'presets:' line")
        ind = " " * (len(lines[pk]) - len(lines[pk].lstrip()) + 2)
        insert = [f"{ind}- id: {preset_id}\n", f"{ind}  image_size: [{w}, {h}]\n", f"{ind}  points:\n"]
        insert += [_point_line(ind + "    ", p) for p in points]
        last = end
        while last > pk and not lines[last - 1].strip():
            last -= 1
        lines[last:last] = insert
    text = "".join(lines)
    import yaml

    parse_site(yaml.safe_load(text), str(out or path))  # refuses a broken result (ConfigError)
    target = Path(out) if out else path
    target.write_text(text, encoding="utf-8")
    return target


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
