"""A small shop on FastAPI + Strata: CRUD, search, a transaction and a cached upstream call.

Run it (embedded SQLite by default; STRATA_DATABASE_URL / STRATA_REDIS_URL for servers):

    pip install 'strata[fastapi]' uvicorn
    uvicorn examples.fastapi_app:app

    curl -X PUT localhost:8000/items/i1 -H 'content-type: application/json' \\
         -d '{"id": "i1", "name": "lamp", "price": 30, "stock": 5}'
    curl localhost:8000/items/i1
    curl 'localhost:8000/items?max_price=50'
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"id": "o1", "item_id": "i1", "quantity": 2}'
    curl localhost:8000/rates/EUR
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from strata import Config, DataStore, Field, Q, Schema, errors
from strata.contrib.fastapi import Store, strata_lifespan


class Item(BaseModel):
    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    price: int = Field(default=0, index=True)
    stock: int = 0
    updated_at: datetime = Field(auto_now=True)


class Order(BaseModel):
    id: str = Field(primary_key=True)
    item_id: str = Field(index=True)
    quantity: int
    total: int = 0


class Rate(BaseModel):
    """An upstream API's answer, kept in the keyed cache (ds.cache), not in a table."""

    id: str  # the currency
    per_usd: float


Upstream = Callable[[str], Awaitable[float]]


async def fetch_rate(currency: str) -> float:
    """Stands in for a slow HTTP call to a rates service."""
    return {"EUR": 0.92, "GBP": 0.79}.get(currency, 1.0)


def create_app(config: Config | None = None, upstream: Upstream = fetch_rate) -> FastAPI:
    ds = DataStore(config or Config.from_env())
    ds.register(Schema(name="items", model=Item))
    ds.register(Schema(name="orders", model=Order))
    # The upstream's answers live in the keyed cache: memory (and Redis, with a redis_url),
    # one upstream call per currency across every instance at a time.
    rates = ds.cache.namespace("rates", version="v1")
    app = FastAPI(title="Strata shop", lifespan=strata_lifespan(ds, migrate=True))

    @app.exception_handler(errors.NotFoundError)
    async def not_found(request: Request, exc: errors.NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.put("/items/{item_id}")
    async def put_item(item_id: str, item: Item, ds: Store) -> Item:
        if item.id != item_id:
            raise HTTPException(422, "the body's id must match the path")
        return await ds.set(Item, item)

    @app.get("/items/{item_id}")
    async def get_item(item_id: str, ds: Store) -> Item:
        return await ds.get(Item, item_id)

    @app.delete("/items/{item_id}", status_code=204)
    async def delete_item(item_id: str, ds: Store) -> None:
        await ds.delete(Item, item_id)

    @app.get("/items")
    async def search_items(ds: Store, max_price: int | None = None, limit: int = 20) -> list[Item]:
        q = Q().order_by("price").limit(limit)
        if max_price is not None:
            q = q.filter(price__lte=max_price)
        return await ds.search(Item, q)

    @app.post("/orders", status_code=201)
    async def place_order(order: Order, ds: Store) -> Order:
        # One transaction: the stock check, the decrement and the order row, or nothing.
        async with ds.tx() as tx:
            item = await tx.get(Item, order.item_id, for_update=True)
            if item.stock < order.quantity:
                raise HTTPException(409, f"only {item.stock} of {item.name!r} left")
            await tx.set(Item, item.model_copy(update={"stock": item.stock - order.quantity}))
            placed = order.model_copy(update={"total": item.price * order.quantity})
            return await tx.set(Order, placed)

    @app.get("/rates/{currency}")
    async def rate(currency: str, ds: Store) -> Rate:
        async def load() -> Rate:
            return Rate(id=currency, per_usd=await upstream(currency))

        rate: Rate = await rates.remember(currency, load, ttl=60, model=Rate)
        return rate

    return app


app = create_app()
