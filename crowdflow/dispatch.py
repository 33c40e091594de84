"""Dispatch response per evening, from the orders sent to posts and their answers. Pure.

Used by the dashboard (``/api/orders/summary``) and by anyone reading ``<p>:orders``."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from .records import Order

OPEN = ("sent", "acknowledged")


def evening_of(t: float, tz: str) -> str:
    """The local date an evening belongs to (before 06:00 counts to the day before)."""
    d = datetime.fromtimestamp(t, ZoneInfo(tz))
    if d.hour < 6:
        d = datetime.fromtimestamp(t - 6 * 3600, ZoneInfo(tz))
    return d.date().isoformat()


def summarise(orders: Iterable[Order], tz: str) -> list[dict]:
    """Per evening: orders sent, acknowledged, in place, cannot; dispatch response time
    (confirmation → in place) median and 90th percentile, and time to acknowledge."""
    by: dict[str, list[Order]] = {}
    for o in orders:
        by.setdefault(evening_of(o.issued_at, tz), []).append(o)
    out = []
    for day in sorted(by, reverse=True):
        os_ = by[day]
        placed = sorted(o.in_place_s for o in os_ if o.in_place_s is not None)
        acks = sorted(o.acknowledged_at - o.issued_at for o in os_ if o.acknowledged_at is not None)
        out.append({
            "evening": day, "orders": len(os_),
            "acknowledged": sum(o.acknowledged_at is not None for o in os_),
            "in_place": len(placed), "cannot": sum(o.status == "cannot" for o in os_),
            "open": sum(o.status in OPEN for o in os_),
            "in_place_median_s": round(statistics.median(placed), 1) if placed else None,
            "in_place_p90_s": round(placed[min(len(placed) - 1, int(0.9 * len(placed)))], 1) if placed else None,
            "ack_median_s": round(statistics.median(acks), 1) if acks else None,
        })
    return out
