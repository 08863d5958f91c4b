"""Structured logging and Prometheus metrics set-up shared by every service."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric

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


LOG_BURST = 5
"""Log lines one source may write about bad input per :data:`LOG_PERIOD_S` before the rest are only counted."""
LOG_PERIOD_S = 60.0
MAX_LOG_SOURCES = 1024
"""Sources remembered by a :class:`LogLimiter` (the least recently seen are forgotten)."""


class LogLimiter:
    """Rate-limits log lines about repeated bad input, per source (a client address, a stream, an error code).

    Each source may log :data:`LOG_BURST` lines per :data:`LOG_PERIOD_S`; later ones are counted, and the next
    line that passes says how many were suppressed (``extra["suppressed"]``). Memory is bounded by
    :data:`MAX_LOG_SOURCES`."""

    def __init__(self, burst: int = LOG_BURST, period_s: float = LOG_PERIOD_S) -> None:
        self._burst = burst
        self._period_s = period_s
        self._sources: OrderedDict[str, list[float]] = OrderedDict()  # source -> [window start, lines, suppressed]

    def log(
        self, logger: logging.Logger, level: int, source: str, msg: str, extra: dict[str, object] | None = None
    ) -> bool:
        """Log ``msg`` unless ``source`` has used its burst in the current period; True if it was logged."""
        now = time.monotonic()
        state = self._sources.pop(source, None)
        if state is None or now - state[0] >= self._period_s:
            state = [now, 0.0, state[2] if state is not None else 0.0]
        self._sources[source] = state
        while len(self._sources) > MAX_LOG_SOURCES:
            self._sources.popitem(last=False)
        if state[1] >= self._burst:
            state[2] += 1
            return False
        state[1] += 1
        fields = dict(extra or {})
        if state[2]:
            fields["suppressed"] = int(state[2])
            state[2] = 0
        logger.log(level, msg, extra=fields)
        return True


REGION_LABEL = "region"
SeriesFilter = Callable[[str, dict[str, str]], bool]
"""Keep a series? Given its family's name and its sample's labels."""


class MetricsView:
    """The process's metrics, only the series ``keep`` keeps: what one of several
    services sharing a process (``mvs local``: every gateway and the aggregator) exports as its own."""

    def __init__(self, keep: SeriesFilter, registry: CollectorRegistry = REGISTRY) -> None:
        self._keep = keep
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """Every family of the registry with the kept samples; a family none of whose samples is kept stays (its
        HELP and TYPE) when ``keep`` keeps its name with no labels."""
        for family in self._registry.collect():
            samples = [s for s in family.samples if self._keep(family.name, s.labels)]
            if samples or self._keep(family.name, {}):
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                yield kept


def view_metrics(keep: SeriesFilter) -> bytes:
    """Prometheus text of :class:`MetricsView` ``(keep)``."""
    view = CollectorRegistry(auto_describe=False)
    view.register(MetricsView(keep))  # a Collector is anything with collect()
    return generate_latest(view)


def region_metrics(region: str) -> bytes:
    """The series of one region (labelled ``region``) and those of no region: a gateway's own. Several gateways in
    one process share one registry; scraping each one's ``/metrics`` must not count a region twice."""
    return view_metrics(lambda name, labels: labels.get(REGION_LABEL, region) == region)


TASKS = Gauge("mvs_asyncio_tasks", "Unfinished asyncio tasks of the process's event loop (a leak grows it)")


def count_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Make :data:`TASKS` count ``loop``'s unfinished tasks when scraped (the loop serving the process)."""
    TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))


DEFAULT_METRICS_HOST = "127.0.0.1"
"""Metrics listen on loopback unless told otherwise (``--metrics-host 0.0.0.0`` in a cluster)."""


Check = Callable[[], Awaitable[tuple[bool, Mapping[str, object]]]]
"""A probe: whether it passes, and what else its JSON answer says (``{"ok": ...}`` is always there)."""


def check_of(condition: Callable[[], bool], details: Callable[[], Mapping[str, object]] = dict) -> Check:
    """The :data:`Check` of a plain condition (its answer is ``{"ok": ...}`` and ``details()``)."""

    async def check() -> tuple[bool, Mapping[str, object]]:
        return condition(), details()

    return check


def add_health_routes(
    app: web.Application,
    ready: Check,
    live: Check,
    exposition: Callable[[], bytes] = generate_latest,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Route ``/metrics`` (Prometheus: ``exposition()``, by default the whole process's), ``/healthz`` (200 while
    ``ready`` passes, else 503: a readiness probe) and ``/livez`` (200 while ``live`` passes, else 503: a liveness
    probe) in ``app``; every answer carries ``headers``. Every service's probes answer alike, whether on their own
    port (:func:`start_health_server`) or beside a service's other routes (the gateway's signaling port)."""
    extra = dict(headers or {})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST, **extra})

    def probe(check: Check) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            ok, detail = await check()
            return web.json_response({"ok": ok, **detail}, status=200 if ok else 503, headers=extra)

        return handler

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", probe(ready))
    app.router.add_get("/livez", probe(live))


async def start_health_server(
    port: int,
    host: str,
    ready: Callable[[], bool],
    live: Callable[[], bool],
    exposition: Callable[[], bytes] = generate_latest,
    details: Callable[[], Mapping[str, object]] = dict,
) -> web.AppRunner | None:
    """Serve :func:`add_health_routes` alone on ``http://host:port`` (None for port 0): a service without HTTP of
    its own (worker, aggregator); ``details()`` adds fields to ``/healthz``'s answer (whether JetStream answers).
    :data:`TASKS` counts the running loop's tasks."""
    count_tasks(asyncio.get_running_loop())
    if not port:
        return None
    app = web.Application()
    add_health_routes(app, check_of(ready, details), check_of(live), exposition)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
