"""Shared fixtures for the integration tests, which talk to real PostgreSQL and Redis.

Servers come from ``STRATA_TEST_DATABASE_URL`` / ``STRATA_TEST_REDIS_URL`` (defaults: this
machine's servers, ``postgresql://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0``). Before the first integration test runs they are checked with
a real round trip. If one does not answer: outside CI, with a Docker engine and the
``testcontainers`` extra installed, a throwaway container is started for it and the env
var points at it for the session; otherwise the run stops (``pytest.exit``, status 1),
naming the server and the env var. Integration tests are never skipped for a missing
server.

Isolation: each test gets its own PostgreSQL schema (``pg_schema``, dropped after) and its
own Redis key prefix (``redis_prefix``, its keys deleted after). Nothing here stops,
flushes or reconfigures the shared servers; fault tests use ``integration._servers``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from integration import _services as svc


@dataclass(frozen=True)
class ServiceURLs:
    database_url: str
    redis_url: str


def _start_containers(failed: list[svc.CheckResult], stack: contextlib.ExitStack) -> None:
    """Start a testcontainers container for each failed service and point its env var at it."""
    with warnings.catch_warnings():
        # Third-party deprecation noise must not turn into errors (filterwarnings=error).
        warnings.simplefilter("ignore")
        for result in failed:
            container: Any
            if result.service is svc.POSTGRES:
                from testcontainers.postgres import (  # type: ignore[import-not-found,unused-ignore]
                    PostgresContainer,
                )

                container = PostgresContainer(
                    "postgres:16-alpine",
                    username="postgres",
                    password="postgres",
                    dbname="test",
                    driver=None,
                )
                container.start()
                stack.callback(container.stop)
                url = container.get_connection_url()
            else:
                from testcontainers.redis import (  # type: ignore[import-not-found,unused-ignore]
                    RedisContainer,
                )

                container = RedisContainer("redis:7-alpine")
                container.start()
                stack.callback(container.stop)
                host = container.get_container_host_ip()
                port = container.get_exposed_port(6379)
                url = f"redis://{host}:{port}/0"
            env_var = result.service.env_var
            previous = os.environ.get(env_var)
            os.environ[env_var] = url
            stack.callback(_restore_env, env_var, previous)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def strata_services() -> Iterator[ServiceURLs]:
    """Session: make sure both servers answer (or start containers, or stop the run)."""
    results = svc.check_services_sync(create_database=True)
    failed = [r for r in results if not r.ok]
    with contextlib.ExitStack() as stack:
        if failed:
            usable = not svc.in_ci() and svc.testcontainers_importable() and svc.docker_available()
            if not usable:
                pytest.exit(svc.unreachable_message(failed), returncode=1)
            try:
                _start_containers(failed, stack)
            except Exception as exc:
                stack.close()
                pytest.exit(
                    svc.unreachable_message(failed)
                    + f"\nStarting containers with testcontainers failed too: {exc!r}",
                    returncode=1,
                )
            still = [r for r in svc.check_services_sync(create_database=True) if not r.ok]
            if still:
                stack.close()
                pytest.exit(
                    svc.unreachable_message(still, context="Even in a container: "),
                    returncode=1,
                )
        yield ServiceURLs(database_url=svc.database_url(), redis_url=svc.redis_url())


@pytest.fixture(scope="session")
def pg_url(strata_services: ServiceURLs) -> str:
    """The PostgreSQL URL (``postgresql://...``) the integration tests use."""
    return strata_services.database_url


@pytest.fixture(scope="session")
def redis_url(strata_services: ServiceURLs) -> str:
    """The Redis URL (``redis://...``) the integration tests use."""
    return strata_services.redis_url


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture
async def pg_schema(pg_url: str) -> AsyncIterator[str]:
    """A fresh, uniquely named schema ``t_<8 hex>``; dropped (CASCADE) after the test."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    dsn = svc.asyncpg_dsn(pg_url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {_quote_ident(name)}")
    finally:
        await conn.close()
    try:
        yield name
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            # Fail the teardown rather than hang if a leaked connection holds locks.
            await conn.execute("SET lock_timeout = '30s'")
            await conn.execute(f"DROP SCHEMA IF EXISTS {_quote_ident(name)} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A unique key prefix ``strata-test-<8 hex>``; keys matching ``<prefix>*`` deleted after.

    Cleanup is SCAN + DEL of this prefix only (never FLUSHDB).
    """
    prefix = f"strata-test-{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    finally:
        client = aioredis.Redis.from_url(redis_url)
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=f"{prefix}*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await client.delete(*batch)
                    batch.clear()
            if batch:
                await client.delete(*batch)
        finally:
            await client.aclose()


@pytest.fixture
async def pg_conn(pg_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw asyncpg connection with ``search_path`` = ``pg_schema``; closed after."""
    conn = await asyncpg.connect(
        svc.asyncpg_dsn(pg_url), server_settings={"search_path": pg_schema}
    )
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A ``redis.asyncio.Redis`` on ``redis_url`` (bytes responses); closed after."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def settings(pg_url: str, pg_schema: str, redis_url: str, redis_prefix: str) -> dict[str, Any]:
    """``Config`` keyword arguments for a store on this test's schema, prefix and channel."""
    return {
        "database_url": pg_url,
        "database_schema": pg_schema,
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        "invalidation_channel": f"{redis_prefix}:invalidation",
        "redis_timeout": TEST_REDIS_TIMEOUT,
    }


# The tier-contract fixtures (``env``, ``l3_env``) live beside the stacks they build.
from integration.stacks import (  # noqa: E402, F401
    TEST_REDIS_TIMEOUT,
    bus_env,
    env,
    l1_async_env,
    l2_env,
    l3_env,
    redis_cluster,
    wb_env,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``@pytest.mark.needs(pg=..., bus=..., l1=..., l2=...)`` runs only on
    the stacks it applies to: the others are deselected here, so nothing is skipped."""
    from integration.stacks import Stack, applies

    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("needs")
        callspec = getattr(item, "callspec", None)
        stacks = [v for v in callspec.params.values() if isinstance(v, Stack)] if callspec else []
        if marker is not None and any(not applies(s, **marker.kwargs) for s in stacks):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
