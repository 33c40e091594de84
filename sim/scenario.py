"""The scenario file: what the simulator needs beyond the site file (data, not code).

``configs/scenarios/<name>.yaml`` names its site file and adds the pedestrian network
(walkable links with widths, ways out, what a road cutoff frees, where staff posts work)
and the evening's demand. It is validated with pydantic and checked against the site;
a broken file raises :class:`crowdflow.site.ConfigError` naming each bad path.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from pydantic import Field, ValidationError, field_validator

from crowdflow.site import ConfigError, Id, Site, Strict, _pydantic_problems, load_site

REPO = Path(__file__).resolve().parents[1]
SCENARIO_DIR = REPO / "configs" / "scenarios"
_HHMM = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


def hhmm_to_s(text: str) -> float:
    """"19:30" → seconds after midnight."""
    m = _HHMM.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a time of day HH:MM")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def s_to_hhmm(t: float) -> str:
    t = int(round(t))
    return f"{t // 3600:02d}:{t % 3600 // 60:02d}"


class ZoneSpec(Strict):
    dwell_min: float = Field(ge=0, le=240)  # mean stop time on top of walking through
    length_m: float | None = Field(None, gt=0, le=5000)  # walking distance; default √(polygon area)
    next: dict[str, float] = Field(min_length=1)  # way (zone or exit) → weight

    @field_validator("next")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for k, w in v.items():
            if not (w >= 0):
                raise ValueError(f"weight of {k!r} must be ≥ 0, got {w}")
        if sum(v.values()) <= 0:
            raise ValueError("weights must not all be 0")
        return v


class LinkSpec(Strict):
    a: Id
    b: Id
    width_m: float = Field(gt=0, le=200)
    gate: Id | None = None  # the site gate on this link (its outside → inside is "in")


class ExitSpec(Strict):
    zones: list[Id] = Field(min_length=1)
    width_m: float = Field(gt=0, le=200)


class RoadSpec(Strict):
    zones: dict[Id, float] = Field(default_factory=dict)  # share of the road's pedestrian area
    widen_m: dict[str, float] = Field(default_factory=dict)  # "a>b" link → extra width


class SourceSpec(Strict):
    zone: Id
    gate: Id | None = None
    width_m: float = Field(4.0, gt=0, le=200)  # clear width people arrive through (stairs, escalators)
    per_min: dict[str, float] = Field(min_length=1)  # "HH:MM" → persons per minute

    @field_validator("per_min")
    @classmethod
    def _curve(cls, v: dict[str, float]) -> dict[str, float]:
        prev = -1.0
        for k, rate in v.items():
            t = hhmm_to_s(k)
            if t <= prev:
                raise ValueError(f"times must increase, {k} comes after a later one")
            if not (0 <= rate <= 100000):
                raise ValueError(f"rate at {k} must be within 0..100000 persons/min, got {rate}")
            prev = t
        return v

    def curve(self) -> tuple[list[float], list[float]]:
        return [hhmm_to_s(k) for k in self.per_min], [v / 60.0 for v in self.per_min.values()]


class ModelSpec(Strict):
    step_s: float = Field(5, gt=0, le=30)
    max_density: float = Field(5.0, gt=0.5, lt=5.4)
    counterflow_factor: float = Field(0.85, gt=0, le=1)
    patience_min: float = Field(20, gt=0, le=600)
    reopen_density: float = Field(1.0, gt=0, le=5)
    staff_dwell_cut: float = Field(0.03, ge=0, le=1)
    staff_dwell_cut_max: float = Field(0.4, ge=0, lt=1)
    staff_flow_gain: float = Field(0.02, ge=0, le=1)
    staff_flow_gain_max: float = Field(0.25, ge=0, le=2)


class Scenario(Strict):
    version: int = 1
    site: str  # path of the site file, relative to this file
    date: dt.date
    start: str = "17:00"
    end: str = "23:30"
    zones: dict[Id, ZoneSpec]
    links: list[LinkSpec] = Field(min_length=1)
    exits: dict[Id, ExitSpec] = Field(default_factory=dict)
    roads: dict[Id, RoadSpec] = Field(default_factory=dict)
    posts: dict[Id, Id] = Field(default_factory=dict)
    demand: dict[Id, SourceSpec] = Field(min_length=1)
    demand_scale: float = Field(1.0, gt=0, le=10)  # multiplies every arrival curve (sensitivity runs)
    model: ModelSpec = ModelSpec()

    @field_validator("start", "end")
    @classmethod
    def _tod(cls, v: str) -> str:
        hhmm_to_s(v)
        return v

    @property
    def start_s(self) -> float:
        return hhmm_to_s(self.start)

    @property
    def end_s(self) -> float:
        return hhmm_to_s(self.end)

    def epoch(self, tod_s: float, tz: str) -> float:
        """Unix time of ``tod_s`` seconds after midnight of the scenario's date at the site."""
        midnight = dt.datetime.combine(self.date, dt.time(0), tzinfo=ZoneInfo(tz))
        return midnight.timestamp() + tod_s


