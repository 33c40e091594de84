"""Prometheus metrics of the control service (prometheus-client), read at scrape time.

``crowdflow_control_*``: leader (1/0), observations applied / duplicates / dead-lettered by
reason, commands, Redis reconnects and errors by kind, lease losses, the cycle time, the
ingest lag (now − capture time of the newest applied observation), and the consumer group's
backlog (entries not yet delivered, entries delivered but not acknowledged) read from Redis.
Example alert rules: docs/operations.md.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from crowdflow.bus import text


class ControlCollector:
    def __init__(self, svc):
        self.svc = svc

    def collect(self):
        svc = self.svc
        yield GaugeMetricFamily("crowdflow_control_leader", "1 while this instance holds the leader lease",
                                value=1 if svc.leading else 0)
        c = CounterMetricFamily("crowdflow_control_observations", "Observations by outcome", labels=["outcome"])
        c.add_metric(["applied"], svc.applied)
        c.add_metric(["duplicate"], svc.duplicates)
        c.add_metric(["rejected"], svc.rejected)
        yield c
        d = CounterMetricFamily("crowdflow_control_dead_letters", "Rejected observations by reason (field)",
                                labels=["reason"])
        for reason, n in sorted(svc.rejected_by.items()):
            d.add_metric([reason], n)
        yield d
        e = CounterMetricFamily("crowdflow_control_events", "Reconnects, lease losses, Redis errors by kind, …",
                                labels=["kind"])
        for kind, n in sorted(svc.stats.items()):
            e.add_metric([kind], n)
        yield e
        lag = None if svc.newest_applied is None else max(0.0, time.time() - svc.newest_applied)
        yield GaugeMetricFamily("crowdflow_control_ingest_lag_seconds",
                                "Now minus the capture time of the newest applied observation",
                                value=float("nan") if lag is None else lag)
        skew = GaugeMetricFamily("crowdflow_control_gateway_clock_skew_seconds",
                                 "Clock offset of gateways whose capture times control corrects", labels=["camera"])
        for cam, s in sorted(svc.skew_s.items()):
            skew.add_metric([cam], s)
        yield skew
        backlog = GaugeMetricFamily("crowdflow_control_stream_backlog", "Consumer-group backlog of a stream",
                                    labels=["stream", "state"])
        for name, stream in (("obs", svc.keys.obs), ("cmd", svc.keys.cmd)):
            try:
                for g in svc.raw.xinfo_groups(stream):
                    g = {text(k): v for k, v in g.items()}
                    if text(g.get("name")) == "control":
                        backlog.add_metric([name, "undelivered"], float(g.get("lag") or 0))
                        backlog.add_metric([name, "unacknowledged"], float(g.get("pending") or 0))
            except Exception:  # Redis away: the other metrics still answer
                pass
        yield backlog


class ControlMetrics:
    def __init__(self, svc, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.registry.register(ControlCollector(svc))
        self.cycle = Histogram("crowdflow_control_cycle_seconds", "Time of one read-apply-publish cycle",
                               registry=self.registry,
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        svc.on_cycle = self.cycle.observe

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
