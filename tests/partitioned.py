"""A partitioned variant of the Hongyadong site file for the partition and cluster tests.

Hongyadong's own plan areas are coupled (a camera sees zones of two areas, a road cutoff of one
area frees ground in another), so check-config refuses to partition the real file. This
variant removes exactly those couplings and puts each plan area in its own partition."""

from __future__ import annotations

import copy

import yaml

PARTITIONS = {"metro": ["xiaoshizi"], "bridge": ["bridge"], "complex": ["hongyadong"]}


def partitioned(raw: dict, prefix: str | None = None) -> dict:
    d = copy.deepcopy(raw)
    d["control"] = {**d.get("control", {}), "partitions": PARTITIONS}
    if prefix:
        d["redis"] = {**d.get("redis", {}), "prefix": prefix}
    for c in d["cameras"]:
        if c["id"] == "cam-cangbai-walk":  # also sees the metro exit 9 (another partition)
            c["zones"] = ["cangbai-walk"]
    for g in d["gates"]:
        if g["id"] == "gate-xsz-9":  # seen by cam-cangbai-walk (complex); its metro zone is elsewhere
            g["camera"] = None
    for rd in d["roads"]:
        if rd["id"] == "road-cangbai":  # frees ground on the bridge head too
            rd["frees"] = {"cangbai-walk": 0.6, "cangbai-plaza": 0.4}
    for p in d["plans"]:
        if p["id"] == "bridge":
            for lv in p["levels"]:
                lv["actions"] = [a for a in lv["actions"] if a.get("road") != "road-cangbai"]
    return d


def write(raw: dict, path, prefix: str | None = None):
    path.write_text(yaml.safe_dump(partitioned(raw, prefix), allow_unicode=True), encoding="utf-8")
    return path
