"""The ``staff`` section: the pool that measures and posts draw from (pure data).

Staff are a pool at a base; a measure names the staff it needs (a road cut: its closure
points' officers; exit-only and metering: the gate's marshals; one-way: ``one_way_staff``),
they travel from the base to the measure's post at ``speed_mps`` after ``mobilise_min``, and
once sent stay at least ``min_block_min`` before they may go back.
"""

from __future__ import annotations

from pydantic import Field

from .base import LonLat, Strict


class StaffPool(Strict):
    base: LonLat | None = None  # where the reserve waits (None: the site centre)
    pool: int = Field(120, ge=0, le=100000)  # reserve on call for this site this evening
    speed_mps: float = Field(1.4, gt=0, le=30)  # travel speed base → post (on foot ≈1.4)
    mobilise_min: float = Field(3, ge=0, le=120)  # from order to leaving the base
    min_block_min: float = Field(60, ge=0, le=720)  # least time a dispatched team stays
    one_way_staff: int = Field(4, ge=0, le=200)  # marshals a one-way measure needs at its post
