#!/usr/bin/env python3
"""Record an evening of the site simulator as a per-zone count series (CSV), for back-tests.

Usage: python scripts/record_series.py --seed 3 --every 30 --out tests/data/mayday_evening_seed3.csv
The series is the model's truth on each zone's own ground (what a perfect camera would see)
with no control applied, 17:00–23:30, one row per sample: t_s (seconds after 17:00), then one
column per zone.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.model import Model  # noqa: E402
from sim.scenario import load_scenario  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="mayday-evening")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sc, site = load_scenario(args.scenario)
    model = Model(site, sc, seed=args.seed)
    t0 = model.t
    zones = list(model.net.zones)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", *zones])
        next_t = t0
        while model.t < sc.end_s:
            model.step()
            if model.t >= next_t:
                counts = model.zone_counts()
                w.writerow([round(model.t - t0), *(round(counts[z], 1) for z in zones)])
                next_t += args.every
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
