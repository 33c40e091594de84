#!/usr/bin/env python3
"""The planner's demand estimate on the scripted seed-3 evening (tests/test_mpc_release.py's
script: Xiaoshizi metered from 18:39, the bridge one-way from 19:35, its entry metered from
20:20) with TRUE zone counts, planning every 5 minutes from 19:30 (docs/mpc.md, "Release and
flaps"): each window's measurement, the estimate, the queue counts the planner keeps against the
evening's, and the forecast's residual per zone summed over the windows.
Run from the repo root: python scripts/trace_demand_loop.py [WINDOWS]"""
import sys; sys.path.insert(0,'.')
from sim.scenario import load_scenario, hhmm_to_s, s_to_hhmm
from sim.plantwin import ModelTwin
from control.measures import MeasurePlanner
from tests.test_mpc_release import play, actions, SCRIPT
from tests.test_mpc import epoch, states
sc, site = load_scenario('mayday-evening')
truth = play(site, sc, "19:30")
twin = ModelTwin(site, sc.model_copy(update={"demand_scale": 1.0}))
planner = MeasurePlanner(site, twin, budget_s=600.0, tod=lambda now: now - epoch(0))
orig = planner.demand.update
def upd(at, fs, f, o, a, w):
    print('  measure', s_to_hhmm(at - epoch(0)), 'scale', round(fs,3), 'pred', round(f), 'obs', round(o), 'arr', round(a), '->', round(fs + (o-f)/a, 3))
    return orig(at, fs, f, o, a, w)
planner.demand.update = upd
import collections
resid = collections.Counter()
orig_learn = planner._learn
def learn(now, counts, unknown, active):
    old = [h for h in planner._hist if 300 <= now - h[0] <= 1800]
    if old:
        at, tod, act0, chosen, curves, unk0, scale = old[-1]
        curve = curves.get('without') if frozenset(active) == act0 else curves.get('with')
        k = int(round((now - at) / 60))
        for z in site.zones:
            resid[z.id] += counts[z.id] - curve[z.id][min(k, len(curve[z.id]) - 1)] * z.capacity
    return orig_learn(now, counts, unknown, active)
planner._learn = learn
bound = {p.id: "IV" for p in site.plans}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 14):
    now = epoch(truth.t)
    active = {}
    for at, ids in SCRIPT:
        if hhmm_to_s(at) <= truth.t:
            for mid in ids: active.setdefault(mid, epoch(hhmm_to_s(at)))
    r = planner.decide(now, states(site, truth, now), active, {}, bound, force=True)
    print(s_to_hhmm(truth.t), round(planner.demand.value, 3), 'chosen', r.decision.chosen, 'q', {k: round(v) for k, v in planner._queues(now, active).items() if v > 1}, 'true', {k: round(v) for k, v in twin.queue_now(truth).items() if v > 1})
    truth.run_until(truth.t + 300)
    for at, ids in SCRIPT:
        if truth.t - 300 < hhmm_to_s(at) <= truth.t:
            truth.set_actions(actions(site, ids), in_effect=True)

print(sorted(((round(v), k) for k, v in resid.items())))
