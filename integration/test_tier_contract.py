"""The tier contracts of strata.testing.contract, run against Strata's Redis tier (on the
shared Redis, keys under this test's prefix) and its PostgreSQL tier (a private schema):
the same suites users run on their own tiers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from strata.config import Config
from strata.migrations import migrate
from strata.schema import CompiledSchema
from strata.testing.contract import L2TierContract, L3TierContract
from strata.tiers.base import L2Tier, L3Tier
from strata.tiers.postgres import PostgresTier
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


class TestPostgresTier(L3TierContract):
    @pytest.fixture
    def l3_config(self, pg_url: str, pg_schema: str) -> Config:
        return Config(database_url=pg_url, database_schema=pg_schema)

    @pytest.fixture
    async def l3_tier(self, l3_config: Config, l3_schema: CompiledSchema) -> AsyncIterator[L3Tier]:
        await migrate(l3_config, [l3_schema])
        tier = PostgresTier(l3_config, logger=logging.getLogger("strata.test"))
        tier.register(l3_schema)
        await tier.connect()
        yield tier
        await tier.close()
