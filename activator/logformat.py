"""How Dormant's log lines look: ``log_format: text`` (one readable line per event, as
before) or ``json`` (one JSON object a line, for log shippers).

A JSON line has ``time`` (RFC 3339, UTC), ``level``, ``logger`` and ``message``, plus the
structured fields a line was logged with (``extra={"fields": {...}}``): the access line
carries ``request_id``, ``workload``, ``method``, ``path``, ``status``, ``upstream``,
``outcome``, ``wake``, ``ttfb_ms``, ``duration_ms`` and ``bytes``. An exception is one
``exc_info`` string, never extra lines.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    """The root logger: ``level`` and ``fmt`` ('text' or 'json'), on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is noise
