"""The scenario file: what the simulator needs beyond the site file (data, not code).

``configs/scenarios/<name>.yaml`` names its site file and adds the pedestrian network
(walkable links with widths, ways out, what a road cutoff frees)
and the evening's demand. It is validated with pydantic and checked against the site;
a broken file raises :class:`crowdflow.site.ConfigError` naming each bad path.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import Field, field_validator

from crowdflow.site import ConfigError, Id, Site, Strict, load_site, validate_file_model

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


# Default specific capacities of bottleneck kinds, p/(m·s) of clear width (docs/twin.md):
# walk: Weidmann (1993) maximum flow 1.22; door/gate: SFPE Handbook (Gwynne & Rosenbaum) 1.3, in
# the 1.2–1.6 range measured by Seyfried et al. (2009) for bottlenecks; stairs (down/up mix):
# SFPE ≈1.0; crossing: as a door while green.
SPEC_FLOW = {"walk": 1.22, "door": 1.3, "gate": 1.3, "stairs": 1.0, "crossing": 1.3, "escalator": None, "lift": None}


class PlaceSpec(Strict):
    """A zone that is a place (plaza, floors, platform, metro exit, crossing)."""

    dwell_min: float = Field(ge=0, le=240)  # mean activity time when it is a stop
    length_m: float | None = Field(None, gt=0, le=5000)  # walking distance across; default √(area)


class SegmentSpec(Strict):
    zone: Id
    length_m: float = Field(gt=0, le=5000)
    width_m: float = Field(gt=0, le=200)
    speed_factor: float = Field(1.0, gt=0, le=1)  # < 1 where people stroll and stop to view


class StepsSpec(Strict):
    """Stairs (or a ramp, a door) at a corridor's end: a bottleneck for walking onto it."""

    kind: Literal["stairs", "door", "walk", "escalator"] = "stairs"
    width_m: float = Field(gt=0, le=200)
    length_m: float | None = Field(None, gt=0, le=1000)  # as mapped (OSM), for the record
    spec_flow: float | None = Field(None, gt=0, le=5)  # p/(m·s); default by kind (stairs 1.0, SFPE)

    @property
    def capacity_pps(self) -> float:
        return self.width_m * (self.spec_flow or SPEC_FLOW.get(self.kind) or 1.22)


class CorridorSpec(Strict):
    """A walkway between two places: cells per direction (zones it runs through in order)."""

    a: Id
    b: Id
    gate: Id | None = None  # site gate at the a end (a = its outside)
    segments: list[SegmentSpec] = Field(min_length=1)
    ends: dict[Literal["a", "b"], StepsSpec] = Field(default_factory=dict)  # stairs onto it at either end


class SignalSpec(Strict):
    cycle_s: float = Field(gt=0, le=600)
    green_s: float = Field(gt=0, le=600)


class LinkSpec(Strict):
    """A short way between two places with its own capacity (a bottleneck)."""

    a: Id
    b: Id
    kind: Literal["walk", "door", "gate", "stairs", "escalator", "lift", "crossing"] = "walk"
    width_m: float = Field(gt=0, le=200)
    spec_flow: float | None = Field(None, gt=0, le=5)  # p/(m·s); default by kind
    cap_pps: float | None = Field(None, gt=0, le=1000)  # or a stated capacity (escalators, lifts)
    gate: Id | None = None  # the site gate on this link (its outside → inside is "in")
    signal: SignalSpec | None = None  # pedestrian signal while the road is open
    approach_m2: float = Field(0, ge=0, le=10000)  # ground where its queue stands

    @property
    def capacity_pps(self) -> float:
        if self.cap_pps is not None:
            return self.cap_pps
        sf = self.spec_flow or SPEC_FLOW.get(self.kind) or 1.22
        return self.width_m * sf


class ExitSpec(Strict):
    zone: Id
    width_m: float = Field(gt=0, le=200)
    cap_pps: float | None = Field(None, gt=0, le=1000)

    @property
    def capacity_pps(self) -> float:
        return self.cap_pps if self.cap_pps is not None else self.width_m * SPEC_FLOW["walk"]


