#!/usr/bin/env python3
"""The 11F entrance queue pen (``hold-11f``, zone ``cangbai-plaza``) on one engine evening,
every minute from --from: the yardstick's queue at gate-11f (people, ÷ the pen's 400 m²), the
zone's highest local density, the bus pen, the metering rate on the ground, the engine's
measures, and at each full plan what the planner started from (``TwinStart.queues``) and
forecast (``port:gate-11f``, ``local:cangbai-plaza``, ``wait:cangbai-plaza``) and which of its
targets broke. docs/mpc.md, "The 11F pen flood". The evening is the yardstick's
(``sim.evaluate.run_evening``); with ``--jsonl`` its metrics row is appended.
Run from the repo root: python scripts/trace_pen.py SEED DEMAND [--from HH:MM] [--until HH:MM]"""
import argparse, dataclasses, json, sys; sys.path.insert(0, '.')
import numpy as np
from sim.evaluate import run_evening, mpc_policy
from sim.scenario import load_scenario, s_to_hhmm, hhmm_to_s

ap = argparse.ArgumentParser()
ap.add_argument('seed', type=int)
ap.add_argument('demand', type=float)
ap.add_argument('--from', dest='frm', default='20:00')
ap.add_argument('--until')
ap.add_argument('--jsonl')
args = ap.parse_args()
frm = hhmm_to_s(args.frm)
until = hhmm_to_s(args.until) if args.until else None
sc, site = load_scenario('mayday-evening')
pol = mpc_policy(site, sc)
eng = pol.engine
pl = eng.planner
opt = pl.optimizer
ZONE, GATE = 'cangbai-plaza', 'gate-11f'
starts = {}
_q = pl._queues
def _queues(now, active):  # record what each plan starts from
    q = _q(now, active)
    starts[now] = q
    return q
pl._queues = _queues
seen = {'plan': None}

def hook(m):
    if m.t < frm or int(m.t) % 60:
        return
    net, st = m.net, m.state
    ks = [k for k in range(net.P) if net.pgate[k] == GATE and net.pgdir[k] == 'in']
    pq = m.twin.port_queue(st)
    q = float(pq[ks].sum())
    appr = float(net.papproach[ks[0]])
    rate = float(np.minimum(net.pcap[ks] * m.ctl.port_cap_mult[ks], m.ctl.port_rate[ks]).sum() * 60)
    zi = m.zones.index(ZONE)
    pk = m.peak_density_array()[zi]
    sb = list(net.src_gate).index('gate-bus-cangbai')
    bus = float(st.held[sb].sum()) / net.src_hold[sb]
    cnt = m.zone_counts()[ZONE]
    meas = sorted(mid for a in eng.areas.values() for mid in a.measures)
    print(f"{s_to_hhmm(m.t)} yard: q11f={q:6.0f} ({q / appr:4.2f} p/m²) rate={rate:5.0f}/min "
          f"plaza_peak={pk:4.2f} bus_pen={bus:4.2f} plaza_count={cnt:5.0f} | engine: {','.join(meas)}", flush=True)
    last = pl.last
    if last is None or last.engine != 'mpc' or last.at == seen['plan']:
        return
    seen['plan'] = last.at
    d = last.decision
    s0 = starts.get(last.at, {})
    fq = d.queues.get('with', {}).get(f'port:{GATE}', [])
    loc = d.curves['with'].get(f'local:{ZONE}', [])
    wt = d.curves['with'].get(f'wait:{ZONE}', [])
    viol = [(p.element, round(p.load, 2), p.minute) for p in d.violations]
    print(f"      plan @{s_to_hhmm(last.at if last.at < 86400 else m.t)}: start port:{GATE}={s0.get(f'port:{GATE}', 0):.0f} "
          f"| fcst q(+0,5,10,15,20,30)={[round(fq[i]) for i in (0, 5, 10, 15, 20, 30) if i < len(fq)]} "
          f"local/target max={max(loc, default=0):.2f} wait/target max={max(wt, default=0):.2f} "
          f"| chosen={d.chosen} on={d.on} off={d.off} | viol={viol[:6]}", flush=True)

m = run_evening(site, sc, pol, seed=args.seed, demand=args.demand, until_s=until, on_step=hook)
print('over4', m.over4_by_zone, m.over4_first, 'cpu_s', round(m.cpu_s))
if args.jsonl and until is None:
    with open(args.jsonl, 'a') as f:
        f.write(json.dumps(dataclasses.asdict(m), default=float) + "\n")
