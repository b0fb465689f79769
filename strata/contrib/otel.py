"""OpenTelemetry spans from the Observer (extra: ``pip install 'strata[otel]'``).

One span per DataStore operation, named ``strata.<op>`` (``strata.get``, ``strata.tx.set``)
and timed to the operation, with attributes:

    strata.op       the public method name
    strata.schema   the schema name ("" when the operation has none)
    strata.tier     l1 / l2 / l3 for the tier that served a read (absent otherwise)
    db.system       "strata"

A failed operation's span has status ERROR and the exception recorded. The span is made
when the operation ends (the Observer sees finished operations), as a child of the span
current in the caller's context: the web request's span, for instance.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

__all__ = ["OtelObserver"]


class OtelObserver:
    """``Config(observer=OtelObserver())``: a span per operation on ``tracer`` (default: the
    global tracer provider's ``strata`` tracer)."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer if tracer is not None else trace.get_tracer("strata")

    def on_operation(
        self,
        op: str,
        schema: str,
        seconds: float,
        error: BaseException | None,
        tier: str | None,
    ) -> None:
        end = time.time_ns()
        start = end - int(seconds * 1e9)
        span = self._tracer.start_span(
            f"strata.{op}",
            kind=trace.SpanKind.CLIENT,
            start_time=start,
            attributes={"strata.op": op, "strata.schema": schema, "db.system": "strata"},
        )
        if tier is not None:
            span.set_attribute("strata.tier", tier)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.record_exception(error)
        span.end(end_time=end)
