"""Shared building blocks of the site model: errors, strict models, bilingual text, WGS84 points."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..vocab import ID_PATTERN, Id  # noqa: F401  (re-exported for the sections)


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

# An OpenStreetMap element: "node/123", "way/939578294", "relation/11154724".
OSM_REF_PATTERN = r"^(node|way|relation)/[0-9]+$"
OsmRef = Annotated[str, Field(pattern=OSM_REF_PATTERN)]


def check_ring(v: list[LonLat]) -> list[LonLat]:
    """A polygon ring of ≥3 distinct points; a closing repeat of the first point is dropped."""
    pts = list(v[:-1]) if len(v) > 1 and v[0] == v[-1] else list(v)
    if len(set(pts)) < 3:
        n = len(set(pts))
        raise ValueError(f"ring has {n} point{'s' if n != 1 else ''}; a polygon needs at least 3")
    return pts
