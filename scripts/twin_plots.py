"""Validation plots of the site twin for docs/twin.md (matplotlib PNGs into docs/img/twin/).

    /work/main/.venv/bin/python scripts/twin_plots.py

Each plot is the same experiment a test in tests/test_twin_validation.py asserts on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from crowdflow import crowd  # noqa: E402
from sim.twin import Chain, Corridor, Exit, Network, Params, Place, Segment, Spec, Twin  # noqa: E402

OUT = REPO / "docs" / "img" / "twin"


def line(segments, params=None, b_dwell=0.0, b_area=1e6, stops=("out",)):
    places = [Place("A", 1e6, 10.0), Place("B", b_area, 10.0, dwell_s=b_dwell)]
    spec = Spec(places=places, corridors=[Corridor("c", "A", "B", segments)], connectors=[],
                exits=[Exit("out", "B", 1e9)], sources=[], chains=[Chain("go", list(stops))], params=params or Params())
    net = Network(spec)
    return net, Twin(net)


def fd_plot():
    rhos = np.arange(0.25, 5.26, 0.25)
    measured = []
    for rho in rhos:
        net, tw = line([Segment("z", 600.0, 3.0)])
        st, ctl = tw.initial(), tw.controls()
        lane = np.flatnonzero(net.clane == 0)
        st.cell[lane, net.chain_first["go"]] = rho * net.carea[lane]
        at = lane[len(lane) // 2]
        down = lane[lane > at]
        before = st.cell[down].sum()
        for _ in range(12):
            tw.step(st, ctl, demand=False)
        crossed = st.cell[down].sum() - before + st.exited + st.act.sum() + st.rdy.sum()
        measured.append(crossed / (3.0 * 12 * tw.p.dt))
    grid = np.linspace(0.01, 5.4, 300)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, [crowd.specific_flow(r) for r in grid], label="Weidmann (1993)")
    ax.plot(rhos, measured, "o", label="twin: people counted crossing a line")
    ax.fill_between(grid, [0.95 * crowd.specific_flow(r) for r in grid], [1.05 * crowd.specific_flow(r) for r in grid],
                    alpha=0.2, label="±5 %")
    ax.set_xlabel("density (p/m²)")
    ax.set_ylabel("specific flow (p/(m·s))")
    ax.legend()
    ax.set_title("Fundamental diagram in a 3 m corridor")
    fig.tight_layout()
    fig.savefig(OUT / "fd.png", dpi=90)
    plt.close(fig)


def bottleneck_plot():
    segs = [Segment("up", 100.0, 4.0), Segment("neck", 20.0, 1.0), Segment("down", 60.0, 4.0)]
    net, tw = line(segs)
    st, ctl = tw.initial(), tw.controls()
    st.rdy[0, net.chain_first["go"]] = 3000.0
    lane = np.flatnonzero(net.clane == 0)
    k = net.pidx["B>out"]
    flows, prof = [], []
    prev = 0.0
    for i in range(240):
        tw.step(st, ctl, demand=False)
        flows.append((st.port_flow[k] - prev) / tw.p.dt)
        prev = st.port_flow[k]
        if i in (60, 120, 239):
            prof.append((i, tw.cell_density(st, ctl)[lane].copy()))
    x = np.cumsum(net.clen[lane]) - net.clen[lane] / 2
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6))
    t = np.arange(1, 241) * tw.p.dt / 60
    a1.plot(t, np.convolve(flows, np.ones(12) / 12, mode="same"), label="twin (1-min mean)")
    a1.axhspan(1.2, 1.6, color="green", alpha=0.15, label="published range 1.2–1.6 (Seyfried 2009, Weidmann, SFPE)")
    a1.set_xlabel("minutes")
    a1.set_ylabel("flow through 1 m neck (p/s)")
    a1.legend(fontsize=8)
    for i, d in prof:
        a2.plot(x, d, label=f"after {i * tw.p.dt / 60:.0f} min")
    a2.axvspan(100, 120, color="grey", alpha=0.2, label="1 m neck")
    a2.axhline(tw.fd.rho_c, ls="--", lw=0.8, color="k")
    a2.set_xlabel("position along the corridor (m)")
    a2.set_ylabel("density (p/m²)")
    a2.legend(fontsize=8)
    fig.suptitle("A 4 m corridor narrowing to 1 m: capacity and the queue upstream")
    fig.tight_layout()
    fig.savefig(OUT / "bottleneck.png", dpi=90)
    plt.close(fig)


def spillback_plot():
    net, tw = line([Segment("z", 200.0, 3.0)], params=Params(balk_max_per_min=0.0), b_dwell=1e9, b_area=300.0,
                   stops=("B", "out"))
    st, ctl = tw.initial(), tw.controls()
    st.rdy[0, net.chain_first["go"]] = 8000.0
    lane = np.flatnonzero(net.clane == 0)
    snaps = []
    for i in range(600):
        tw.step(st, ctl, demand=False)
        if i % 60 == 59:
            snaps.append((i, tw.cell_density(st, ctl)[lane].copy()))
    x = np.cumsum(net.clen[lane]) - net.clen[lane] / 2
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, d in snaps:
        ax.plot(x, d, label=f"{(i + 1) * tw.p.dt / 60:.0f} min")
    ax.set_xlabel("position (m); the closed end is at 200 m")
    ax.set_ylabel("density (p/m²)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Way out closed downstream: the queue spills back cell by cell")
    fig.tight_layout()
    fig.savefig(OUT / "spillback.png", dpi=90)
    plt.close(fig)


def evening_plot():
    from sim.model import Model
    from sim.scenario import load_scenario

    sc, site = load_scenario("mayday-evening")
    m = Model(site, sc, seed=0)
    t, on, rows = [], [], []
    while m.t < sc.end_s:
        m.run_until(m.t + 300)
        t.append(m.t / 3600)
        on.append(m.people - float(m.queue.sum()))
        rows.append(m.peak_density_array())
    rows = np.array(rows)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    a1.plot(t, on)
    a1.axhline(10_000, ls="--", color="grey", label=">10,000 on site at 20–22 h (brief)")
    a1.set_ylabel("people on site")
    a1.legend()
    for j, z in enumerate(m.zones):
        if rows[:, j].max() > 1.0:
            a2.plot(t, rows[:, j], label=z, lw=1)
    a2.set_ylabel("highest local density (p/m²)")
    a2.set_xlabel("time of day (h)")
    a2.legend(fontsize=7, ncol=2)
    fig.suptitle("The May Day evening without control (seed 0)")
    fig.tight_layout()
    fig.savefig(OUT / "evening.png", dpi=90)
    plt.close(fig)
    k = int(np.argmax(on))
    print(f"evening without control (seed 0): {m.state.arrived:,.0f} arrivals, peak {on[k]:,.0f} on site at "
          f"{t[k]:.2f} h; highest local density " + ", ".join(
              f"{z} {rows[:, j].max():.2f}" for j, z in sorted(enumerate(m.zones), key=lambda x: -rows[:, x[0]].max())[:3]))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    fd_plot()
    bottleneck_plot()
    spillback_plot()
    evening_plot()
    print("\n".join(str(p) for p in sorted(OUT.glob("*.png"))))
