#!/usr/bin/env python3
"""Where a measure is switched a third time within 20 min (the yardstick's flap count) on one
engine evening: every switch on the ground (action keys, as sim/evaluate.py counts them) and
every change of the engine's measure set, with times. docs/mpc.md, "Release and flaps".
The whole evening is the yardstick's (``sim.evaluate.run_evening``, as ``crowdflow evaluate``
runs it): with ``--jsonl`` its metrics row is appended as ``crowdflow evaluate --jsonl`` writes it.
Every 10 minutes it also prints the planner's demand estimate.
Run from the repo root: python scripts/trace_flaps.py SEED DEMAND [--until HH:MM] [--jsonl F]"""
import argparse, dataclasses, json, sys; sys.path.insert(0, '.')
from sim.evaluate import run_evening, mpc_policy, FLAP_WINDOW_S
from sim.scenario import load_scenario, s_to_hhmm, hhmm_to_s

ap = argparse.ArgumentParser()
ap.add_argument('seed', type=int)
ap.add_argument('demand', type=float)
ap.add_argument('--until')
ap.add_argument('--jsonl')
args = ap.parse_args()
seed, demand = args.seed, args.demand
until = hhmm_to_s(args.until) if args.until else None
sc, site = load_scenario('mayday-evening')
pol = mpc_policy(site, sc)
eng = pol.engine
pl = eng.planner
prev = {'eff': set(), 'meas': {}}
sw = {}

def key(a):
    return a.type + ':' + str(getattr(a, 'gate', None) or getattr(a, 'zone', None) or getattr(a, 'road', None) or '')

def hook(m):
    if int(m.t) % 600 == 0 and pl.demand is not None:
        print(s_to_hhmm(m.t), 'demand estimate', round(pl.demand.value, 3), flush=True)
    eff = {key(a) for a in m.effective_actions() if a.type not in ('broadcast', 'staffing')}
    for k in sorted(eff ^ prev['eff']):
        ts = sw.setdefault(k, []); ts.append(m.t)
        flag = ' FLAP' if len(ts) >= 3 and ts[-1] - ts[-3] < FLAP_WINDOW_S else ''
        print(s_to_hhmm(m.t), 'ground', 'on ' if k in eff else 'off', k, flag, flush=True)
    prev['eff'] = eff
    meas = {mid: t for a in eng.areas.values() for mid, t in a.measures.items()}
    for mid in sorted(set(meas) ^ set(prev['meas'])):
        print(s_to_hhmm(m.t), 'engine', 'on ' if mid in meas else 'off', mid, flush=True)
    prev['meas'] = meas

m = run_evening(site, sc, pol, seed=seed, demand=demand, until_s=until, on_step=hook)
print('flaps', m.flaps, 'over4', m.over4_by_zone, 'cpu_s', round(m.cpu_s))
if args.jsonl and until is None:
    with open(args.jsonl, 'a') as f:
        f.write(json.dumps(dataclasses.asdict(m), default=float) + "\n")