class RoadSpec(Strict):
    # (which zones gain a cut road's area is site data: roads[].frees in the site file)
    widen_m: dict[str, float] = Field(default_factory=dict)  # link "a>b" → extra width while cut
    unsignal: list[str] = Field(default_factory=list)  # links "a>b" whose signal is off while cut


class ChainSpec(Strict):
    stops: list[str] = Field(min_length=1)  # places, the last an exit
    share_note: str | None = None


class SourceSpec(Strict):
    zone: Id
    gate: Id | None = None
    width_m: float = Field(4.0, gt=0, le=200)  # clear width people arrive through
    cap_pps: float | None = Field(None, gt=0, le=1000)  # escalators/stairs/gates, default width × 1.22
    per_min: dict[str, float] = Field(min_length=1)  # "HH:MM" → persons per minute
    chains: dict[str, float] = Field(min_length=1)  # chain → weight
    holding_m2: float = Field(0, ge=0, le=100000)  # where held arrivals wait

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

    @property
    def capacity_pps(self) -> float:
        return self.cap_pps if self.cap_pps is not None else self.width_m * SPEC_FLOW["walk"]


class ModelSpec(Strict):
    step_s: float = Field(5, gt=0, le=30)
    max_density: float = Field(5.0, gt=0.5, le=5.4)  # a place takes no more
    counterflow_factor: float = Field(0.85, gt=0, le=1)
    patience_min: float = Field(20, gt=0, le=600)
    balk_w50_min: float = Field(15, gt=0, le=600)
    balk_scale_min: float = Field(3, gt=0, le=600)
    balk_max_per_min: float = Field(0.10, ge=0, le=1)
    route_every_s: float = Field(60, gt=0, le=3600)
    route_spread_s: float = Field(60, gt=0, le=3600)  # logit scale of the route split (docs/twin.md)
    route_cutoff: float = Field(5, gt=0, le=50)  # ways slower than cutoff × spread get nothing
    route_smoothing: float = Field(0.5, gt=0, le=1)  # share of the new split taken per re-evaluation
    reopen_density: float = Field(1.0, gt=0, le=5)


