#!/usr/bin/env python3
"""Benchmark the site twin (sim/twin.py) on the real site and scenario.

What the predictive engine (issue 11) needs: from a live state, copy it and roll 30 minutes
forward for a handful of candidate measure sets within one decision cycle (≤ 2 s on one core).
Printed, best of --repeat runs:

* snapshot (Model.snapshot: state arrays, measures, staff copied),
* one model step (5 s of site time),
* a 30-minute rollout from a snapshot (360 steps) and how many fit into 2 s,
* a whole evening (17:00–23:30),
* the floor: the same number of passes over the state arrays with one fused numpy operation
  each (what numpy itself can do for a step that touches the state ~30 times); the ratio
  floor ÷ twin says how far from memory-bound the step is (it must stay < 1).

Usage: python scripts/bench_twin.py [--repeat 3]. Timings on a shared machine: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sim.model import Model  # noqa: E402
from sim.scenario import load_scenario  # noqa: E402


def best(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sc, site = load_scenario("mayday-evening")
    m = Model(site, sc, seed=0)
    m.run_until(20 * 3600)
    net = m.net
    print(f"network: {net.N} places, {len(net.lanes) // 2} corridors ({net.n_cells} cells), {net.P} ports, "
          f"{net.K} classes; step {sc.model.step_s:g} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    snap = best(lambda: [m.snapshot() for _ in range(100)], args.repeat) / 100
    s = m.snapshot()
    step = best(lambda: [s.step() for _ in range(120)], args.repeat) / 120
    roll = best(lambda: m.snapshot().rollout(minutes=30), args.repeat)
    st = m.state
    arrays = [st.cell, st.act, st.rdy, st.held]
    passes = 30

    def floor():
        for _ in range(360):
            for _ in range(passes // len(arrays)):
                for a in arrays:
                    np.multiply(a, 1.0, out=a)

    fl = best(floor, args.repeat)
    ev = best(lambda: Model(site, sc, seed=1).run_until(sc.end_s), 1)
    print(f"snapshot           {snap * 1e6:8.0f} µs")
    print(f"step (5 s)         {step * 1e3:8.2f} ms")
    print(f"30-min rollout     {roll * 1e3:8.0f} ms  → {2.0 / roll:.1f} rollouts per 2-s decision cycle")
    print(f"whole evening      {ev:8.1f} s  (6.5 h of site time)")
    print(f"numpy floor, 30 passes × 360 steps: {fl * 1e3:.0f} ms; floor ÷ twin rollout = {fl / roll:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
