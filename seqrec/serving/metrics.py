"""seqrec's own Prometheus series on the service's /metrics."""

from __future__ import annotations

import logging
import uuid

from seqrec.recommend import Metrics

log = logging.getLogger("seqrec.serve")

#: the ``where`` labels of ``seqrec_internal_errors_total`` (present at 0 from the start)
INTERNAL_ERROR_PLACES = ("online_lookup", "request", "extra_items", "model_load")


def internal_error(exc: BaseException, where: str, metrics: Metrics | None) -> str:
    """Log ``exc`` with its traceback under a fresh error id, count it, and return the
    message a 500 answer carries (the id finds the traceback in the server log)."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s in %s", error_id, where, exc_info=exc)
    if metrics is not None:
        metrics.internal_error(where)
    return f"internal error {error_id}: {type(exc).__name__}; see the server log for this id"


class PrometheusMetrics(Metrics):
    """seqrec's own series on /metrics, beside BentoML's request counts and latencies."""

    def __init__(self) -> None:
        # imported here: BentoML sets PROMETHEUS_MULTIPROC_DIR before creating the service
        from prometheus_client import Counter, Gauge, Histogram

        self.fallbacks = Counter(
            "seqrec_fallbacks_total", "answers served by the popularity fallback", ["reason"]
        )
        self.store_errors = Counter("seqrec_store_errors_total", "online store lookups that failed")
        self.store_up_gauge = Gauge(
            "seqrec_online_store_up",
            "1 while the online store answers, 0 while serving degraded (fallback)",
            multiprocess_mode="livemin",
        )
        self.unknown = Counter(
            "seqrec_unknown_items_total", "session events skipped: item unknown to the model"
        )
        self.batch_size = Histogram(
            "seqrec_batch_size",
            "requests scored together in one lookup + model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.reloads = Counter(
            "seqrec_model_reloads", "models swapped in while serving, by result", ["result"]
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)
        self.model_info = Gauge(
            "seqrec_model_info",
            "1 for the tag of the model serving (0 for ones it served before)",
            ["tag"],
            multiprocess_mode="livemax",
        )
        self.internal = Counter(
            "seqrec_internal_errors_total",
            "bugs surfaced (logged with a traceback), by where: never disguised as an outage",
            ["where"],
        )
        for where in INTERNAL_ERROR_PLACES:
            self.internal.labels(where=where)
        self.store_up_gauge.set(1)

    def fallback(self, reason: str, n: int) -> None:
        self.fallbacks.labels(reason=reason).inc(n)

    def store_error(self) -> None:
        self.store_errors.inc()

    def store_up(self, up: bool) -> None:
        self.store_up_gauge.set(1 if up else 0)

    def unknown_items(self, n: int) -> None:
        self.unknown.inc(n)

    def model_reload(self, ok: bool) -> None:
        self.reloads.labels(result="ok" if ok else "failed").inc()

    def internal_error(self, where: str) -> None:
        self.internal.labels(where=where).inc()

    def serving(self, tag: str, previous: str | None = None) -> None:
        if previous is not None:
            self.model_info.labels(tag=previous).set(0)
        self.model_info.labels(tag=tag).set(1)
