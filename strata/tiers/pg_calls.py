"""Calls on the L3 tier's pooled connections: ``Bounded`` (several statements under one
``l3_timeout``), ``PgTransaction``, and the error translation of a failed call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import asyncpg

from strata.errors import StrataError
from strata.tiers.pg_statements import translate_errors

if TYPE_CHECKING:
    from strata.tiers.postgres import PostgresTier

__all__ = ["Bounded", "PgTransaction", "typed_error"]


def typed_error(what: str, url: str, exc: BaseException) -> BaseException:
    """The StrataError ``translate_errors`` makes of ``exc`` (``exc`` itself when it is no
    driver error). Only failed calls pay for the generator."""
    try:
        with translate_errors(what, url):
            raise exc
    except StrataError as typed:
        return typed
    except BaseException:
        return exc


class PgTransaction:
    """One L3 transaction (or a savepoint inside one) on one pooled connection."""

    def __init__(
        self,
        tier: PostgresTier,
        conn: asyncpg.Connection,
        tr: Any,
        *,
        release: Callable[[asyncpg.Connection], None] | None,
    ) -> None:
        self.tier = tier
        self.conn = conn
        self._tr = tr
        self._release = release

    async def savepoint(self) -> PgTransaction:
        tr = self.conn.transaction()
        async with self.tier.bounded("savepoint", self.conn):
            await tr.start()
        return PgTransaction(self.tier, self.conn, tr, release=None)

    async def commit(self) -> None:
        try:
            async with self.tier.bounded("commit", self.conn):
                await self._tr.commit()
        finally:
            self._done()

    async def rollback(self) -> None:
        try:
            if not self.conn.is_closed():
                async with self.tier.bounded("rollback", self.conn):
                    await self._tr.rollback()
        finally:
            self._done()

    def _done(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release(self.conn)  # a connection left inside a transaction is discarded


class Bounded:
    """``async with tier.bounded(what, conn) as conn``: one L3 call of several statements on
    ``conn`` (a transaction's) or on a pooled connection, bounded by ``l3_timeout`` (the
    wait for a connection included) with driver errors translated. A plain class, not a
    generator: entering and leaving cost two calls."""

    __slots__ = ("_conn", "_pooled", "_tier", "_timer", "_what")

    def __init__(self, tier: PostgresTier, what: str, conn: asyncpg.Connection | None) -> None:
        self._tier = tier
        self._what = what
        self._conn = conn
        self._pooled = conn is None
        self._timer: asyncio.Timeout | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        tier = self._tier
        if self._conn is None:
            self._conn = tier.pool.take() or await tier.checkout(self._what)
        self._timer = asyncio.timeout(tier.timeout)
        await self._timer.__aenter__()
        return self._conn

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._timer is not None and self._conn is not None
        try:
            await self._timer.__aexit__(et, exc, tb)
        except TimeoutError as expired:
            exc = expired
        tier = self._tier
        if exc is None:
            if self._pooled:
                tier.pool.release(self._conn)
            if tier.outage.down:
                tier.outage.succeeded()
            return False
        typed = tier.failed(self._what, self._conn, exc, pooled=self._pooled)
        if typed is exc:
            return False
        raise typed from exc
