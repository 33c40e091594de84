"""Prometheus metrics of one dashboard instance: connected clients, clients dropped for lagging,
the send lag (a zone state's age when it is pushed), refused logins, Redis errors.

Served at ``/metrics`` of the dashboard itself, to loopback and ``dashboard.trusted_proxies``
only (a scraper inside the site's network), never to the public side."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _Collector:
    def __init__(self, app):
        self.app = app

    def collect(self):
        st = self.app.state
        yield GaugeMetricFamily("crowdflow_dashboard_clients", "Connected WebSocket clients",
                                value=len(st.hub.clients))
        yield CounterMetricFamily("crowdflow_dashboard_dropped_clients", "Clients dropped for falling behind",
                                  value=st.hub.dropped)
        yield CounterMetricFamily("crowdflow_dashboard_refused_logins", "Logins refused (wrong name or password)",
                                  value=st.refused_logins)
        yield CounterMetricFamily("crowdflow_dashboard_redis_errors", "Requests answered 503 for Redis errors",
                                  value=st.redis_errors)


class DashboardMetrics:
    def __init__(self, app):
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(app))
        self.send_lag = Histogram("crowdflow_dashboard_send_lag_seconds",
                                  "Age of a zone state (since control computed it) when pushed to clients",
                                  registry=self.registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def render(self) -> bytes:
        return generate_latest(self.registry)
