"""The tier contracts of strata.testing.contract, run against Strata's Redis tier (on the
shared Redis, keys under this test's prefix) — the same suites users run on their own tiers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from strata.testing.contract import L2TierContract
from strata.tiers.base import L2Tier
from strata.tiers.redis import RedisTier


class TestRedisTier(L2TierContract):
    @pytest.fixture
    async def l2_tier(self, redis_url: str) -> AsyncIterator[L2Tier]:
        tier = RedisTier(redis_url)
        await tier.connect()
        yield tier
        await tier.close()

    @pytest.fixture
    def key(self, redis_prefix: str) -> str:
        return f"{redis_prefix}:contract:"  # deleted with the prefix after the test
