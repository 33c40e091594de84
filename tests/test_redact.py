"""Credentials in URLs never reach a log line (RTSP cameras, Redis)."""

from __future__ import annotations

import logging

from crowdflow.bus import mask_url
from crowdflow.redact import RedactFilter, redact


def test_mask_url():
    assert mask_url("rtsp://admin:p%40ss@10.0.0.5:554/h264") == "rtsp://***:***@10.0.0.5:554/h264"
    assert mask_url("redis://:pw@h/0") == "redis://***:***@h/0"
    assert mask_url("rtsp://10.0.0.5/x") == "rtsp://10.0.0.5/x"


def test_every_log_line_is_redacted(caplog):
    logger = logging.getLogger("crowdflow.test.redact")
    caplog.handler.addFilter(RedactFilter())
    with caplog.at_level(logging.INFO):
        logger.warning("camera source %s offline: %s", "rtsp://admin:hunter2@10.1.2.3/ch1", "timeout")
        try:
            raise ConnectionError("cannot open rtsp://admin:hunter2@10.1.2.3/ch1")
        except ConnectionError:
            logger.exception("grab failed")
    text = caplog.text
    assert "hunter2" not in text and "rtsp://***:***@10.1.2.3/ch1" in text


def test_redact_leaves_plain_text_alone():
    assert redact("zone 12 at 3 p/m² (see http://example.org/a)") == "zone 12 at 3 p/m² (see http://example.org/a)"
