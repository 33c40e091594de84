"""Prometheus metrics of one edge agent (prometheus-client), and structured JSON logs."""

from __future__ import annotations

import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class EdgeMetrics:
    def __init__(self, camera_id: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r, lab = self.registry, ["camera"]
        self.fps = Gauge("crowdflow_edge_fps", "Frames processed per second", lab, registry=r).labels(camera_id)
        self.inference_ms = Histogram(
            "crowdflow_edge_inference_ms", "Counting time per frame (ms)", lab, registry=r,
            buckets=(5, 10, 20, 40, 80, 160, 250, 500, 1000, 2000)).labels(camera_id)
        self.frame_age_s = Gauge("crowdflow_edge_frame_age_seconds", "Capture-to-result age of the last frame",
                                 lab, registry=r).labels(camera_id)
        self.dropped = Gauge("crowdflow_edge_dropped_frames", "Frames replaced by a newer one before processing",
                             lab, registry=r).labels(camera_id)
        self.reconnects = Gauge("crowdflow_edge_reconnects", "Source reconnect attempts", lab,
                                registry=r).labels(camera_id)
        self.spool_depth = Gauge("crowdflow_edge_spool_depth", "Observations waiting in the disk spool", lab,
                                 registry=r).labels(camera_id)
        self.resent = Gauge("crowdflow_edge_resent", "Observations sent again: sent, then missing below a "
                            "later one control applied (trimmed by another producer, lost in a failover)", lab,
                            registry=r).labels(camera_id)
        self.unapplied = Gauge("crowdflow_edge_unapplied", "Observations still not applied after being sent "
                               "again (refused by control: see its dead letters)", lab, registry=r).labels(camera_id)
        self.published = Counter("crowdflow_edge_observations", "Observations produced, by health",
                                 ["camera", "health"], registry=r)
        self.online = Gauge("crowdflow_edge_camera_online", "1 when the source delivers frames", lab,
                            registry=r).labels(camera_id)
        self.view_ok = Gauge("crowdflow_edge_view_ok", "1 when the view matches the calibrated preset", lab,
                             registry=r).labels(camera_id)
        self.camera_id = camera_id
        self._fps_t0 = time.monotonic()
        self._fps_n = 0

    def frame_done(self, ms: float, age_s: float) -> None:
        self.inference_ms.observe(ms)
        self.frame_age_s.set(age_s)
        self._fps_n += 1
        now = time.monotonic()
        if now - self._fps_t0 >= 2.0:
            self.fps.set(self._fps_n / (now - self._fps_t0))
            self._fps_t0, self._fps_n = now, 0

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _std = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._std})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def use_json_logs() -> None:
    for h in logging.getLogger().handlers:
        h.setFormatter(JsonFormatter())
