"""The place: ``zones``, ``cameras`` (with presets), ``roads``, ``gates``, ``posts``, ``basemap``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .. import crowd
from .base import Id, LonLat, OsmRef, Strict, Text, check_ring


class Zone(Strict):
    id: Id
    name: Text
    kind: Literal["walkway", "plaza", "platform", "metro", "crossing", "interior", "street"]
    polygon: list[LonLat]
    floors: int = Field(1, ge=1, le=20)
    walkable_area_m2: float = Field(gt=0)
    area_per_visitor_m2: float = Field(ge=0.3, le=20)
    # The OpenStreetMap features the zone is drawn on ("way/939578294", "node/…"): the complex's
    # footprint, the footways and steps people walk. `crowdflow check-config` checks that the
    # polygon lies on them (verify_osm_geometry, within site.osm.tolerance_m).
    osm: list[OsmRef] = Field(default_factory=list)

    @field_validator("polygon")
    @classmethod
    def _ring(cls, v: list[LonLat]) -> list[LonLat]:
        return check_ring(v)

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
    # The view at this preset (image file(s), relative to the config file; several for day and
    # night), stored by `crowdflow calibrate --save-reference`; the edge agent compares frames
    # with them to notice a turned camera. None: the first frame with enough texture.
    reference_image: str | list[str] | None = None

    @property
    def references(self) -> list[str]:
        r = self.reference_image
        return [] if not r else [r] if isinstance(r, str) else list(r)

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


class ClosurePoint(Strict):
    """Where a road cut is held: barriers and the officers standing there."""

    id: Id
    position: LonLat
    officers: int = Field(ge=1, le=200)
    post: Id  # the staff post its officers come from (travel time from there)


class Road(Strict):
    id: Id
    name: Text
    line: list[LonLat] = Field(min_length=2)
    osm: list[OsmRef] = Field(default_factory=list)  # the OSM ways of the carriageway it cuts
    pedestrian_area_m2: float = Field(0, ge=0)
    # When cut off, the zones beside it gain its pedestrian area in these shares: people
    # spread onto the road, and control counts them with the zone (see control/zones.py).
    frees: dict[Id, float] = Field(default_factory=dict)
    # A cut needs its closure points staffed; the area is free for pedestrians only after
    # set-up (traffic diverted, barriers placed), and reopening takes the tear-down time.
    closure_points: list[ClosurePoint] = Field(default_factory=list)
    setup_min: float = Field(10, ge=0, le=240)
    teardown_min: float = Field(10, ge=0, le=240)

    @property
    def officers(self) -> int:
        return sum(c.officers for c in self.closure_points)


class Gate(Strict):
    id: Id
    name: Text
    line: tuple[LonLat, LonLat]
    outside_zone: Id | None = None
    inside_zone: Id | None = None
    camera: Id | None = None
    post: Id | None = None  # the post whose staff hold it exit-only or meter it
    staff: int = Field(2, ge=0, le=200)  # marshals an exit-only / metering measure needs here


class HoldingArea(Strict):
    """Where people held by metering or a closed entrance wait (own area, own density)."""

    id: Id
    name: Text
    gate: Id  # the gate whose metering/closure holds people here
    zone: Id  # the zone it lies in (or next to)
    area_m2: float = Field(gt=0, le=100000)
    # arrivals: held before the gate on their way in (metering, a closed entrance, a metro limit's
    # concourse); departures: people queued outside a metro exit to enter the station (metro_inbound)
    queue: Literal["arrivals", "departures"] = "arrivals"


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
        return check_ring(v)


class Basemap(Strict):
    """The offline vector basemap drawn under the zones; roads come from ``roads``."""

    water: list[BasemapArea] = Field(default_factory=list)
    buildings: list[BasemapArea] = Field(default_factory=list)
    bridges: list[BasemapArea] = Field(default_factory=list)
