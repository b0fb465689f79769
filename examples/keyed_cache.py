"""A tour of the keyed cache (``ds.cache``): a product page service that caches a slow
pricing API, remembers "no such product" briefly, serves a stale price while refreshing it,
counts views, limits a coupon endpoint and drops a whole catalogue version at once.

Runs embedded (memory + SQLite) as is; with ``STRATA_REDIS_URL`` / ``STRATA_DATABASE_URL``
set (``Config.from_env()``) the same code shares everything across instances.

    python examples/keyed_cache.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from strata import Config, Cost, DataStore

PRICES = {"p1": 19.9, "p2": 5.0}
API_CALLS = 0


class Price(BaseModel):
    product: str
    amount: float
    currency: str = "EUR"


async def pricing_api(product: str) -> Price | None:
    """The slow upstream: 30 ms a call, and None for an unknown product."""
    global API_CALLS
    API_CALLS += 1
    await asyncio.sleep(0.03)
    amount = PRICES.get(product)
    return None if amount is None else Price(product=product, amount=amount)


async def main() -> None:
    async with DataStore(Config.from_env()) as ds:
        await ds.migrate()
        catalogue = ds.cache.namespace("catalogue", version="2026-12")
        prices = catalogue.namespace("prices")

        # 1. A stampede of 200 page views on a cold price: one upstream call.
        views = await asyncio.gather(
            *(
                prices.remember("p1", lambda: pricing_api("p1"), ttl=60, model=Price)
                for _ in range(200)
            )
        )
        print(f"200 views of p1 -> {views[0].amount} {views[0].currency}, API calls: {API_CALLS}")

        # 2. Unknown products are remembered as "none" for 5 s: no hammering the API.
        for _ in range(3):
            await prices.remember("nope", lambda: pricing_api("nope"), ttl=60, negative_ttl=5)
        print(f"3 lookups of an unknown product -> API calls: {API_CALLS}")

        # 3. The decorator: a key template from the arguments; EXPENSIVE values also land in
        #    the durable table, so they survive restarts and Redis flushes.
        @ds.cache.cached(ttl=3600, key="catalogue:report:{month}", cost=Cost.EXPENSIVE)
        async def monthly_report(month: str) -> dict[str, float]:
            await asyncio.sleep(0.05)
            return {"revenue": 1234.5}

        print("report:", await monthly_report("2026-11"), await monthly_report(month="2026-11"))

        # 4. Counters, add/pull (one-shot tokens), get_many.
        for _ in range(3):
            await catalogue.incr(["views", "p1"])
        await catalogue.add(["token", "abc"], {"user": "ann"}, ttl=600)
        print("views:", await catalogue.get(["views", "p1"]))
        print(
            "token:",
            await catalogue.pull(["token", "abc"]),
            "then",
            await catalogue.pull(["token", "abc"]),
        )
        print("many:", await prices.get_many(["p1", "p2"], model=Price))

        # 5. A coupon endpoint: 3 redemptions a minute per user (sliding window).
        decisions = [await ds.cache.rate_limit("coupon:ann", 3, 60, sliding=True) for _ in range(4)]
        print("coupon:", [d.allowed for d in decisions])

        # 6. A new catalogue version is published: every price of it goes, in O(1).
        await catalogue.invalidate(["prices", "*"])
        print("after invalidate:", await prices.get("p1"))

        s = ds.stats()
        print(
            f"stats: memory hits {s.cache_l1_hits}, misses {s.cache_misses}, "
            f"loader calls {s.cache_loader_calls}, lease waits {s.cache_lease_waits}, "
            f"rate limited {s.cache_rate_limited}"
        )


if __name__ == "__main__":
    asyncio.run(main())
