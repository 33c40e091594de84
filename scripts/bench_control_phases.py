#!/usr/bin/env python3
"""CPU per observation of control's pure core, phase by phase (no Redis, no profiler).

A synthetic site of Z zones (one camera each, scripts/bench_control.py), M observations
spread over them (M/Z per zone, as a busy partition's batch): decode + ingest checks, the
zone book taking the batch, the zone states of the zones touched, their encoding, the
working-memory dump, one plan pass. Each phase is timed with ``time.process_time`` over R
repetitions on a fresh zone book; the minimum is printed (the least disturbed by a shared
box). It runs on older trees too (a zone book without ``apply_many`` takes them one by one),
which is how docs/scaling.md compares before and after.

Usage: python scripts/bench_control_phases.py [--zones 833] [--messages 5000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402

from bench_control import payload, synthetic_site  # noqa: E402
from control import snapshot  # noqa: E402
from control.ingest import check  # noqa: E402
from control.plans import PlanEngine  # noqa: E402
from control.zones import ZoneBook  # noqa: E402
from crowdflow.records import Observation, decode  # noqa: E402
from crowdflow.site import parse_site  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zones", type=int, default=833)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n, m = args.zones, args.messages
    site = parse_site(synthetic_site(n), "synthetic")
    rng = np.random.default_rng(1)
    now = time.time()
    raws = [payload(i % n, i, now + i * 1e-5, rng).encode() for i in range(m)]
    gc.collect()
    gc.freeze()
    phases = ("decode+check", "apply", "states", "encode", "dump", "plans")
    res: dict[str, list[float]] = {k: [] for k in phases}
    for _ in range(args.repeat):
        book, engine = ZoneBook(site, 3600), PlanEngine(site)
        t = [time.process_time()]
        obs = [decode(Observation, r) for r in raws]
        for o in obs:
            check(o, site, now + 1)
        t.append(time.process_time())
        if hasattr(book, "apply_many"):
            touched = book.apply_many(obs, now + 1)
        else:
            touched = set()
            for o in obs:
                touched |= book.apply(o, now + 1)
        t.append(time.process_time())
        states = book.states(now + 1, touched)
        t.append(time.process_time())
        [s.encode() for s in states.values()]
        t.append(time.process_time())
        snapshot.dump(book, engine, now + 1, None)
        t.append(time.process_time())
        engine.evaluate(now + 1, states)
        t.append(time.process_time())
        for k, a, b in zip(phases, t, t[1:]):
            res[k].append((b - a) / m * 1e6)
    best = {k: min(v) for k, v in res.items()}
    print(f"{n} zones, {m} observations, min of {args.repeat}: " + "  ".join(f"{k} {v:.1f}" for k, v in best.items())
          + f"  total {sum(best.values()):.1f} µs of CPU per observation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
