#!/usr/bin/env python3
"""The planning twin's step against the yardstick's (issue 11): forecast error and cost.

From states of the yardstick's evening (the site twin at the scenario's 5-s step, seed 0, left
uncontrolled), every ``--every`` minutes from ``--from`` to ``--to``: the planning twin
(``sim.plantwin.ModelTwin``, started from the zone counts as the live engine is) rolls 30
minutes at each planning step, nothing ordered. Reported per step: the 沧白路 sidewalk's
(``--zone``) peak load against the planning twin at 5 s from the same start and against what
the yardstick itself did next (its own continuation, composition and routes included); the mean
absolute error of every zone's load over the 30 minutes against both; the time of one rollout.

Usage: python scripts/bench_plan_step.py [--steps 5,10,15] [--every 30] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from control.twin import TwinStart  # noqa: E402
from sim.model import Model  # noqa: E402
from sim.plantwin import ModelTwin  # noqa: E402
from sim.scenario import hhmm_to_s, load_scenario  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="mayday-evening")
    ap.add_argument("--steps", default="5,10,15")
    ap.add_argument("--from", dest="t_from", default="19:00")
    ap.add_argument("--to", dest="t_to", default="21:00")
    ap.add_argument("--every", type=float, default=30.0)
    ap.add_argument("--zone", default="cangbai-walk")
    ap.add_argument("--json")
    args = ap.parse_args()
    sc, site = load_scenario(args.scenario)
    steps = [float(x) for x in args.steps.split(",")]
    twins = {s: ModelTwin(site, sc, step_s=s) for s in steps}
    zones = [z.id for z in site.zones]
    cap = np.array([z.capacity for z in site.zones])
    yard = Model(site, sc, seed=0)
    rows = []
    t = hhmm_to_s(args.t_from)
    while t <= hhmm_to_s(args.t_to):
        yard.run_until(t)
        start = TwinStart(t, yard.zone_counts())
        truth_m = yard.snapshot()
        truth = []
        for i in range(1, 31):
            truth_m.run_until(t + i * 60)
            c = truth_m.zone_counts()
            truth.append([c[z] for z in zones])
        truth = np.array(truth) / cap
        fc, cost = {}, {}
        for s, tw in twins.items():
            r0 = time.perf_counter()
            r = tw.rollout(start, [(0.0, [])], 30.0, 1.0)
            cost[s] = time.perf_counter() - r0
            fc[s] = np.stack([r.load[z][1:] for z in zones], axis=1)
        ref = fc[min(steps)]
        k = zones.index(args.zone)
        row = {"tod": f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}", "truth_peak": float(truth[:, k].max())}
        for s in steps:
            row[f"peak_{s:g}"] = float(fc[s][:, k].max())
            row[f"mae_vs_truth_{s:g}"] = float(np.abs(fc[s] - truth).mean())
            row[f"mae_vs_{min(steps):g}s_{s:g}"] = float(np.abs(fc[s] - ref).mean())
            row[f"rollout_s_{s:g}"] = cost[s]
        rows.append(row)
        print(json.dumps({k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in row.items()}), flush=True)
        t += args.every * 60
    summary = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k != "tod"}
    print("mean", json.dumps({k: round(v, 3) for k, v in summary.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "mean": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
