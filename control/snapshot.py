"""Control's working memory in Redis, so a new leader carries on where the old one stopped.

The published records (zone states, plan states, recommendations, alarms, the mode) say what
is; they do not hold what control needs to decide what comes next: each zone's occupancy
filter and the newest view of each camera, gate flows of the last two minutes, the last known
value, and each plan area's sustain timers (how long a trigger has held), release timer,
cooldown and rejections.

The memory is a Redis hash, ``<p>:control:memory``, written **incrementally**: a field
``meta`` (version, time, every plan area's timers) and one field ``z:<zone>`` per zone. The
leader writes, with every fenced write once a second, ``meta`` and the fields of the zones
whose memory changed since the last write (:meth:`control.zones.ZoneBook.take_dirty`), all of
them on its first write of a term. Zones nobody reported on are not rewritten: at 10,000
zones the whole document cost ≈ 0.24 ms of CPU per zone per second, more than a core
(docs/scaling.md). The fields travel in the same MULTI/EXEC as the states they belong to,
so the hash is always one consistent picture.

:func:`dump` gives the fields, :func:`load` gives them to a fresh zone book and plan engine on
takeover. The fields mirror the in-memory structures of :mod:`control.zones` and
:mod:`control.plans` (their attribute names); a memory that does not fit (an older version, a
changed structure) is refused as a whole by :func:`load`, which then answers False: the new
leader starts from the published states alone, as before, and says so. Never half-restored.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import fields

from pydantic_core import to_json

from crowdflow.records import LastKnown

from .fusion import OccupancyFilter
from .plans import PlanEngine
from .zones import CameraView, ZoneBook

VERSION = 2  # 2: a hash of fields, written incrementally (1 was one JSON string)
MAX_AGE_S = 600.0  # an older memory is of no use to live control


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _zone(book: ZoneBook, zid: str) -> bytes:
    # pydantic-core's JSON encoder takes the dataclasses, the deque and the record as they are:
    # 5× cheaper than json.dumps of dicts built for it (once a second for every zone that changed)
    return to_json({
        "filter": book._filters.get(zid),
        "views": book._views[zid],
        "pending_flow": book._pending_flow.get(zid, 0.0),
        "flows": book._flows.get(zid, ()),
        "last_known": book._last_known.get(zid),
    })


def dump(book: ZoneBook, engine: PlanEngine, now: float, zones=None) -> dict[str, str | bytes]:
    """The hash fields to write: ``meta`` and the given zones' fields (all zones by default)."""
    areas = {
        pid: {
            "held_since": a.held_since,
            "release_since": a.release_since,
            "last_change": _num(a.last_change),
            "rejected": [[k, v] for k, v in a.rejected.items()],
            "before_emergency": a.before_emergency,
        }
        for pid, a in engine.areas.items()
    }
    out = {"meta": json.dumps({"v": VERSION, "at": now, "areas": areas}, separators=(",", ":"))}
    for zid in (book._views if zones is None else zones):
        if zid in book._views:
            out[f"z:{zid}"] = _zone(book, zid)
    return out


def load(book: ZoneBook, engine: PlanEngine, raw: dict | None, now: float) -> bool:
    """Restore into ``book`` and ``engine`` (freshly built) from the hash's fields (as read by
    HGETALL, bytes or str); False (and nothing changed) when there is no usable memory."""
    if not raw:
        return False
    try:
        fields_ = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
        doc = json.loads(fields_["meta"])
        if doc.get("v") != VERSION or not (now - MAX_AGE_S <= float(doc["at"]) <= now + 60):
            return False
        doc["zones"] = {k[2:]: json.loads(v) for k, v in fields_.items() if k.startswith("z:")}
        view_fields = {f.name for f in fields(CameraView)}
        filter_fields = {f.name for f in fields(OccupancyFilter)}
        staged = {}
        for zid, z in doc["zones"].items():
            if zid not in book._views:
                continue
            f = z["filter"]
            if f is not None and set(f) != filter_fields:
                raise ValueError("filter fields changed")
            views = {}
            for cid, v in z["views"].items():
                if set(v) != view_fields:
                    raise ValueError("view fields changed")
                views[cid] = CameraView(**v)
            staged[zid] = (
                OccupancyFilter(**f) if f is not None else None,
                views,
                float(z["pending_flow"]),
                deque(tuple(x) for x in z["flows"]),
                LastKnown(**z["last_known"]) if z["last_known"] else None,
            )
        areas = {}
        for pid, a in doc["areas"].items():
            if pid not in engine.areas:
                continue
            areas[pid] = (
                {str(k): float(v) for k, v in a["held_since"].items()},
                a["release_since"],
                float("-inf") if a["last_change"] is None else float(a["last_change"]),
                {k: float(v) for k, v in a["rejected"]},
                a["before_emergency"],
            )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return False
    for zid, (f, views, pending, flows, lk) in staged.items():
        if f is not None:
            book._filters[zid] = f
        book._views[zid] = views
        book._pending_flow[zid] = pending
        book._flows[zid] = flows
        if lk is not None:
            book._last_known[zid] = lk
    for pid, (held, release, last_change, rejected, before) in areas.items():
        a = engine.areas[pid]
        a.held_since, a.release_since, a.last_change, a.rejected = held, release, last_change, rejected
        a.before_emergency = before
    return True
