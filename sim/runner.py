"""The simulator's Redis shell: virtual edge agents for the demo and for end-to-end tests.

Every ``interval_s`` of wall time the model advances ``speed × interval_s`` simulated
seconds, the virtual cameras publish one Observation each to ``<p>:obs`` (field ``rec``),
exactly as edge agents do, and every ``actions_every_s`` the actions in force are read from
``<p>:inforce`` (control's one record of what is in force) and applied to the model,
so a confirmed action changes the simulated crowd. At the scenario's end the evening starts
over from its start (a new seed), so a demo can run for ever.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np
import redis

from crowdflow.bus import OBS_MAXLEN, Backoff, Keys, sign_record
from crowdflow.records import InForce, PlanState, RecordError, decode
from crowdflow.site import Site
from crowdflow.site.partitions import camera_keys, partition_keys

from .cameras import Faults, VirtualCameras, camera_views
from .model import Model
from .scenario import Scenario, s_to_hhmm

log = logging.getLogger("crowdflow.sim")


def active_actions(r: redis.Redis, keys: Keys | list[Keys]) -> list:
    """The measures in force, from control's one published record ``<p>:inforce`` (plan
    levels, overrides and the emergency mode's own measures); of every partition's, given
    their keys. Before control has published it (an older control), the union of every plan's
    ``active_actions`` in ``<p>:plan:state`` (bad entries skipped with a warning naming the plan
    and the field)."""
    parts = [keys] if isinstance(keys, Keys) else list(keys)
    out, seen, fallback = [], set(), []
    for k in parts:
        raw = r.get(k.inforce)
        if raw:
            try:
                for m in decode(InForce, raw).measures:
                    j = m.action.model_dump_json()
                    if j not in seen:
                        seen.add(j)
                        out.append(m.action)
                continue
            except RecordError as e:
                log.warning("%s: %s (falling back to plan states)", k.inforce, e)
        fallback.append(k)
    states = [(k.plan_state, plan_id, raw) for k in fallback
              for plan_id, raw in sorted(r.hgetall(k.plan_state).items())]
    for key, plan_id, raw in states:
        try:
            ps = decode(PlanState, raw)
        except RecordError as e:
            log.warning("%s[%s]: %s (ignored)", key, plan_id, e)
            continue
        for a in ps.active_actions:
            k = a.model_dump_json()
            if k not in seen:
                seen.add(k)
                out.append(a)
    return out


class SimRunner:
    def __init__(self, site: Site, scenario: Scenario, r: redis.Redis, keys: Keys, cameras: list[str],
                 speed: float = 60.0, seed: int = 0, start_tod: float | None = None, interval_s: float = 1.0,
                 actions_every_s: float = 2.0, faults: Faults | None = None, clock: Callable[[], float] = time.time,
                 signing_keys: dict[str, str] | None = None):
        self.site, self.sc, self.r, self.keys = site, scenario, r, keys
        self.signing_keys = signing_keys or {}  # camera → its edge key: the twin plays the edges, signing as they do
        self.cam_keys = camera_keys(site, keys)  # each camera publishes to its partition's stream
        self.part_keys = list(partition_keys(site, keys).values())
        self.speed, self.seed, self.interval_s, self.clock = speed, seed, interval_s, clock
        self.actions_every_s = actions_every_s
        self.start_tod = scenario.start_s if start_tod is None else start_tod
        self.model = self._evening(seed)
        self.cameras = VirtualCameras(site, camera_views(site, cameras), seed=seed + 1,
                                      agent_id="sim", faults=faults or Faults(), seq_start=int(clock() * 1000))
        self._carry = 0.0
        self._actions_key = ""
        self.published = 0

    def _evening(self, seed: int) -> Model:
        """A model of the evening at ``start_tod``, warmed up from the scenario's start so
        the site is not empty when it begins."""
        m = Model(self.site, self.sc, seed=seed)
        m.run_until(self.start_tod)
        return m

    def advance(self, sim_s: float) -> dict[str, tuple[int, int]]:
        """Run the model ``sim_s`` simulated seconds; gate (in, out) counts over that time."""
        self._carry += sim_s
        moved = np.zeros(self.model.net.P)
        entered = np.zeros(len(self.model.net.sources))
        while self._carry >= self.sc.model.step_s:
            if self.model.t >= self.sc.end_s:
                self.seed += 1
                log.info("evening over: starting again at %s (seed %d)", self.sc.start, self.seed)
                actions = self.model.actions
                self.model = self._evening(self.seed)
                self.model.set_actions(actions, in_effect=True)
            self.model.step()
            moved += self.model.last_moved
            entered += self.model.last_entered
            self._carry -= self.sc.model.step_s
        return self.model.gate_flows(moved, entered)

    def apply_actions(self) -> None:
        actions = active_actions(self.r, self.part_keys)
        key = "|".join(sorted(a.model_dump_json() for a in actions))
        if key != self._actions_key:
            self._actions_key = key
            self.model.set_actions(actions)
            log.info("actions in force: %s", [a.type + ":" + (getattr(a, "road", None) or getattr(a, "gate", None)
                                                            or getattr(a, "zone", None) or getattr(a, "post", None) or "")
                                              for a in actions] or "none")

    def tick(self) -> int:
        flows = self.advance(self.speed * self.interval_s)
        # Each record covers speed × interval simulated seconds of crossings: say so in window_s,
        # so that control's flow plausibility check (control/ingest.py) sees a physical rate.
        window = min(3600.0, self.interval_s * self.speed)
        obs = self.cameras.observe(self.clock(), self.model.zone_counts(), flows, window_s=self.interval_s)
        if window != self.interval_s:
            obs = [o.model_copy(update={"window_s": window}) for o in obs]
        pipe = self.r.pipeline(transaction=False)
        for o in obs:
            rec = o.encode()
            fields = {"rec": rec}
            if o.camera_id in self.signing_keys:
                fields["sig"] = sign_record(self.signing_keys[o.camera_id], rec)
            pipe.xadd(self.cam_keys.get(o.camera_id, self.keys).obs, fields, maxlen=OBS_MAXLEN, approximate=True)
        pipe.execute()
        self.published += len(obs)
        return len(obs)

    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        log.info("sim: %d virtual cameras %s, %g× from %s", len(self.cameras.views), sorted(self.cameras.views),
                 self.speed, s_to_hhmm(self.start_tod))
        t0 = self.clock()
        next_tick = t0
        next_actions = t0
        backoff = Backoff(cap_s=2.0)  # the services' one policy (crowdflow.bus)
        while not stop.is_set():
            now = self.clock()
            if duration_s is not None and now - t0 >= duration_s:
                break
            try:
                if now >= next_actions:
                    self.apply_actions()
                    next_actions = now + self.actions_every_s
                if now >= next_tick:
                    self.tick()
                    next_tick += self.interval_s
                    if next_tick < now:  # fell behind (slow machine): do not burst
                        next_tick = now + self.interval_s
                backoff.succeeded()
            except redis.RedisError as e:
                wait = backoff.failed()
                log.error("redis error (%s); retrying in %.1f s", e, wait)
                stop.wait(wait)
                continue
            stop.wait(max(0.0, min(next_tick, next_actions) - self.clock()))
