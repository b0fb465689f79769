"""examples/fastapi_app.py through httpx's ASGI transport, on embedded SQLite."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from strata import Config, errors
from strata.contrib.fastapi import get_store

ROOT = Path(__file__).resolve().parent.parent


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fastapi_app_example", ROOT / "examples" / "fastapi_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()


class CountingUpstream:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, currency: str) -> float:
        self.calls.append(currency)
        return 0.5


@pytest.fixture
def upstream() -> CountingUpstream:
    return CountingUpstream()


@pytest.fixture
async def client(tmp_path: Path, upstream: CountingUpstream) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = example.create_app(
        Config(database_url=f"sqlite:///{tmp_path / 'shop.db'}"), upstream=upstream
    )
    # httpx's ASGI transport sends no lifespan events: run the app's lifespan around it.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as c:
            yield c


LAMP = {"id": "i1", "name": "lamp", "price": 30, "stock": 5}


async def test_put_then_get_returns_the_item(client: httpx.AsyncClient) -> None:
    assert (await client.put("/items/i1", json=LAMP)).status_code == 200
    got = await client.get("/items/i1")
    assert got.status_code == 200
    assert {k: got.json()[k] for k in LAMP} == LAMP


async def test_missing_item_is_a_404(client: httpx.AsyncClient) -> None:
    got = await client.get("/items/nope")
    assert got.status_code == 404
    assert "nope" in got.json()["detail"]


async def test_delete_removes_the_item(client: httpx.AsyncClient) -> None:
    await client.put("/items/i1", json=LAMP)
    assert (await client.delete("/items/i1")).status_code == 204
    assert (await client.get("/items/i1")).status_code == 404


async def test_search_filters_and_orders_by_price(client: httpx.AsyncClient) -> None:
    for i, price in enumerate([50, 10, 30, 90]):
        await client.put(f"/items/i{i}", json={"id": f"i{i}", "name": f"n{i}", "price": price})
    got = await client.get("/items", params={"max_price": 50})
    assert [item["price"] for item in got.json()] == [10, 30, 50]


async def test_order_decrements_stock_in_one_transaction(client: httpx.AsyncClient) -> None:
    await client.put("/items/i1", json=LAMP)
    placed = await client.post("/orders", json={"id": "o1", "item_id": "i1", "quantity": 2})
    assert placed.status_code == 201
    assert placed.json()["total"] == 60
    assert (await client.get("/items/i1")).json()["stock"] == 3


async def test_order_beyond_the_stock_changes_nothing(client: httpx.AsyncClient) -> None:
    await client.put("/items/i1", json=LAMP)
    refused = await client.post("/orders", json={"id": "o1", "item_id": "i1", "quantity": 9})
    assert refused.status_code == 409
    assert (await client.get("/items/i1")).json()["stock"] == 5
    assert (await client.get("/items", params={"max_price": 100})).json()[0]["stock"] == 5


async def test_upstream_rate_is_fetched_once_then_served_from_the_cache(
    client: httpx.AsyncClient, upstream: CountingUpstream
) -> None:
    first = await client.get("/rates/EUR")
    second = await client.get("/rates/EUR")
    assert first.json() == second.json() == {"id": "EUR", "per_usd": 0.5}
    assert upstream.calls == ["EUR"]


def test_the_dependency_without_the_lifespan_is_a_clear_error() -> None:
    app = FastAPI()

    class FakeRequest:
        pass

    request = FakeRequest()
    request.app = app  # type: ignore[attr-defined]
    with pytest.raises(errors.LifecycleError, match="strata_lifespan"):
        get_store(request)  # type: ignore[arg-type]
