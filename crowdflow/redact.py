"""Credentials never reach a log: ``rtsp://admin:secret@10.0.0.5/…`` is logged as
``rtsp://***:***@10.0.0.5/…``.

:class:`RedactFilter` rewrites every record's final message (arguments included) on the
handlers it is installed on; :func:`install` puts it on the root logger's handlers, which the
services' CLI does once at start-up, so every module's log lines (the grabber's "camera source
… offline", the agent's start-up line, library warnings) are covered without each call site
having to remember. Plain text outside logs (an exception shown to a user) uses :func:`redact`.
"""

from __future__ import annotations

import logging
import re

# scheme://user:password@  or  scheme://user@  (user info of any URL in the text)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://)(?P<userinfo>[^/\s@]+)@")


def redact(text: str) -> str:
    return _USERINFO.sub(lambda m: m.group("scheme") + ("***:***@" if ":" in m.group("userinfo") else "***@"), text)


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string is logging's business, not ours
            return True
        clean = redact(msg)
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (default: root); idempotent."""
    for h in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactFilter) for f in h.filters):
            h.addFilter(RedactFilter())
