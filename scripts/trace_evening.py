#!/usr/bin/env python3
"""One engine evening (seed 3, ×1.0) to 21:18 with a per-minute hook: the demand estimate, the
bridge walkways' local density and the measures on the ground whenever they change (docs/mpc.md).
Run from the repo root: python scripts/trace_evening.py"""
import sys; sys.path.insert(0,'.')
from sim.evaluate import run_evening, mpc_policy
from sim.scenario import load_scenario, s_to_hhmm
sc, site = load_scenario('mayday-evening')
pol = mpc_policy(site, sc)
pl = pol.engine.planner
rows = []
last = [None]
def hook(m):
    if int(m.t) % 60: return
    t = s_to_hhmm(m.t)
    if not ("19:30" <= t <= "21:15"): return
    pk = m.zone_peak_density()
    acts = sorted({a.type + ":" + (getattr(a, 'gate', None) or getattr(a, 'zone', None) or getattr(a, 'road', None) or '') for a in m.effective_actions()})
    key = (tuple(acts), round(pl.demand.value, 2))
    if key != last[0] or pk['bridge-e-mid'] > 3.5:
        print(t, 'est', round(pl.demand.value, 3), 'e-mid', round(pk['bridge-e-mid'], 2), 'e-south', round(pk['bridge-e-south'], 2), 'w-mid', round(pk['bridge-w-mid'], 2), acts, flush=True)
        last[0] = key
m = run_evening(site, sc, pol, seed=3, demand=1.0, until_s=21.3 * 3600, on_step=hook)
print('over4', m.over4_by_zone)
