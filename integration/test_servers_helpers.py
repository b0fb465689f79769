"""The fault-test helpers and the shared fixtures do what they promise.

Runs against a private redis-server (never the shared one) for stop/start and the proxy
faults, and against the shared PostgreSQL/Redis only through the isolation fixtures.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from integration import _services as svc
from integration._servers import FaultProxy, PrivateRedis, free_port


def _client(host: str, port: int, *, timeout: float = 2.0) -> aioredis.Redis:
    # No retries: a fault must surface at once, not after backoff.
    return aioredis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


async def _refused(host: str, port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as sock:
        assert sock.getsockname()[1] == port


async def test_private_redis_stop_and_start_on_same_port() -> None:
    async with PrivateRedis() as server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        port = server.port
        client = _client(server.host, server.port)
        try:
            assert await client.ping() is True
            await client.set("k", "v")

            await server.stop()
            assert not server.running
            assert await _refused(server.host, port)
            with pytest.raises(RedisConnectionError):
                await client.ping()

            await server.start()
            assert server.running
            assert server.port == port
            assert await client.ping() is True  # the pool reconnects
            assert await client.get("k") is None  # nothing kept on disk
        finally:
            await client.aclose()
    assert not server.running
    assert await _refused("127.0.0.1", port)


def test_private_redis_sync_context_manager() -> None:
    with PrivateRedis() as server:
        assert server.running
        assert PrivateRedis._ping_sync(server.host, server.port)
        logdir = server.logfile
        assert logdir is not None
        assert logdir.parent.is_dir()
    assert not server.running
    assert not logdir.parent.exists()


async def test_fault_proxy_cut_and_restore() -> None:
    async with PrivateRedis() as server, FaultProxy(server.host, server.port) as proxy:
        client = _client(proxy.host, proxy.port)
        try:
            assert await client.ping() is True
            await client.set("through-proxy", "1")
            assert proxy.connections == 1

            await proxy.cut()
            assert proxy.is_cut
            assert proxy.connections == 0
            with pytest.raises(RedisConnectionError):
                await client.ping()  # the open connection was dropped
            assert await _refused(proxy.host, proxy.port)  # new ones are refused
            assert server.running  # the server itself was never touched

            await proxy.restore()
            assert not proxy.is_cut
            assert await client.ping() is True
            assert await client.get("through-proxy") == b"1"
        finally:
            await client.aclose()


async def test_fault_proxy_delay() -> None:
    async with PrivateRedis() as server, FaultProxy(server.host, server.port) as proxy:
        client = _client(proxy.host, proxy.port, timeout=0.2)
        try:
            assert await client.ping() is True
            proxy.delay(0.3)
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await client.ping()
            assert time.monotonic() - started >= 0.2
            proxy.delay(0)
            await client.aclose()
            client = _client(proxy.host, proxy.port, timeout=2.0)
            proxy.delay(0.25)
            started = time.monotonic()
            assert await client.ping() is True
            assert time.monotonic() - started >= 0.25
        finally:
            await client.aclose()


async def test_fault_proxy_blackhole_then_restore() -> None:
    async with PrivateRedis() as server, FaultProxy(server.host, server.port) as proxy:
        client = _client(proxy.host, proxy.port, timeout=0.3)
        fresh = _client(proxy.host, proxy.port, timeout=0.3)
        try:
            assert await client.ping() is True
            proxy.blackhole()
            with pytest.raises(RedisTimeoutError):
                await client.ping()  # established connection: nothing comes back
            with pytest.raises(RedisTimeoutError):
                await fresh.ping()  # new connection: accepted, never answered
            await proxy.restore()
            assert await client.ping() is True
            assert await fresh.ping() is True
        finally:
            await client.aclose()
            await fresh.aclose()


async def test_fault_proxy_in_front_of_postgres(pg_url: str) -> None:
    async with FaultProxy.for_url(pg_url) as proxy:
        conn = await asyncpg.connect(svc.asyncpg_dsn(proxy.url_for(pg_url)), timeout=5)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await proxy.cut()
            with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
                await conn.fetchval("SELECT 1")
        finally:
            await conn.close(timeout=2)
        await proxy.restore()
        conn = await asyncpg.connect(svc.asyncpg_dsn(proxy.url_for(pg_url)), timeout=5)
        try:
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            await conn.close()


# --- the isolation fixtures clean up after themselves (checked by the test after) ---

_seen: dict[str, str] = {}


async def test_isolation_fixtures_give_a_private_schema_and_prefix(
    pg_schema: str,
    pg_conn: asyncpg.Connection,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    assert pg_schema.startswith("t_")
    assert redis_prefix.startswith("strata-test-")
    assert await pg_conn.fetchval("SELECT current_schema()") == pg_schema
    await pg_conn.execute("CREATE TABLE item (id int PRIMARY KEY)")
    await pg_conn.execute("INSERT INTO item VALUES (1)")
    assert await pg_conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".item') == 1
    for i in range(5):
        await redis_client.set(f"{redis_prefix}:{i}", i)
    assert len([k async for k in redis_client.scan_iter(match=f"{redis_prefix}*")]) == 5
    _seen.update(schema=pg_schema, prefix=redis_prefix)


async def test_isolation_fixtures_cleaned_up(pg_url: str, redis_client: aioredis.Redis) -> None:
    if not _seen:
        pytest.fail("runs after test_isolation_fixtures_give_a_private_schema_and_prefix")
    conn = await asyncpg.connect(svc.asyncpg_dsn(pg_url))
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = $1", _seen["schema"]
        )
    finally:
        await conn.close()
    assert exists is None
    assert [k async for k in redis_client.scan_iter(match=f"{_seen['prefix']}*")] == []
