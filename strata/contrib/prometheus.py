"""Prometheus metrics from the Observer (extra: ``pip install 'strata[prometheus]'``).

    DataStore op ─► Observer.on_operation(op, schema, seconds, error, tier)
                      ├► strata_operations_total{op, schema, tier, outcome}    counter
                      ├► strata_operation_seconds{op, schema, tier}            histogram
                      └► strata_operation_errors_total{op, schema, error}      counter

``tier`` is ``l1`` / ``l2`` / ``l3`` for the tier that served a read and ``none`` otherwise;
``outcome`` is ``ok`` or ``error`` (``error`` carries the exception's class name).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

__all__ = ["DEFAULT_BUCKETS", "PrometheusObserver"]

# From 10 µs (an L1 hit) to 5 s (a slow query or a PostgreSQL outage).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class PrometheusObserver:
    """Counts and times every DataStore operation: ``Config(observer=PrometheusObserver())``.

    ``registry`` defaults to prometheus_client's global one (what ``start_http_server``
    and ``make_asgi_app`` serve); pass your own ``CollectorRegistry`` to keep them apart.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "strata",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self.operations = Counter(
            "operations",
            "DataStore operations, by operation, schema, serving tier and outcome",
            ["op", "schema", "tier", "outcome"],
            namespace=namespace,
            registry=registry,
        )
        self.latency = Histogram(
            "operation_seconds",
            "DataStore operation latency in seconds",
            ["op", "schema", "tier"],
            namespace=namespace,
            registry=registry,
            buckets=tuple(buckets),
        )
        self.errors = Counter(
            "operation_errors",
            "DataStore operations that raised, by exception class",
            ["op", "schema", "error"],
            namespace=namespace,
            registry=registry,
        )

    def on_operation(
        self,
        op: str,
        schema: str,
        seconds: float,
        error: BaseException | None,
        tier: str | None,
    ) -> None:
        served = tier or "none"
        outcome = "ok" if error is None else "error"
        self.operations.labels(op, schema, served, outcome).inc()
        self.latency.labels(op, schema, served).observe(seconds)
        if error is not None:
            self.errors.labels(op, schema, type(error).__name__).inc()
