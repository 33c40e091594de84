"""Complex entries per visitor by class: one evening of the site twin under a policy,
with the persons through the 11F and 1F doors split by (chain, stage). A diagnostic, not a
benchmark: it re-compiles ``Twin.step`` with one accumulator line (the per-class port flows the
twin does not keep) and runs the evening as ``crowdflow evaluate`` does.

    python scripts/complex_entries.py baseline 1      # policy, seed (×1.0)
    python scripts/complex_entries.py mpc 1           # ≈2 CPU-min

docs/twin.md ("No re-entry") has the figures it printed.
"""
import collections, inspect, sys, textwrap
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import sim.twin as T
src = textwrap.dedent(inspect.getsource(T.Twin.step))
src = src.replace("    moved = R * phi[:, None]  # [P, K]\n",
                  "    moved = R * phi[:, None]  # [P, K]\n    _acc = _PK.get(id(st))\n    if _acc is not None:\n        _acc += moved\n")
assert "_PK.get" in src
T._PK = {}
ns = {}
exec(compile(src, "patched_step", "exec"), T.__dict__, ns)
T.Twin.step = ns["step"]

from crowdflow.site import load_site
from sim.scenario import load_scenario
from sim.model import build_network
from sim import evaluate as E

pol_name, seed = sys.argv[1], int(sys.argv[2])
sc, site = load_scenario("mayday-evening")
net = build_network(site, sc)
pol = E.make_policy(pol_name, site, sc=sc)
holder = {}
inforce = collections.Counter()
def on_step(model):
    st = model.state
    if id(st) not in T._PK:
        T._PK.clear(); T._PK[id(st)] = np.zeros((net.P, net.K)); holder["st"] = st
    for a in model.effective_actions():
        inforce[a.model_dump_json()] += model.step_s / 60
m = E.run_evening(site, sc, pol, seed, network=net, on_step=on_step)
pk = T._PK[id(holder["st"])]
st = holder["st"]
ent = float(st.src_in.sum())
print(pol_name, seed, "complex_share", round(m.complex_share, 3), "visits/visitor", round(m.visits_per_visitor, 2),
      "zmin>4", m.zone_min_over_4, "gave_up", round(m.gave_up), "balked", round(m.balked), "served", round(m.served), "diverted", round(st.diverted))
# class names
names = ["LEAVE"]
for c in sc.chains:
    for i, s in enumerate(sc.chains[c].stops):
        names.append(f"{c}#{i}->{s}")
for k in range(net.P):
    if net.pgate[k] in ("gate-11f", "gate-1f"):
        row = pk[k]
        print(f"port {net.pname[k]} ({net.pgate[k]},{net.pgdir[k]}) total {row.sum():.0f} = {row.sum()/ent:.3f}/visitor")
        for j in np.argsort(-row)[:8]:
            if row[j] > 1: print(f"    {names[j]:45s} {row[j]:8.0f}")
print("in force (minutes):")
for a, mins in inforce.most_common(): print(f"  {mins:6.1f}  {a}")
