"""Wire records: one versioned, validated record type per hop.

* :class:`Observation` — edge → control (Redis stream ``<prefix>:obs``).
* :class:`ZoneState`   — control → dashboard (hash ``<prefix>:zone:state``, stream
  ``<prefix>:zone:updates``).

Records travel as compact JSON in a single stream field (``rec``). Decoding goes through
:func:`decode`, which never raises anything but :class:`RecordError`, whose message names the
offending field (``zones[0].count: Input should be greater than or equal to 0``).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1

Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Health = Literal["ok", "camera_offline", "view_moved", "degraded"]


class RecordError(ValueError):
    """A record that cannot be accepted; ``str()`` says which field and why."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def encode(self) -> str:
        return self.model_dump_json(exclude_none=False)


class ZoneCount(Record):
    """What one camera saw of one zone during the observation window."""

    zone_id: Id
    count: float = Field(ge=0, le=1e6)  # people seen in the visible part (window mean)
    visible_area_m2: float = Field(gt=0, le=1e7)  # walkable ground of the zone in view
    method: Literal["detect", "tiled", "density", "sim"] = "detect"
    confidence: float = Field(1.0, ge=0, le=1)


class Observation(Record):
    """Edge → control: one per camera per publish interval (also as a heartbeat)."""

    v: Literal[1] = 1
    camera_id: Id
    agent_id: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0)  # per camera, strictly increasing across restarts
    captured_at: float = Field(gt=1e9)  # Unix seconds, end of the window (capture clock)
    window_s: float = Field(1.0, gt=0, le=3600)
    frames: int = Field(0, ge=0)  # frames that went into the window
    health: Health = "ok"
    preset: str | None = None
    zones: list[ZoneCount] = Field(default_factory=list)


class LastKnown(Record):
    count: float
    density: float
    at: float


class ZoneState(Record):
    """Control → dashboard: the state of one zone. Unknown values are null, never 0."""

    v: Literal[1] = 1
    zone_id: Id
    status: Literal["ok", "unknown"]
    reason: str | None = None  # why unknown
    count: float | None = None  # people in the zone (estimated over its walkable area)
    density: float | None = None  # persons / m² of walkable ground
    capacity: int  # LB/T 034-2014 instantaneous capacity
    capacity_ratio: float | None = None
    coverage: float | None = None  # share of the walkable area the cameras see, 0..1
    method: str | None = None
    confidence: float | None = None
    sources: list[str] = Field(default_factory=list)  # cameras whose data is in the value
    updated_at: float | None = None  # capture time of the newest observation used
    computed_at: float  # when control produced this record
    last_known: LastKnown | None = None  # the last fresh value, shown with its age when unknown


R = TypeVar("R", bound=Record)


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(record)"


def decode(cls: type[R], raw: str | bytes | dict) -> R:
    """Parse and validate one record; raise :class:`RecordError` naming the bad field."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"(record): not UTF-8 ({e.reason} at byte {e.start})") from None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RecordError(f"(record): not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"(record): expected a JSON object, got {type(raw).__name__}")
    v = raw.get("v")
    if v != SCHEMA_VERSION:
        raise RecordError(f"v: unsupported schema version {v!r} (this reader speaks {SCHEMA_VERSION})")
    try:
        rec = cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RecordError(f"{_field_path(first['loc'])}: {first['msg']}{more}") from None
    return rec


def as_of(state: ZoneState, now: float, stale_after_s: float) -> ZoneState:
    """The state as a reader should show it at ``now``: a value whose newest source is older
    than ``stale_after_s`` becomes ``unknown`` (keeping it as ``last_known``), never stays live.

    Control applies this when it computes states; the dashboard applies it again so that a
    silent control service cannot leave stale numbers on screen."""
    if state.status != "ok" or state.updated_at is None:
        return state
    age = now - state.updated_at
    if age <= stale_after_s:
        return state
    return state.model_copy(
        update=dict(
            status="unknown",
            reason=f"stale: newest observation {age:.0f} s old (limit {stale_after_s:g} s)",
            count=None,
            density=None,
            capacity_ratio=None,
            coverage=None,
            method=None,
            confidence=None,
            last_known=LastKnown(count=state.count or 0.0, density=state.density or 0.0, at=state.updated_at),
            computed_at=now,
        )
    )
