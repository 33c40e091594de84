"""What-if: "what happens in the next 30 minutes if we …", from the current state. Pure.

Both futures start from the same zone counts, time of day and actions in force (taken as
already in effect on the ground); one also orders the proposed actions now, so their staff
travel and set-up times apply (sim.model). The model is the same twin the evaluation and the
live demo run (sim.twin). Each runs the pedestrian model over the horizon for a few seeds
(the same seeds for both, so the difference is the action's, not the dice's), and the
answer is a forecast curve per zone, averaged over the seeds, for the zones the action
changes. The dashboard can call :func:`whatif` directly; ``crowdflow whatif`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import TypeAdapter, ValidationError

from crowdflow.site import Action, Site

from .model import Model, build_network
from .scenario import Scenario

_ACTION = TypeAdapter(Action)
_FORMS = {
    "traffic_cutoff": ("road",),
    "exit_only": ("gate",),
    "one_way": ("zone", "toward"),
    "metro_limit": ("gate", "max_per_min"),
    "metro_inbound": ("gate", "per_min"),
    "metering": ("gate", "per_min"),
    "staffing": ("post", "headcount"),
}


def parse_action(text: str, site: Site):
    """``traffic_cutoff:road-jiabin``, ``one_way:bridge-e-mid:bridge-n-head``,
    ``exit_only:gate-11f``, ``metro_limit:gate-xsz-9:40``, ``staffing:post-11f:12`` or the
    action as JSON. Raises ValueError saying what is wrong."""
    text = text.strip()
    if text.startswith("{"):
        try:
            a = _ACTION.validate_json(text)
        except ValidationError as e:
            raise ValueError(f"{text}: {e.errors(include_url=False)[0]['msg']}") from None
    else:
        kind, *parts = text.split(":")
        if kind not in _FORMS:
            raise ValueError(f"{text!r}: unknown action {kind!r} (one of {', '.join(_FORMS)})")
        names = _FORMS[kind]
        if len(parts) != len(names):
            raise ValueError(f"{text!r}: write {kind}:" + ":".join(n.upper() for n in names))
        try:
            a = _ACTION.validate_python({"type": kind, **dict(zip(names, parts))})
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            raise ValueError(f"{text!r}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    known = {"road": {r.id for r in site.roads}, "gate": {g.id for g in site.gates},
             "zone": set(site.zone_by_id), "toward": set(site.zone_by_id), "post": {p.id for p in site.posts}}
    for attr, ids in known.items():
        v = getattr(a, attr, None)
        if v is not None and v not in ids:
            raise ValueError(f"{text!r}: unknown {attr} {v!r}")
    return a


@dataclass
class Curve:
    zone_id: str
    capacity: int
    minutes: list[float]
    without: list[float]  # people, mean over seeds
    with_action: list[float]

    @property
    def change_at_end(self) -> float:
        return self.with_action[-1] - self.without[-1]

    @property
    def largest_change(self) -> float:
        return max((abs(a - b) for a, b in zip(self.with_action, self.without)), default=0.0)


@dataclass
class WhatIf:
    tod_s: float
    horizon_min: float
    actions: list
    curves: list[Curve] = field(default_factory=list)  # affected zones, most changed first
    all_curves: list[Curve] = field(default_factory=list)


def whatif(site: Site, sc: Scenario, counts: dict[str, float], tod_s: float, active: list, proposed: list,
           horizon_min: float = 30, seeds: tuple[int, ...] = (0, 1, 2), every_min: float = 1.0,
           min_change: float = 0.03) -> WhatIf:
    """Forecast curves per zone with and without ``proposed`` on top of ``active``.

    ``counts``: people per zone now. A zone missing from it is unknown, and unknown is never
    empty: it starts at the worst plausible load — the highest capacity ratio among the known
    zones (at least 1.0 × capacity when nothing is known). A zone is *affected* when the two
    futures differ by at least ``min_change`` of its capacity (and 5 people)."""
    net = build_network(site, sc)
    known = {z: c for z, c in counts.items() if z in site.zone_by_id}
    ratios = [c / site.zone_by_id[z].capacity for z, c in known.items() if site.zone_by_id[z].capacity > 0]
    worst = max(ratios + [0.0]) if ratios else 1.0
    counts = {z.id: known.get(z.id, worst * z.capacity) for z in site.zones}
    n_samples = int(round(horizon_min / every_min))
    minutes = [k * every_min for k in range(n_samples + 1)]

    def future(actions, seed):
        m = Model(site, sc, seed=seed, tod_s=tod_s, network=net)
        m.set_actions(list(active), in_effect=True)  # already in force on the ground
        if actions is not None:
            m.set_actions(list(active) + list(actions))  # ordered now: staff travel and set-up apply
        m.set_counts(counts)
        out = [m.zone_counts()]
        for k in range(1, n_samples + 1):
            m.run_until(tod_s + k * every_min * 60)
            out.append(m.zone_counts())
        return out

    runs = {"without": [future(None, s) for s in seeds],
            "with": [future(list(proposed), s) for s in seeds]}
    curves = []
    for z in site.zones:
        mean = {k: [sum(r[i][z.id] for r in v) / len(v) for i in range(len(minutes))] for k, v in runs.items()}
        curves.append(Curve(z.id, z.capacity, minutes, [round(x, 1) for x in mean["without"]],
                            [round(x, 1) for x in mean["with"]]))
    affected = [c for c in curves if c.largest_change >= max(5.0, min_change * c.capacity)]
    affected.sort(key=lambda c: -c.largest_change / max(c.capacity, 1))
    return WhatIf(tod_s, horizon_min, list(proposed), affected, curves)
