"""The site simulator: a macroscopic pedestrian model of the site (a digital twin), virtual
cameras that publish through the real pipeline, policy evaluation and what-if forecasts.

* :mod:`sim.scenario` — the validated scenario file (network, demand) next to the site file.
* :mod:`sim.model`    — the pedestrian model (pure, seeded, deterministic).
* :mod:`sim.cameras`  — virtual edge agents: model state → Observation records (pure).
* :mod:`sim.runner`   — the Redis shell: publish observations, apply the active actions.
* :mod:`sim.evaluate` — policies (reactive baseline, the plan engine) and their metrics.
* :mod:`sim.whatif`   — "what happens in the next 30 minutes if …".
"""
