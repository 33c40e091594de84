"""Partitions: the site split into groups of plan areas, each run by one control worker.

``control.partitions`` maps a partition id to the plan areas it holds. A partition owns the
zones of its plans, the cameras that see them and the gates those cameras report; its keys
carry the Redis Cluster hash tag ``{<partition>}`` (:meth:`crowdflow.bus.Keys.partition`), so
the one fenced MULTI/EXEC of its worker stays in one slot.

Anything that would couple two partitions is **refused** by ``check-config``
(:func:`partition_problems`), never silently split: a zone in two plans, a zone in no
partition, a camera (or a gate it reports) seeing zones of two partitions, a measure of one
plan acting on another partition's zones (a road cutoff freeing their ground, a gate, a
one-way walkway). The site-wide 平急转换 measures are the one explicit exception: every
partition applies the whole ``emergency`` list to its own zones, and the dashboard shows the
union once.

Without ``control.partitions`` the whole site is one partition, id ``""``, whose keys are
``<prefix>:…`` exactly as before (on a cluster the prefix then needs a hash tag, e.g.
``cf:{site}``).
"""

from __future__ import annotations

from .model import Site
from .plans import ExitOnlyAction, MetroInboundAction, MetroLimitAction, OneWayAction, TrafficCutoffAction

WHOLE = ""  # the partition id of an unpartitioned site


def partition_ids(site: Site) -> list[str]:
    return list(site.control.partitions) or [WHOLE]


def plan_partition(site: Site) -> dict[str, str]:
    """Plan id → partition id."""
    if not site.control.partitions:
        return {p.id: WHOLE for p in site.plans}
    return {plan: pid for pid, plans in site.control.partitions.items() for plan in plans}


def zone_partition(site: Site) -> dict[str, str]:
    """Zone id → partition id (zones in no partition are left out)."""
    if not site.control.partitions:
        return {z.id: WHOLE for z in site.zones}
    by_plan = plan_partition(site)
    return {zid: by_plan[p.id] for p in site.plans if p.id in by_plan for zid in p.zones}


def camera_zones(site: Site) -> dict[str, set[str]]:
    """Camera id → every zone it reports on: the zones it sees and those of its gates."""
    out = {c.id: set(c.zones) for c in site.cameras}
    for g in site.gates:
        if g.camera in out:
            out[g.camera] |= {z for z in (g.inside_zone, g.outside_zone) if z}
    return out


def camera_partition(site: Site) -> dict[str, str]:
    """Camera id → partition id (the partition of its first zone; check-config makes sure all
    of a camera's zones are in that one)."""
    if not site.control.partitions:
        return {c.id: WHOLE for c in site.cameras}
    zp = zone_partition(site)
    return {c.id: zp[c.zones[0]] for c in site.cameras if c.zones[0] in zp}


def sub_site(site: Site, pid: str) -> Site:
    """The part of the site one partition's worker runs: its zones, cameras, gates and plans
    (roads, posts and the emergency measures stay whole: they are shared references)."""
    if not site.control.partitions:
        return site
    zp = zone_partition(site)
    cp = camera_partition(site)
    zones = {z for z, p in zp.items() if p == pid}
    fields = {name: getattr(site, name) for name in type(site).model_fields}
    fields.update(
        zones=[z for z in site.zones if z.id in zones],
        cameras=[c for c in site.cameras if cp.get(c.id) == pid],
        gates=[g for g in site.gates if (g.inside_zone in zones or g.outside_zone in zones)],
        plans=[p for p in site.plans if p.id in site.control.partitions[pid]],
    )
    return type(site).model_construct(**fields)


def partition_problems(site: Site) -> list[tuple[str, str]]:
    """What couples two partitions, with the path of the item that does (see module doc)."""
    parts = site.control.partitions
    if not parts:
        return []
    problems: list[tuple[str, str]] = []
    plan_ids = {p.id for p in site.plans}
    owner: dict[str, str] = {}
    for pid, plans in parts.items():
        for j, plan in enumerate(plans):
            path = f"control.partitions.{pid}[{j}]"
            if plan not in plan_ids:
                problems.append((path, f"unknown plan {plan!r}"))
            elif plan in owner:
                problems.append((path, f"plan {plan!r} is already in partition {owner[plan]!r}"))
            else:
                owner[plan] = pid
    for i, p in enumerate(site.plans):
        if p.id not in owner:
            problems.append((f"plans[{i}]", f"plan {p.id!r} is in no partition of control.partitions"))
    zone_owner: dict[str, tuple[str, str]] = {}  # zone → (partition, plan)
    for i, p in enumerate(site.plans):
        pid = owner.get(p.id)
        for j, zid in enumerate(p.zones):
            prev = zone_owner.get(zid)
            if prev and prev[1] != p.id:
                problems.append((f"plans[{i}].zones[{j}]",
                                 f"zone {zid!r} is also in plan {prev[1]!r}: a zone belongs to one plan area when partitioned"))
            elif pid is not None:
                zone_owner[zid] = (pid, p.id)
    for i, z in enumerate(site.zones):
        if z.id not in zone_owner:
            problems.append((f"zones[{i}]", f"zone {z.id!r} is in no plan, so in no partition"))
    zp = {z: v[0] for z, v in zone_owner.items()}
    cams = camera_zones(site)
    for i, c in enumerate(site.cameras):
        seen = sorted({zp[z] for z in cams[c.id] if z in zp})
        if len(seen) > 1:
            where = {pid: sorted(z for z in cams[c.id] if zp.get(z) == pid) for pid in seen}
            problems.append((f"cameras[{i}]", f"camera {c.id!r} reports zones of partitions {where}; "
                                              "split it into one camera id per partition or move the zones"))
    roads = site.road_by_id
    gates = site.gate_by_id
    for i, p in enumerate(site.plans):
        pid = owner.get(p.id)
        if pid is None:
            continue
        for j, lv in enumerate(p.levels):
            for k, a in enumerate(lv.actions):
                touched: set[str] = set()
                if isinstance(a, TrafficCutoffAction) and a.road in roads:
                    touched = set(roads[a.road].frees)
                elif isinstance(a, (ExitOnlyAction, MetroLimitAction, MetroInboundAction)) and a.gate in gates:
                    g = gates[a.gate]
                    touched = {z for z in (g.inside_zone, g.outside_zone) if z}
                elif isinstance(a, OneWayAction):
                    touched = {a.zone, a.toward}
                foreign = sorted(z for z in touched if zp.get(z, pid) != pid)
                if foreign:
                    problems.append((f"plans[{i}].levels[{j}].actions[{k}]",
                                     f"acts on zones {foreign} of partition(s) "
                                     f"{sorted({zp[z] for z in foreign})}, not {pid!r}: a measure stays in its partition"))
    return problems


def partition_keys(site: Site, keys) -> dict:
    """Partition id → its :class:`crowdflow.bus.Keys` (``{"": keys}`` for an unpartitioned site)."""
    if not site.control.partitions:
        return {WHOLE: keys}
    return {pid: keys.partition(pid) for pid in site.control.partitions}


def camera_keys(site: Site, keys) -> dict:
    """Camera id → the keys of its partition (where its observations go)."""
    parts = partition_keys(site, keys)
    return {cam: parts[pid] for cam, pid in camera_partition(site).items()}
