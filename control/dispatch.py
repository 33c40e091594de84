"""Staff dispatch: the staff pool, posts and travel times. Pure (time passed in).

Each post has its duty headcount (site ``posts``); a measure needs officers at posts as the
twin counts them (:func:`crowdflow.site.measures.staff_needed`: a road cut its closure points'
officers, metering and exit-only the gate's marshals, one-way ``staff.one_way_staff``, a
``staffing`` action the headcount above duty). They come from the site's ``staff`` pool,
which waits at its base; a :class:`StaffBook` knows how many are out and for which measure:

* :meth:`StaffBook.shortfall` — how many officers a measure would lack on top of those already
  committed (the optimiser never recommends a measure that lacks any);
* :meth:`StaffBook.deploy` — how many go from the base to which post, leaving late enough to be
  in place just before the measure is needed (pre-positioning by forecast), never before now;
* :meth:`StaffBook.release` — officers a released measure no longer needs walk back, but not
  before their minimum deployment block (``staff.min_block_min``) is over. Until they leave
  they still stand at their post: a measure deployed there meanwhile takes them first (in
  place now, their walk back cancelled), as the twin's staff board does — so the engine's
  time "in effect on the ground" (min on-time) is not a reserve's walk late (docs/mpc.md,
  "The 11F pen flood").

Travel time = ``staff.mobilise_min`` + straight-line distance ÷ ``staff.speed_mps`` (the twin's rule).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Iterable
from zoneinfo import ZoneInfo

from crowdflow.site import Site, Text
from crowdflow.site.measures import staff_needed

BASE = "staff-base"


@dataclass(frozen=True)
class Move:
    n: int
    src: str  # reserve id (deploy) or post id (release)
    dst: str  # post id (deploy) or reserve id (release)
    depart_at: float
    in_place_at: float
    measure_id: str
    kind: str  # "deploy" | "release"
    text: Text

    def as_dict(self) -> dict:
        return {"n": self.n, "from": self.src, "to": self.dst, "depart_at": self.depart_at,
                "in_place_at": self.in_place_at, "measure_id": self.measure_id, "kind": self.kind,
                "text": self.text.model_dump()}


@dataclass
class Team:
    reserve: str
    post: str
    n: int
    depart_at: float
    in_place_at: float


@dataclass
class StaffBook:
    site: Site
    free: dict[str, int] = field(default_factory=dict)  # reserve → officers at the muster point
    teams: dict[str, list[Team]] = field(default_factory=dict)  # measure → teams it holds
    # post → teams stood down but still there until their block ends (their reserve counts them free)
    leaving: dict[str, list[Team]] = field(default_factory=dict)

    def __post_init__(self):
        st = self.site.staff
        if not self.free:
            self.free = {BASE: st.pool}
        self._normal = {p.id: p.headcount for p in self.site.posts}
        self._tz = ZoneInfo(self.site.site.timezone)
        proj = self.site.projection
        self._xy = {BASE: proj.to_metric([st.base or self.site.site.center])[0]}
        self._xy.update({p.id: proj.to_metric([p.position])[0] for p in self.site.posts})
        self._names = {BASE: Text(zh="备勤点", en="the reserve base")}
        self._names.update({p.id: p.name for p in self.site.posts})

    # ------------------------------------------------------------------ facts

    def travel_s(self, a: str, b: str) -> float:
        st = self.site.staff
        walk = math.dist(self._xy[a], self._xy[b]) / st.speed_mps
        return walk + (st.mobilise_min * 60 if a == BASE else 0.0)

    def required(self, measure_ids: Iterable[str]) -> dict[str, int]:
        """Post → officers needed beyond its duty headcount for these measures together: the
        measures' needs add up; a ``staffing`` order asks for at least its headcount."""
        need: dict[str, int] = {}
        roster: dict[str, int] = {}
        for mid in measure_ids:
            for a in self.site.measure_by_id[mid].actions:
                for post, n in staff_needed(self.site, a).items():
                    if a.type == "staffing":
                        roster[post] = max(roster.get(post, 0), n)
                    else:
                        need[post] = need.get(post, 0) + n
        for post, n in roster.items():
            need[post] = max(need.get(post, 0), n)
        return {p: n for p, n in need.items() if n > 0}

    def present(self) -> dict[str, int]:
        """Post → reserve officers assigned there (on their way or in place)."""
        out: dict[str, int] = {}
        for teams in self.teams.values():
            for t in teams:
                out[t.post] = out.get(t.post, 0) + t.n
        return out

    def available(self) -> int:
        return sum(self.free.values())

    def shortfall(self, active: Iterable[str], measure_id: str) -> int:
        """Officers the measure would lack if switched on with ``active`` in force."""
        active = set(active) - {measure_id}
        have = self.present()
        need_before = self.required(active)
        need_after = self.required(active | {measure_id})
        more = sum(max(0, n - max(have.get(p, 0), need_before.get(p, 0))) for p, n in need_after.items())
        return max(0, more - self.available())

    def on_duty_extra(self) -> int:
        return sum(t.n for teams in self.teams.values() for t in teams)

    # ------------------------------------------------------------------ moves

    def deploy(self, measure_id: str, active: Iterable[str], now: float, needed_at: float | None = None,
               setup_s: float = 0.0) -> list[Move] | None:
        """Send the officers ``measure_id`` adds to what ``active`` already holds. Each team
        leaves so as to be in place ``setup_s`` before ``needed_at`` (now at the latest).
        Returns None, changing nothing, when the reserves cannot supply them."""
        if self.shortfall(active, measure_id) > 0:
            return None
        have = self.present()
        need = self.required(set(active) | {measure_id})
        moves: list[Move] = []
        teams: list[Team] = []
        free = dict(self.free)
        for post, n in sorted(need.items()):
            lack = n - have.get(post, 0)
            stay = []
            for t in sorted(self.leaving.get(post, ()), key=lambda t: -t.depart_at):
                if lack <= 0:
                    break
                k = min(lack, t.n, free.get(t.reserve, 0))
                if k <= 0 or t.depart_at <= now:
                    continue  # gone (or their reserve's count already spent)
                free[t.reserve] -= k
                lack -= k
                stay.append((t, k))
                # a leaving team's depart_at is when it walks back, its in_place_at when its block began
                teams.append(Team(t.reserve, post, k, t.in_place_at, now))
                moves.append(self._move(k, t.reserve, post, now, now, measure_id, "deploy", stays=True))
            for res in sorted(free, key=lambda r: (self.travel_s(r, post), r)):
                if lack <= 0:
                    break
                k = min(lack, free[res])
                if k <= 0:
                    continue
                travel = self.travel_s(res, post)
                depart = now if needed_at is None else max(now, needed_at - setup_s - travel)
                free[res] -= k
                lack -= k
                teams.append(Team(res, post, k, depart, depart + travel))
                moves.append(self._move(k, res, post, depart, depart + travel, measure_id, "deploy"))
            if lack > 0:
                return None
            for t, k in stay:
                lst = self.leaving[post]
                lst.remove(t)
                if t.n > k:
                    lst.append(Team(t.reserve, post, t.n - k, t.depart_at, t.in_place_at))
        self.free = free
        self.teams.setdefault(measure_id, []).extend(teams)
        return moves

    def release(self, measure_id: str, still_active: Iterable[str], now: float) -> list[Move]:
        """The measure's officers not needed by ``still_active`` walk back to their reserve
        once their minimum block is over; officers another measure still needs at the same
        post stay there and pass to that measure."""
        teams = self.teams.pop(measure_id, [])
        if not teams:
            return []
        still = [m for m in still_active if m != measure_id]
        need = self.required(still)
        have = self.present()
        block = self.site.staff.min_block_min * 60
        moves: list[Move] = []
        for t in sorted(teams, key=lambda t: -self.travel_s(t.reserve, t.post)):
            keep = max(0, min(t.n, need.get(t.post, 0) - have.get(t.post, 0)))
            if keep:
                owner = next((m for m in still if t.post in self.required([m])), None)
                if owner is not None:
                    self.teams.setdefault(owner, []).append(Team(t.reserve, t.post, keep, t.depart_at, t.in_place_at))
                    have[t.post] = have.get(t.post, 0) + keep
                else:
                    keep = 0
            back = t.n - keep
            if back <= 0:
                continue
            depart = max(now, t.depart_at + block)
            travel = self.travel_s(t.post, t.reserve)
            self.free[t.reserve] = self.free.get(t.reserve, 0) + back
            if depart > now:  # still at the post until then (in_place_at: when their block began)
                self.leaving.setdefault(t.post, []).append(Team(t.reserve, t.post, back, depart, t.depart_at))
            moves.append(self._move(back, t.post, t.reserve, depart, depart + travel, measure_id, "release"))
        return moves

    def _hhmm(self, t: float) -> str:
        return dt.datetime.fromtimestamp(t, self._tz).strftime("%H:%M")

    def _move(self, n, src, dst, depart, arrive, measure_id, kind, stays: bool = False) -> Move:
        a, b = self._names[src], self._names[dst]
        if stays:
            text = Text(zh=f"{a.zh} 在 {b.zh} 待撤的 {n} 人留岗（{self._hhmm(depart)} 起）",
                        en=f"{n} of {a.en} still at {b.en} stay on ({self._hhmm(depart)})")
        elif kind == "deploy":
            text = Text(zh=f"{a.zh} 派 {n} 人至 {b.zh}，{self._hhmm(depart)} 出发，{self._hhmm(arrive)} 到位",
                        en=f"{n} from {a.en} to {b.en}: leave {self._hhmm(depart)}, in place {self._hhmm(arrive)}")
        else:
            text = Text(zh=f"{a.zh} {n} 人撤回 {b.zh}，{self._hhmm(depart)} 撤离",
                        en=f"{n} stood down from {a.en} back to {b.en} at {self._hhmm(depart)}")
        return Move(n, src, dst, depart, arrive, measure_id, kind, text)
