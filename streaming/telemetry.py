"""Structured logging and Prometheus metrics set-up shared by every service."""

from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import start_http_server

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extra(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class KeyValueFormatter(logging.Formatter):
    """Human-readable lines: time, level, logger, message, then ``key=value`` for ``extra=`` fields."""

    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        line = super().format(record)
        return f"{line} {fields}" if fields else line


def setup_logging(level: str = "info", json_lines: bool = True) -> None:
    """Configure the root logger once for a service process."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
"""Upper bounds (s) of every latency histogram, gateway and worker alike: 5 ms (an edge hop) to 5 s (past every
deadline), about 1.5x apart so that p50/p95/p99 read from them (``histogram_quantile``) are within ~25 %."""

DEFAULT_METRICS_HOST = "127.0.0.1"
"""Metrics listen on loopback unless told otherwise (``--metrics-host 0.0.0.0`` in a cluster)."""


def start_metrics_server(port: int, host: str = DEFAULT_METRICS_HOST) -> None:
    """Expose Prometheus metrics on ``http://host:port/metrics`` (no-op for port 0)."""
    if port:
        start_http_server(port, addr=host)
