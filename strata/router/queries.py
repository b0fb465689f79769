"""Queries: ``search`` / ``search_cached`` / ``count``, read replicas, ``warm_cache``.

    search ─► compile (identifiers checked) ─► replica if configured and up, else primary
           ─► whole rows: models, filling L2 and L1 (unless force_l3)
              fields(...): dicts keyed by field, never cached
    search_cached ─► L2 {prefix}:{schema}:{shape}:q:{generation}:{digest} ─hit─► result
                  └miss─► search ─► stored under the current generation (every write to
                          the schema bumps it, so no stale result is ever reachable)

Replica rows never fill a cache. On a write-behind schema a search (or count) first waits
until this instance's own queued or journaled writes of it are in L3 (read your writes:
rows it created and values it changed are matched there); another instance's writes not
flushed yet replace the L3 rows of their ids (``_overlay``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import msgpack
import orjson

from strata.codec import Tombstone
from strata.config import hide_password
from strata.errors import (
    CacheMissError,
    CodecError,
    InvalidValueError,
    StrataError,
    TierUnavailableError,
    UnsupportedOperationError,
    WriteBehindError,
)
from strata.query import CompiledQuery, Q, Query, as_query, compile_count, compile_select
from strata.router.core import Core, Route
from strata.router.reads import Reads
from strata.schema import ColumnSpec, json_default
from strata.tiers.postgres import PostgresTier
from strata.tiers.sqlite import to_sqlite

__all__ = ["Queries"]

_REPLICA_RETRY = 5.0
_RESULT_MODELS = b"SQm"  # cached search result: msgpack list of codec envelopes
_RESULT_DICTS = b"SQd"  # cached projection: JSON list of dicts
_WARM_BATCH = 1000


class Queries:
    def __init__(self, core: Core, reads: Reads) -> None:
        self.core = core
        self.reads = reads
        self.replicas: dict[str, PostgresTier] = {}
        self._replica_retry_at: dict[str, float] = {}

    # -- replicas ------------------------------------------------------------------------

    def add_replica(self, rt_cs: Any, url: str) -> None:
        tier = self.replicas.get(url)
        if tier is None:
            tier = self.replicas[url] = PostgresTier(
                self.core.config, url=url, logger=self.core.log
            )
        tier.register(rt_cs)

    async def connect_replicas(self) -> None:
        for url, replica in self.replicas.items():
            try:
                await replica.connect()
            except TierUnavailableError as exc:
                self.core.log.warning(
                    "read replica %s unavailable at connect, reading from the primary: %s",
                    hide_password(url),
                    exc,
                )
                self.core.count_error(exc)
                self._replica_retry_at[url] = time.monotonic() + _REPLICA_RETRY

    async def close_replicas(self) -> None:
        for replica in self.replicas.values():
            await replica.close()

    def _replica_for(self, rt: Route) -> PostgresTier | None:
        url = rt.b.replica_url
        if url is None:
            return None
        tier = self.replicas.get(url)
        if tier is None or self._replica_retry_at.get(url, 0.0) > time.monotonic():
            return None
        return tier

    def _replica_down(self, rt: Route, exc: BaseException) -> None:
        url = rt.b.replica_url
        assert url is not None
        if self._replica_retry_at.get(url, 0.0) == 0.0:
            self.core.log.warning(
                "read replica %s unavailable, reading from the primary: %s", hide_password(url), exc
            )
        self.core.count_error(exc)
        self._replica_retry_at[url] = time.monotonic() + _REPLICA_RETRY

    # -- compile and run -------------------------------------------------------------------

    def compile(self, rt: Route, q: Q | Query | None, *, count: bool = False) -> CompiledQuery:
        if not rt.b.l3_on:
            raise UnsupportedOperationError(
                f"{rt.name} has no L3 tier (l3=None): search and count need a database; "
                "use get / get_many by id"
            )
        dialect = self.core.l3.dialect
        to_db = _sqlite_arg if dialect == "sqlite" else None
        if count:
            return compile_count(q, rt.b.cs, dialect, to_db=to_db)  # type: ignore[arg-type]
        return compile_select(
            q,
            rt.b.cs,
            dialect,  # type: ignore[arg-type]
            default_limit=self.core.config.default_query_limit,
            to_db=to_db,
        )

    async def _rows(self, rt: Route, cq: CompiledQuery) -> tuple[list[dict[str, Any]], bool]:
        """The rows, and whether a replica served them (they may lag the primary: they
        never fill a cache, DESIGN section 4)."""
        self.core.c.l3_queries += 1
        tier = self._replica_for(rt)
        if tier is not None:
            try:
                await tier.ensure_connected()  # down at connect(): retried once it is due
                return await tier.fetch(cq.sql, cq.args, schema=rt.b.cs), True
            except TierUnavailableError as exc:
                self._replica_down(rt, exc)
        return await self.core.l3.fetch(cq.sql, cq.args, schema=rt.b.cs), False

    async def _settle(self, rt: Route) -> None:
        """Write-behind: this instance's writes of the schema reach L3 before it is queried."""
        if not rt.path.lags:
            return
        timeout = self.core.config.l3_timeout_seconds
        try:
            await rt.path.settle(timeout)
        except WriteBehindError as exc:
            raise TierUnavailableError(
                f"{rt.name}: a search reads L3, and this instance's write-behind writes of "
                f"it did not reach L3 within l3_timeout ({timeout:g} s): {exc} "
                "(Q().force_l3() returns what L3 holds now)",
                tier="l3",
            ) from exc

    # -- the verbs -----------------------------------------------------------------------

    async def search(self, rt: Route, q: Q | Query | None) -> tuple[list[Any], str | None]:
        query = as_query(q)
        if query.tier == "l2":
            return await self.search_cached(rt, q)
        cq = self.compile(rt, query)
        if query.tier != "l3":  # force_l3(): what L3 holds, queued writes or not
            await self._settle(rt)
        rows, replica = await self._rows(rt, cq)
        if cq.projection:
            return rt.b.rows.projection(cq.columns, rows), "l3"
        b = rt.b
        loaded = [b.rows.from_row(r) for r in rows]
        if query.tier == "l3":  # force_l3(): what L3 holds, queued writes or not
            return [v for v, _ in loaded], "l3"
        loaded, fills = await self._overlay(rt, loaded)
        if fills and not replica:
            await self.reads.fill(rt, fills)
        return [v for v, _ in loaded], "l3"

    async def _overlay(
        self, rt: Route, loaded: list[tuple[Any, int]]
    ) -> tuple[list[tuple[Any, int]], list[tuple[Any, Any, int]]]:
        """Write-behind: each L3 row a newer queued or journaled write of its id replaces
        (or, a delete, removes). Returns the rows, and the (id, value, version) of the rows
        L3 had current (the only ones fit to fill a cache)."""
        pk = rt.b.pk_field
        queued = await self.reads.queued(rt, [getattr(v, pk) for v, _ in loaded])
        rows: list[tuple[Any, int]] = []
        fills: list[tuple[Any, Any, int]] = []
        for v, ver in loaded:
            i = getattr(v, pk)
            q = queued.get(i)
            if q is None or q[1] <= ver:
                rows.append((v, ver))
                fills.append((i, v, ver))
            elif q[0] is not None:
                rows.append((rt.b.out(q[0]), q[1]))
        return rows, fills

    async def search_cached(self, rt: Route, q: Q | Query | None) -> tuple[list[Any], str | None]:
        core, b = self.core, rt.b
        query = as_query(q)
        if not b.l2_on or query.tier == "l3":
            if query.tier == "l2":
                raise CacheMissError(f"{rt.name}: force_l2() needs an L2 (Redis) tier")
            return await self.search(rt, query)
        assert core.l2 is not None and b.codec is not None
        cq = self.compile(rt, query)
        if query.tier != "l2":  # first: a result cached before the writes reached L3 is old
            await self._settle(rt)
        generation, payload = await core.l2.get_generation(b.gen_key, b.query_prefix, cq.digest())
        if payload is not None:
            try:
                return self._decode_result(rt, payload), "l2"
            except (CodecError, StrataError, ValueError) as exc:
                core.count_error(exc)
                core.log.warning(
                    "%s: unreadable cached search result, refetching: %s", rt.name, exc
                )
        if query.tier == "l2":
            raise CacheMissError(f"{rt.name}: no cached result for this query (force_l2)")
        rows, replica = await self._rows(rt, cq)
        if cq.projection:
            result: list[Any] = b.rows.projection(cq.columns, rows)
            encoded = _RESULT_DICTS + orjson.dumps(result, default=json_default)
            if replica or any(b.cs.by_column[c].meta.encrypted for c in cq.columns):
                return result, "l3"  # plaintext of an encrypted field never goes to Redis
        else:
            loaded = [b.rows.from_row(r) for r in rows]
            loaded, fills = await self._overlay(rt, loaded)
            if replica:  # a lagging replica's rows and result are never cached
                return [v for v, _ in loaded], "l3"
            if fills:
                await self.reads.fill(rt, fills)
            result = [v for v, _ in loaded]
            codec = b.codec
            encoded = _RESULT_MODELS + msgpack.packb([codec.encode(v, ver) for v, ver in loaded])
        key = f"{b.query_prefix}{generation}:{cq.digest()}"
        await core.l2.set_raw(key, encoded, b.l2_ttl)
        return result, "l3"

    def _decode_result(self, rt: Route, payload: bytes) -> list[Any]:
        codec = rt.b.codec
        assert codec is not None
        if payload.startswith(_RESULT_DICTS):
            return cast(list[Any], orjson.loads(payload[len(_RESULT_DICTS) :]))
        if not payload.startswith(_RESULT_MODELS):
            raise CodecError("not a cached search result")
        out = []
        for item in msgpack.unpackb(payload[len(_RESULT_MODELS) :]):
            decoded = codec.decode(item)
            if isinstance(decoded, Tombstone):
                raise CodecError("tombstone inside a cached search result")
            out.append(decoded[0])
        return out

    async def count(self, rt: Route, q: Q | Query | None) -> tuple[int, str | None]:
        cq = self.compile(rt, q, count=True)
        if as_query(q).tier != "l3":
            await self._settle(rt)
        rows, _ = await self._rows(rt, cq)
        return (int(next(iter(rows[0].values()))) if rows else 0), "l3"

    async def warm(
        self, rt: Route, limit: int, progress: Callable[[int], Any] | None
    ) -> tuple[int, str | None]:
        """Load rows from L3 into L2 and L1 in batches; ``limit=0`` loads every row."""
        core, b = self.core, rt.b
        if not b.l3_on:
            raise UnsupportedOperationError(f"{rt.name} has no L3 tier to warm from")
        if limit < 0:
            raise InvalidValueError("warm_cache limit must be 0 (all) or positive")
        loaded = 0
        batch = _WARM_BATCH if not limit else min(limit, _WARM_BATCH)
        async for rows in core.l3.iterate(b.cs, batch):
            if limit:
                rows = rows[: limit - loaded]
            core.c.l3_queries += 1
            # rows a newer write-behind write of is queued or journaled for stay out
            _, items = await self._overlay(rt, [b.rows.from_row(row) for row in rows])
            await self.reads.fill(rt, items)
            loaded += len(rows)
            if progress is not None:
                progress(loaded)
            if limit and loaded >= limit:
                break
        return loaded, None


def _sqlite_arg(spec: ColumnSpec, value: Any) -> Any:
    return to_sqlite(spec.value_kind, value)
