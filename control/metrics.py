"""Prometheus metrics of the control service (prometheus-client), read at scrape time.

``crowdflow_control_*``: leader (1/0), observations applied / duplicates / dead-lettered by
reason, commands, Redis reconnects and errors by kind, lease losses, the cycle time, the
ingest lag (now − capture time of the newest applied observation), and the consumer group's
backlog (entries not yet delivered, entries delivered but not acknowledged) read from Redis.

A partitioned worker (:class:`control.workers.Worker`) serves the same families with a
``partition`` label (one ControlService per partition; the backlog only for the partitions it
leads), plus ``crowdflow_control_partitions_led`` and ``crowdflow_control_workers_alive``.
Example alert rules: docs/operations.md.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from crowdflow.bus import text


class ControlCollector:
    """One control service (``partitioned=False``: no partition label, as always), or every
    partition service of a worker."""

    def __init__(self, svc, worker=None):
        self.worker = worker
        self.parts = dict(worker.services) if worker is not None else {"": svc}

    def collect(self):
        part = self.worker is not None
        labels = ["partition"] if part else []

        def lab(pid, *rest):
            return ([pid] if part else []) + list(rest)

        leader = GaugeMetricFamily("crowdflow_control_leader", "1 while this instance holds the leader lease",
                                   labels=labels)
        obs = CounterMetricFamily("crowdflow_control_observations", "Observations by outcome",
                                  labels=labels + ["outcome"])
        dead = CounterMetricFamily("crowdflow_control_dead_letters", "Rejected observations by reason (field)",
                                   labels=labels + ["reason"])
        ev = CounterMetricFamily("crowdflow_control_events", "Reconnects, lease losses, Redis errors by kind, …",
                                 labels=labels + ["kind"])
        lag_m = GaugeMetricFamily("crowdflow_control_ingest_lag_seconds",
                                  "Now minus the capture time of the newest applied observation", labels=labels)
        skew = GaugeMetricFamily("crowdflow_control_gateway_clock_skew_seconds",
                                 "Clock offset of gateways whose capture times control corrects",
                                 labels=labels + ["camera"])
        backlog = GaugeMetricFamily("crowdflow_control_stream_backlog", "Consumer-group backlog of a stream",
                                    labels=labels + ["stream", "state"])
        now = time.time()
        for pid, svc in self.parts.items():
            leader.add_metric(lab(pid), 1 if svc.leading else 0)
            obs.add_metric(lab(pid, "applied"), svc.applied)
            obs.add_metric(lab(pid, "duplicate"), svc.duplicates)
            obs.add_metric(lab(pid, "rejected"), svc.rejected)
            for reason, n in sorted(svc.rejected_by.items()):
                dead.add_metric(lab(pid, reason), n)
            stats = dict(svc.stats)
            if svc.lease.relapses:
                stats["lease_retaken"] = svc.lease.relapses
            for kind, n in sorted(stats.items()):
                ev.add_metric(lab(pid, kind), n)
            lag = None if svc.newest_applied is None else max(0.0, now - svc.newest_applied)
            lag_m.add_metric(lab(pid), float("nan") if lag is None else lag)
            for cam, s in sorted(svc.skew_s.items()):
                skew.add_metric(lab(pid, cam), s)
            if part and not svc.leading:
                continue  # another worker reads this partition's streams
            for name, stream in (("obs", svc.keys.obs), ("cmd", svc.keys.cmd)):
                try:
                    for g in svc.raw.xinfo_groups(stream):
                        g = {text(k): v for k, v in g.items()}
                        if text(g.get("name")) == "control":
                            backlog.add_metric(lab(pid, name, "undelivered"), float(g.get("lag") or 0))
                            backlog.add_metric(lab(pid, name, "unacknowledged"), float(g.get("pending") or 0))
                except Exception:  # Redis away: the other metrics still answer
                    pass
        yield from (leader, obs, dead, ev, lag_m, skew, backlog)
        if part:
            w = self.worker
            yield GaugeMetricFamily("crowdflow_control_partitions_led", "Partitions this worker leads now",
                                    value=len(w.leading()))
            yield GaugeMetricFamily("crowdflow_control_workers_alive", "Live control workers this worker sees",
                                    value=len(w.members))


class ControlMetrics:
    """Metrics of a :class:`control.service.ControlService` or of a partitioned
    :class:`control.workers.Worker` (every partition, labelled)."""

    def __init__(self, svc, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        worker = svc if hasattr(svc, "services") else None
        self.registry.register(ControlCollector(svc, worker))
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
        if worker is None:
            self.cycle = Histogram("crowdflow_control_cycle_seconds", "Time of one read-apply-publish cycle",
                                   registry=self.registry, buckets=buckets)
            svc.on_cycle = self.cycle.observe
        else:
            self.cycle = Histogram("crowdflow_control_cycle_seconds", "Time of one read-apply-publish cycle",
                                   ["partition"], registry=self.registry, buckets=buckets)
            for pid, s in worker.services.items():
                s.on_cycle = self.cycle.labels(pid).observe

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