def _semantic(sc: Scenario, site: Site) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    zone_ids = set(site.zone_by_id)
    gates = {g.id: g for g in site.gates}
    roads = {r.id for r in site.roads}
    posts = {p.id for p in site.posts}
    exits = set(sc.exits)
    for zid in sorted(zone_ids - set(sc.zones)):
        problems.append(("zones", f"site zone {zid!r} has no entry (dwell and next)"))
    neighbours: dict[str, set[str]] = {z: set() for z in zone_ids}
    pairs: set[tuple[str, str]] = set()
    for i, ln in enumerate(sc.links):
        for end in ("a", "b"):
            if getattr(ln, end) not in zone_ids:
                problems.append((f"links[{i}].{end}", f"unknown zone {getattr(ln, end)!r}"))
        if ln.a == ln.b:
            problems.append((f"links[{i}]", "links a zone to itself"))
        key = tuple(sorted((ln.a, ln.b)))
        if key in pairs:
            problems.append((f"links[{i}]", f"duplicate link {ln.a} – {ln.b}"))
        pairs.add(key)
        if ln.gate is not None:
            g = gates.get(ln.gate)
            if g is None:
                problems.append((f"links[{i}].gate", f"unknown gate {ln.gate!r}"))
            elif {g.outside_zone, g.inside_zone} != {ln.a, ln.b}:
                problems.append((f"links[{i}].gate", f"gate {ln.gate} joins {g.outside_zone} and {g.inside_zone}, not {ln.a} and {ln.b}"))
        if ln.a in neighbours and ln.b in neighbours:
            neighbours[ln.a].add(ln.b)
            neighbours[ln.b].add(ln.a)
    for name, ex in sc.exits.items():
        if name in zone_ids:
            problems.append((f"exits.{name}", "an exit must not share a zone's id"))
        for j, zid in enumerate(ex.zones):
            if zid not in zone_ids:
                problems.append((f"exits.{name}.zones[{j}]", f"unknown zone {zid!r}"))
            else:
                neighbours[zid].add(name)
    for zid, spec in sc.zones.items():
        if zid not in zone_ids:
            problems.append((f"zones.{zid}", f"unknown zone {zid!r}"))
            continue
        for way in spec.next:
            if way not in neighbours[zid]:
                problems.append((f"zones.{zid}.next.{way}", f"{way!r} is neither a zone linked to {zid} nor an exit from it"))
    for rid, rs in sc.roads.items():
        if rid not in roads:
            problems.append((f"roads.{rid}", f"unknown road {rid!r}"))
        for zid in rs.zones:
            if zid not in zone_ids:
                problems.append((f"roads.{rid}.zones.{zid}", f"unknown zone {zid!r}"))
        for key in rs.widen_m:
            a, _, b = key.partition(">")
            if tuple(sorted((a, b))) not in pairs:
                problems.append((f"roads.{rid}.widen_m.{key}", "not a link (write 'zone-a>zone-b')"))
    for pid, zid in sc.posts.items():
        if pid not in posts:
            problems.append((f"posts.{pid}", f"unknown post {pid!r}"))
        if zid not in zone_ids:
            problems.append((f"posts.{pid}", f"unknown zone {zid!r}"))
    for name, src in sc.demand.items():
        if src.zone not in zone_ids:
            problems.append((f"demand.{name}.zone", f"unknown zone {src.zone!r}"))
        if src.gate is not None:
            g = gates.get(src.gate)
            if g is None:
                problems.append((f"demand.{name}.gate", f"unknown gate {src.gate!r}"))
            elif g.inside_zone != src.zone:
                problems.append((f"demand.{name}.gate", f"gate {src.gate} leads into {g.inside_zone}, not {src.zone}"))
    if sc.end_s <= sc.start_s:
        problems.append(("end", f"{sc.end} is not after start {sc.start}"))
    return problems


def parse_scenario(data: Any, site: Site, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"top level must be a mapping, got {type(data).__name__}")])
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _pydantic_problems(e, data)) from None
    problems = _semantic(sc, site)
    if problems:
        raise ConfigError(source, problems)
    return sc


def resolve(name_or_path: str) -> Path:
    """A scenario name (``mayday-evening``) or a path to a scenario file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SCENARIO_DIR / f"{name_or_path}.yaml"


def load_scenario(name_or_path: str, site: Site | None = None) -> tuple[Scenario, Site]:
    """Load a scenario and its site (``site`` given: use that one instead of the file's)."""
    path = resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))) or "none"
        raise ConfigError(str(path), [("", f"cannot read: {e.strerror or e} (known scenarios: {known})")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [("", f"YAML syntax: {getattr(e, 'problem', None) or e}")]) from None
    if site is None:
        site_ref = data.get("site") if isinstance(data, dict) else None
        if not isinstance(site_ref, str):
            raise ConfigError(str(path), [("site", "must name the site file")])
        site = load_site((path.parent / site_ref).resolve())
    return parse_scenario(data, site, str(path)), site
