"""The whole site file: one section per attribute, plus lookups and the metric projection."""

from __future__ import annotations

from functools import cached_property
from typing import Iterable, Literal

from pydantic import Field
from pyproj import Transformer
from shapely.geometry import Polygon

from .. import crowd
from .base import Strict
from .places import Basemap, Camera, Gate, HoldingArea, Post, Road, Zone
from .measures import Measure
from .plans import Emergency, Plan
from .staff import StaffPool
from .runtime import ControlSection, DashboardSection, EdgeSection, RedisSection, SiteInfo


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
    measures: list[Measure] = Field(default_factory=list)
    basemap: Basemap = Basemap()
    holding_areas: list[HoldingArea] = Field(default_factory=list)
    staff: StaffPool = StaffPool()

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

    @cached_property
    def road_by_id(self) -> dict[str, Road]:
        return {r.id: r for r in self.roads}

    @cached_property
    def gate_by_id(self) -> dict[str, Gate]:
        return {g.id: g for g in self.gates}

    @cached_property
    def post_by_id(self) -> dict[str, Post]:
        return {p.id: p for p in self.posts}

    @cached_property
    def measure_by_id(self) -> dict[str, Measure]:
        return {m.id: m for m in self.measures}

    @cached_property
    def plan_by_id(self) -> dict[str, Plan]:
        return {p.id: p for p in self.plans}

    def freed_area(self, cut_roads: Iterable[str]) -> dict[str, float]:
        """Walkable area (m²) each zone gains while these roads are cut off: the road's
        pedestrian area joins the zones beside it in the shares of ``roads[].frees``.
        Unknown road ids and repeats are ignored."""
        extra: dict[str, float] = {}
        for rid in set(cut_roads):
            rd = self.road_by_id.get(rid)
            if rd is None:
                continue
            for zid, share in rd.frees.items():
                extra[zid] = extra.get(zid, 0.0) + share * rd.pedestrian_area_m2
        return extra

    def capacities(self, cut_roads: Iterable[str] = ()) -> dict[str, int]:
        """Each zone's LB/T 034 instantaneous capacity with these roads cut off."""
        extra = self.freed_area(cut_roads)
        return {z.id: crowd.capacity(z.walkable_area_m2 + extra.get(z.id, 0.0), z.area_per_visitor_m2)
                for z in self.zones}

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
