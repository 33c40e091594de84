#!/usr/bin/env python3
"""Fused zone counts against the evening's true counts every 5 min on one engine evening (x1.0),
with the planner's demand estimate (docs/mpc.md, "Release and flaps").
Run from the repo root: python scripts/trace_fused_counts.py SEED UNTIL_HHMM"""
import sys; sys.path.insert(0,'.')
from sim.evaluate import run_evening, mpc_policy
from sim.scenario import load_scenario, s_to_hhmm, hhmm_to_s
sc, site = load_scenario('mayday-evening')
pol = mpc_policy(site, sc)
cur = {}
orig = pol.step
def step(now, zones):
    cur['z'] = zones
    return orig(now, zones)
pol.step = step
rows = []
def hook(m):
    if int(m.t) % 300 or 'z' not in cur: return
    tc = m.zone_counts(); z = cur['z']
    ok = [k for k, s in z.items() if s.status == 'ok' and s.count is not None]
    f = sum(z[k].count for k in ok); t = sum(tc[k] for k in ok)
    worst = sorted((round(z[k].count - tc[k]), k) for k in ok)[:3]
    print(s_to_hhmm(m.t), 'fused', round(f), 'true', round(t), 'ratio %.3f' % (f / t), 'unknown', len(z) - len(ok), worst, 'est', round(pol.engine.planner.demand.value, 3), flush=True)
run_evening(site, sc, pol, seed=int(sys.argv[1]), demand=1.0, until_s=hhmm_to_s(sys.argv[2]), on_step=hook)
