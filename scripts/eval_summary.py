#!/usr/bin/env python3
"""Paired tables (sim.evaluate.table) from `crowdflow evaluate --jsonl` output, over the seeds
every policy finished: python scripts/eval_summary.py RUNS.jsonl"""
import json, sys, collections
sys.path.insert(0, __import__('os').path.dirname(__import__('os').path.dirname(__import__('os').path.abspath(__file__))))
from sim.evaluate import Metrics, table, ci95, safe_multipliers, safe_table
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    by[r["demand"]][r["policy"]].append(Metrics(**r))
for d in sorted(by):
    res = by[d]
    # keep only seeds both policies have (paired)
    common = set.intersection(*[{m.seed for m in v} for v in res.values()])
    res2 = {p: sorted([m for m in v if m.seed in common], key=lambda m: m.seed) for p, v in sorted(res.items())}
    print(table(res2, title=f"demand ×{d:g} ({len(common)} seeds paired: {sorted(common)})"))
    for p, v in res2.items():
        cpu = [m.cpu_s for m in v]
        print(f"{p}: safe {sum(m.safe for m in v)}/{len(v)}, cpu/evening mean {sum(cpu)/max(len(cpu),1):.0f} s")
    print()
# safe throughput over the seeds every policy ran at the lowest demand, walking up each seed's
# sweep: a sweep stops at a seed's first unsafe demand, so higher demands lack those seeds (a
# demand a policy did not run counts as unsafe: the figure is capped at the grid it ran)
sweep = tuple(sorted(by))
pols = sorted({p for d in by for p in by[d]})
seeds = sorted(set.intersection(*[{m.seed for m in by[sweep[0]].get(p, [])} for p in pols]))
flat = [(m.policy, m.seed, m.demand, m) for d in by for p in pols for m in by[d][p]]
print(f"**safe throughput** (sweep {', '.join(f'×{d:g}' for d in sweep)}; seeds {seeds})\n")
print(safe_table(safe_multipliers(flat, pols, seeds, sweep)))
print()
# where and when (the evenings' diagnostics, if the runs carry them)
for d in sorted(by):
    for p, v in sorted(by[d].items()):
        for m in sorted(v, key=lambda m: m.seed):
            late = [e for e in m.event_log if e[2] is None or e[2] > 15]
            if m.over4_by_zone or late:
                print(f"×{d:g} {p} seed {m.seed}: >4 p/m² " + (", ".join(f"{z} {v:.1f} min from {m.over4_first.get(z)}"
                      for z, v in sorted(m.over4_by_zone.items())) or "none")
                      + "; events answered late or never: " + (", ".join(
                          f"{e[0]} {e[1]} " + (f"{e[2]:.0f} min" if e[2] is not None else f"never ({e[3]:.0f} min)")
                          for e in late) or "none"))
