"""Metrics and traces from the Observer: what Prometheus scrapes and what a span exporter gets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Observers, Schema, errors
from strata.contrib.otel import OtelObserver
from strata.contrib.prometheus import PrometheusObserver


class Item(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, str | None]] = []

    def on_operation(
        self, op: str, schema: str, seconds: float, error: BaseException | None, tier: str | None
    ) -> None:
        self.calls.append((op, schema, tier, type(error).__name__ if error else None))


class Broken:
    def on_operation(
        self, op: str, schema: str, seconds: float, error: BaseException | None, tier: str | None
    ) -> None:
        raise OSError("metrics backend down")


async def open_store(tmp_path: Path, observer: object) -> DataStore:
    ds = DataStore(Config(database_url=f"sqlite:///{tmp_path / 'o.db'}", observer=observer))  # type: ignore[arg-type]
    ds.register(Schema(name="items", model=Item))
    await ds.connect()
    await ds.migrate()
    return ds


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def ds(
    tmp_path: Path, registry: CollectorRegistry, spans: InMemorySpanExporter
) -> AsyncIterator[DataStore]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    observer = Observers(PrometheusObserver(registry), OtelObserver(provider.get_tracer("t")))
    store = await open_store(tmp_path, observer)
    spans.clear()  # migrate's span
    try:
        yield store
    finally:
        await store.close()


def metric(registry: CollectorRegistry, line_start: str) -> float:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start!r}")


async def test_prometheus_counts_reads_per_serving_tier(
    ds: DataStore, registry: CollectorRegistry
) -> None:
    await ds.set(Item, Item(id="a"))
    ds._core.routes["items"].l1.clear()  # type: ignore[union-attr]
    await ds.get(Item, "a")  # from SQLite
    await ds.get(Item, "a")  # from L1
    await ds.get(Item, "a")
    ok = 'strata_operations_total{op="get",outcome="ok",schema="items",tier='
    assert metric(registry, ok + '"l3"}') == 1.0
    assert metric(registry, ok + '"l1"}') == 2.0
    assert (
        metric(
            registry, 'strata_operations_total{op="set",outcome="ok",schema="items",tier="none"}'
        )
        == 1.0
    )


async def test_prometheus_histogram_times_every_operation(
    ds: DataStore, registry: CollectorRegistry
) -> None:
    await ds.set_many(Item, [Item(id="a"), Item(id="b")])
    await ds.search(Item)
    count = 'strata_operation_seconds_count{op="search",schema="items",tier="l3"}'
    assert metric(registry, count) == 1.0
    assert (
        metric(registry, 'strata_operation_seconds_sum{op="set_many",schema="items",tier="none"}')
        > 0
    )


async def test_prometheus_counts_errors_by_exception_class(
    ds: DataStore, registry: CollectorRegistry
) -> None:
    with pytest.raises(errors.NotFoundError):
        await ds.get(Item, "missing")
    assert (
        metric(
            registry, 'strata_operation_errors_total{error="NotFoundError",op="get",schema="items"}'
        )
        == 1.0
    )


async def test_otel_span_per_operation_carries_schema_and_tier(
    ds: DataStore, spans: InMemorySpanExporter
) -> None:
    await ds.set(Item, Item(id="a"))
    await ds.get(Item, "a")
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["strata.set", "strata.get"]
    get = finished[1]
    assert get.attributes is not None
    assert dict(get.attributes) == {
        "strata.op": "get",
        "strata.schema": "items",
        "strata.tier": "l1",
        "db.system": "strata",
    }
    assert get.end_time is not None and get.start_time is not None
    assert get.end_time >= get.start_time


async def test_otel_span_of_a_failed_operation_has_error_status(
    ds: DataStore, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(errors.NotFoundError):
        await ds.get(Item, "missing")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


async def test_observer_sees_one_call_per_public_operation(tmp_path: Path) -> None:
    rec = Recorder()
    ds = await open_store(tmp_path, rec)
    rec.calls.clear()  # migrate
    await ds.set(Item, Item(id="a"))
    await ds.get_many("items", ["a"])
    await ds.exists(Item, "a")
    await ds.count(Item)
    await ds.delete(Item, "a")
    await ds.close()
    assert [c[:2] for c in rec.calls] == [
        ("set", "items"),
        ("get_many", "items"),
        ("exists", "items"),
        ("count", "items"),
        ("delete", "items"),
    ]  # lifecycle calls (connect, close) are logged, not observed


async def test_a_failing_observer_neither_breaks_the_operation_nor_the_others(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    ds = await open_store(tmp_path, Observers(Broken(), rec))
    try:
        await ds.set(Item, Item(id="a"))
        assert (await ds.get(Item, "a")).id == "a"
    finally:
        await ds.close()
    assert ("get", "items", "l1", None) in rec.calls
