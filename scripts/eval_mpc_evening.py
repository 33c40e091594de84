#!/usr/bin/env python3
"""One evening of the measures engine (policy mpc) on the yardstick, counting how many decisions
the optimiser answered and how many the rule-based stand-in did.

Usage: python scripts/eval_mpc_evening.py BUDGET_S DEMAND   (e.g. 2 1.0)
"""
import sys, time, collections
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
from sim.scenario import load_scenario
from sim.evaluate import run_evening, mpc_policy
from sim.cameras import camera_views
sc, site = load_scenario("mayday-evening")
budget = float(sys.argv[1]); demand = float(sys.argv[2])
pol = mpc_policy(site, sc, 60.0, cycle_s=120.0)
pl = pol.engine.planner
pl.optimizer.budget_s = budget
eng = collections.Counter(); el = []
orig = pl.decide
def dec(*a, **k):
    fresh = pl.last is None or a[0] - pl.last.at >= pl.cycle_s
    r = orig(*a, **k)
    if fresh:
        eng[r.engine] += 1; el.append(r.decision.elapsed_s)
    return r
pl.decide = dec
t = time.time()
m = run_evening(site, sc, pol, 0, demand=demand, views=camera_views(site))
print("wall", round(time.time() - t), dict(eng), "max elapsed", round(max(el), 2))
print(m)
