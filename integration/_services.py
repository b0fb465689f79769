"""Where the integration tests' servers are, and whether they answer.

Shared by ``integration/conftest.py`` and ``scripts/check_services.py`` (which
``scripts/ensure-services`` runs), so the URL defaults, the reachability check and
the "how to provide a server" message exist once.

The checks are real round trips, not port probes: asyncpg ``SELECT 1`` for
PostgreSQL and redis.asyncio ``PING`` for Redis, each with a short timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

DATABASE_URL_ENV = "STRATA_TEST_DATABASE_URL"
REDIS_URL_ENV = "STRATA_TEST_REDIS_URL"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TIMEOUT = 3.0

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

T = TypeVar("T")


@dataclass(frozen=True)
class Service:
    """One server the integration tests need."""

    key: str  # "postgres" | "redis"
    name: str  # human name
    env_var: str
    default_url: str
    default_port: int

    @property
    def url(self) -> str:
        return os.environ.get(self.env_var) or self.default_url

    @property
    def is_local_default(self) -> bool:
        """True when the URL points at this machine's server on its standard port.

        Only then may ``scripts/ensure-services`` try to start the machine's own server.
        """
        parts = urlsplit(self.url)
        host = parts.hostname
        # No host in a PostgreSQL URL means libpq's default: the local socket.
        local = host is None or host in _LOCAL_HOSTS or host.startswith("/")
        try:
            port = parts.port or self.default_port
        except ValueError:
            return False
        return local and port == self.default_port


POSTGRES = Service("postgres", "PostgreSQL", DATABASE_URL_ENV, DEFAULT_DATABASE_URL, 5432)
REDIS = Service("redis", "Redis", REDIS_URL_ENV, DEFAULT_REDIS_URL, 6379)
SERVICES: dict[str, Service] = {s.key: s for s in (POSTGRES, REDIS)}


def database_url() -> str:
    return POSTGRES.url


def redis_url() -> str:
    return REDIS.url


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable URL>"


def asyncpg_dsn(url: str) -> str:
    """Accept SQLAlchemy-style ``postgresql+asyncpg://`` too; asyncpg wants the plain scheme."""
    parts: SplitResult = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    return urlunsplit(parts._replace(scheme=scheme))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class CheckResult:
    service: Service
    url: str
    error: str | None  # None: reachable

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or "no detail"
    return f"{type(exc).__name__}: {text}"


async def _create_database(dsn: str, name: str, timeout_s: float) -> None:
    conn = await asyncpg.connect(dsn, database="postgres", timeout=timeout_s)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            # Someone else may create it meanwhile.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


async def check_postgres(
    url: str, *, timeout_s: float = DEFAULT_TIMEOUT, create_database: bool = False
) -> str | None:
    """None if ``SELECT 1`` works on ``url``, else a one-line reason.

    With ``create_database``, a missing database is created through the server's
    ``postgres`` database (the server itself must answer).
    """
    dsn = asyncpg_dsn(url)
    for attempt in (1, 2):
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout_s)
        except asyncpg.InvalidCatalogNameError as exc:
            if not create_database or attempt == 2:
                return _describe(exc)
            db = urlsplit(dsn).path.lstrip("/")
            if not db:
                return _describe(exc)
            try:
                await _create_database(dsn, db, timeout_s)
            except Exception as create_exc:
                return f"database {db!r} is missing and could not be created: " + _describe(
                    create_exc
                )
            continue
        except Exception as exc:
            return _describe(exc)
        try:
            value = await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout_s)
            return None if value == 1 else f"SELECT 1 returned {value!r}"
        except Exception as exc:
            return _describe(exc)
        finally:
            await conn.close(timeout=timeout_s)
    return "unreachable"  # pragma: no cover - loop always returns


async def check_redis(url: str, *, timeout_s: float = DEFAULT_TIMEOUT) -> str | None:
    """None if ``PING`` works on ``url``, else a one-line reason."""
    try:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
    except Exception as exc:
        return _describe(exc)
    try:
        pong = await client.ping()
        return None if pong else f"PING returned {pong!r}"
    except Exception as exc:
        return _describe(exc)
    finally:
        await client.aclose()


async def check_services(
    services: Sequence[Service] = (POSTGRES, REDIS),
    *,
    timeout_s: float = DEFAULT_TIMEOUT,
    create_database: bool = False,
) -> list[CheckResult]:
    async def one(service: Service) -> CheckResult:
        url = service.url
        if service is POSTGRES:
            error = await check_postgres(url, timeout_s=timeout_s, create_database=create_database)
        else:
            error = await check_redis(url, timeout_s=timeout_s)
        return CheckResult(service, url, error)

    return list(await asyncio.gather(*(one(s) for s in services)))


def run_in_fresh_loop(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``fn()`` to completion on a private event loop in a private thread.

    Safe to call from sync code whatever event loop the calling thread has (such as
    one pytest-asyncio has set), and never changes that thread's current loop.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="strata-service-check") as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()


def check_services_sync(
    services: Sequence[Service] = (POSTGRES, REDIS),
    *,
    timeout_s: float = DEFAULT_TIMEOUT,
    create_database: bool = False,
) -> list[CheckResult]:
    return run_in_fresh_loop(
        lambda: check_services(services, timeout_s=timeout_s, create_database=create_database)
    )


# --------------------------------------------------------------- docker fallback


def testcontainers_importable() -> bool:
    try:
        return importlib.util.find_spec("testcontainers") is not None
    except (ImportError, ValueError):
        return False


def docker_available(timeout: float = 15.0) -> bool:
    """True when a Docker *engine* answers (the client alone is not enough)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


# ------------------------------------------------------------------------ message


def unreachable_message(
    failed: Sequence[CheckResult], *, context: str = "", hint_ensure_services: bool = True
) -> str:
    """The message shown when servers are missing: which, where, and how to provide one.

    ``hint_ensure_services``: suggest ``scripts/ensure-services`` for failed servers whose
    URL is this machine's default (it is the only case where that script starts one).
    """
    names = " and ".join(r.service.name for r in failed)
    lines = [f"{context}{names} unreachable - the integration tests need real servers."]
    for r in failed:
        lines.append(f"  {r.service.name}: tried {redact(r.url)}")
        lines.append(f"    error: {r.error}")
    lines.append("How to provide them:")
    for r in failed:
        lines.append(
            f"  - point {r.service.env_var} at a running {r.service.name} "
            f"(default {r.service.default_url})"
        )
    local = [r.service.name for r in failed if r.service.is_local_default]
    if hint_ensure_services and local:
        lines.append(
            f"  - or start this machine's own {' and '.join(local)}: scripts/ensure-services"
        )
    if in_ci():
        lines.append("  (CI=true: Docker/testcontainers is not used in CI.)")
    else:
        lines.append(
            "  - or, outside CI, install Docker (a running engine) and "
            "`.venv/bin/pip install -e '.[testcontainers]'`; "
            "the integration tests then start throwaway containers"
        )
    lines.append("Integration tests are never skipped for a missing server.")
    return "\n".join(lines)
