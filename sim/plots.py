"""Report plots (matplotlib PNGs) for docs/evaluation.md and docs/twin.md."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def evening_plots(series: dict, folder: Path) -> list[Path]:
    """Density, staff on site and roads cut over the evening, one line per policy, one figure
    per demand multiplier. ``series``: (policy, demand) → sim.evaluate.Series."""
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for demand in sorted({d for _, d in series}):
        fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        for (name, d), s in sorted(series.items()):
            if d != demand:
                continue
            h = [t / 3600 for t in s.t]
            axes[0].plot(h, s.peak_density, label=name, lw=1)
            axes[1].plot(h, s.staff_on_site, label=name, lw=1)
            axes[2].step(h, s.roads_cut, label=name, lw=1, where="post")
        axes[0].axhline(4.0, color="red", ls="--", lw=0.8)
        axes[0].set_ylabel("highest local\ndensity (p/m²)")
        axes[1].set_ylabel("staff on site")
        axes[2].set_ylabel("roads cut")
        axes[2].set_xlabel("time of day (h)")
        axes[0].legend(loc="upper left")
        fig.suptitle(f"May Day evening, demand ×{demand:g}, seed of the first run")
        fig.tight_layout()
        p = folder / f"evening_x{demand:g}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        out.append(p)
    return out