class Scenario(Strict):
    version: Literal[2] = 2
    site: str  # path of the site file, relative to this file
    date: dt.date
    start: str = "17:00"
    end: str = "23:30"
    places: dict[Id, PlaceSpec]
    corridors: dict[Id, CorridorSpec] = Field(default_factory=dict)
    links: list[LinkSpec] = Field(min_length=1)
    exits: dict[Id, ExitSpec] = Field(default_factory=dict)
    roads: dict[Id, RoadSpec] = Field(default_factory=dict)
    chains: dict[Id, ChainSpec] = Field(min_length=1)
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
    places = set(sc.places)
    seg_zones: set[str] = set()
    for pid in sorted(places - zone_ids):
        problems.append((f"places.{pid}", f"unknown zone {pid!r}"))
    for cid, c in sc.corridors.items():
        for end in ("a", "b"):
            if getattr(c, end) not in places:
                problems.append((f"corridors.{cid}.{end}", f"{getattr(c, end)!r} is not a place"))
        for j, s in enumerate(c.segments):
            if s.zone not in zone_ids:
                problems.append((f"corridors.{cid}.segments[{j}].zone", f"unknown zone {s.zone!r}"))
            elif s.zone in places:
                problems.append((f"corridors.{cid}.segments[{j}].zone", f"{s.zone!r} is already a place"))
            seg_zones.add(s.zone)
        if c.gate is not None and c.gate not in gates:
            problems.append((f"corridors.{cid}.gate", f"unknown gate {c.gate!r}"))
    for zid in sorted(zone_ids - places - seg_zones):
        problems.append(("places", f"site zone {zid!r} is neither a place nor on a corridor"))
    pairs: set[tuple[str, str]] = set()
    for i, ln in enumerate(sc.links):
        for end in ("a", "b"):
            if getattr(ln, end) not in places:
                problems.append((f"links[{i}].{end}", f"unknown place {getattr(ln, end)!r}"))
        if ln.a == ln.b:
            problems.append((f"links[{i}]", "links a place to itself"))
        key = tuple(sorted((ln.a, ln.b)))
        if key in pairs:
            problems.append((f"links[{i}]", f"duplicate link {ln.a} – {ln.b}"))
        pairs.add(key)
        if ln.gate is not None:
            g = gates.get(ln.gate)
            if g is None:
                problems.append((f"links[{i}].gate", f"unknown gate {ln.gate!r}"))
            elif (g.outside_zone, g.inside_zone) != (ln.a, ln.b):
                problems.append((f"links[{i}].gate", f"gate {ln.gate} leads from {g.outside_zone} into {g.inside_zone}: write a: {g.outside_zone}, b: {g.inside_zone}"))
        if ln.signal is not None and ln.signal.green_s >= ln.signal.cycle_s:
            problems.append((f"links[{i}].signal", "green must be shorter than the cycle"))
    for name, ex in sc.exits.items():
        if name in zone_ids:
            problems.append((f"exits.{name}", "an exit must not share a zone's id"))
        if ex.zone not in places:
            problems.append((f"exits.{name}.zone", f"unknown place {ex.zone!r}"))
    for cid, ch in sc.chains.items():
        for j, stop in enumerate(ch.stops):
            last = j == len(ch.stops) - 1
            if last and stop not in sc.exits:
                problems.append((f"chains.{cid}.stops[{j}]", f"the last stop must be an exit, got {stop!r}"))
            elif not last and stop not in places:
                problems.append((f"chains.{cid}.stops[{j}]", f"{stop!r} is not a place"))
            if j and ch.stops[j - 1] == stop:
                problems.append((f"chains.{cid}.stops[{j}]", "the same stop twice in a row"))
    link_keys = {f"{ln.a}>{ln.b}" for ln in sc.links} | {f"{ln.b}>{ln.a}" for ln in sc.links}
    for rid, rs in sc.roads.items():
        if rid not in roads:
            problems.append((f"roads.{rid}", f"unknown road {rid!r}"))
        for key in list(rs.widen_m) + rs.unsignal:
            if key not in link_keys:
                problems.append((f"roads.{rid}.{key}", "not a link (write 'place-a>place-b')"))
    for name, src in sc.demand.items():
        if src.zone not in places:
            problems.append((f"demand.{name}.zone", f"unknown place {src.zone!r}"))
        for cid in src.chains:
            if cid not in sc.chains:
                problems.append((f"demand.{name}.chains.{cid}", f"unknown chain {cid!r}"))
        if src.gate is not None:
            g = gates.get(src.gate)
            if g is None:
                problems.append((f"demand.{name}.gate", f"unknown gate {src.gate!r}"))
            elif g.inside_zone != src.zone:
                problems.append((f"demand.{name}.gate", f"gate {src.gate} leads into {g.inside_zone}, not {src.zone}"))
    # a metro diversion in the site file (measures, plans, emergency) needs a way in on foot
    # at the zone it sends its passengers to
    walk_in = {src.zone for src in sc.demand.values() if src.gate is None}
    diverting = [(f"site measures[{i}].actions[{k}]", a) for i, m in enumerate(site.measures) for k, a in enumerate(m.actions)]
    diverting += [(f"site plans[{i}].levels[{j}].actions[{k}]", a) for i, p in enumerate(site.plans)
                  for j, lv in enumerate(p.levels) for k, a in enumerate(lv.actions)]
    diverting += [(f"site emergency.actions[{k}]", a) for k, a in enumerate(site.emergency.actions)]
    for path, a in diverting:
        dv = getattr(a, "divert", None)
        if dv is not None and dv.zone not in walk_in:
            problems.append(("demand", f"{path}.divert.zone sends metro passengers to {dv.zone!r}, "
                                       "but no arrivals on foot (a demand entry without a gate) reach the site there"))
    if sc.end_s <= sc.start_s:
        problems.append(("end", f"{sc.end} is not after start {sc.start}"))
    return problems


def parse_scenario(data: Any, site: Site, source: str = "<scenario>") -> Scenario:
    return validate_file_model(Scenario, data, source, lambda sc: _semantic(sc, site))


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
