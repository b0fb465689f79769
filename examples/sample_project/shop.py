"""A user's service code: carts over a Strata store. Its tests (tests/) use only the
``strata.testing`` pytest plugin: no server, no fixture of their own but the schema list."""

from __future__ import annotations

from pydantic import BaseModel

from strata import DataStore, Field, MemPolicy, Schema, errors


class Cart(BaseModel):
    id: str = Field(primary_key=True)
    owner: str = Field(index=True)
    items: dict[str, int] = Field(default_factory=dict)


SCHEMAS = [Schema(name="carts", model=Cart, l1=MemPolicy(ttl=60, max_entries=1_000))]


async def add_item(ds: DataStore, cart_id: str, owner: str, sku: str, count: int = 1) -> Cart:
    """Add ``count`` of ``sku`` to the cart, creating the cart on first use."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    try:
        cart = await ds.get(Cart, cart_id)
    except errors.NotFoundError:
        cart = Cart(id=cart_id, owner=owner)
    items = {**cart.items, sku: cart.items.get(sku, 0) + count}
    return await ds.set(Cart, cart.model_copy(update={"items": items}))


async def item_count(ds: DataStore, cart_id: str) -> int:
    try:
        cart = await ds.get(Cart, cart_id)
    except errors.NotFoundError:
        return 0
    return sum(cart.items.values())
