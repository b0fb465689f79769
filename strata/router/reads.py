"""The read path: ``get`` / ``get_many`` / ``exists``, and the fills every read makes.

    L1 hit ─────────────────────────────────────────────► copy ─► caller
    L1 miss ─► negative cache hit ─► NotFoundError
            └► write path has it queued (write-behind) ─► copy ─► caller
            └► L2 hit ─► fill L1 (min(remaining, L1 ttl), version-checked) ─► copy ─► caller
               L2 miss ─► single flight: one L2 lookup + one L3 load per key per process
                          ├► row ─► fill L2 (only if newer) and L1 ─► copy ─► caller
                          └► none ─► remember briefly (negative cache) ─► NotFoundError

Every read returns ``(result, tier)``: the tier that served it, for the Observer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pydantic import BaseModel

from strata.codec import Tombstone
from strata.config import seconds
from strata.errors import CodecError, NotFoundError, StrataError, TierUnavailableError
from strata.router.core import Core, Route
from strata.schema import ttl_min

__all__ = ["Reads"]

Queued = tuple[BaseModel | None, int]


def _older(queued: Queued | None, version: int) -> bool:
    """A queued write newer than this version exists."""
    return queued is not None and queued[1] > version


_PRIVATE = frozenset({"l2", "l3"})  # tiers whose loaded value nobody else holds


class Reads:
    def __init__(self, core: Core) -> None:
        # Callers waiting on another's load of a key (single flight), by key.
        self._joined: dict[tuple[str, Any], int] = {}
        self.core = core
        self._negative_ttl = seconds(core.config.negative_ttl, "negative_ttl") or 0.0

    def l1_hit(self, rt: Route, id: Any, force_l3: bool) -> BaseModel | None:
        """The L1 hit of ``get`` without a coroutine (no get hooks); None otherwise."""
        l1 = rt.l1
        b = rt.b
        if l1 is None or force_l3 or b.get_hooks:
            return None
        hit = l1.get(b.check_id(id))
        if hit is None:
            return None
        c = self.core.c
        c.gets += 1
        c.l1_hits += 1
        return b.copy_out(hit)

    async def get(self, rt: Route, id: Any, force_l3: bool) -> tuple[BaseModel, str]:
        b = rt.b
        c = self.core.c
        c.gets += 1
        id = b.check_id(id)
        hooks = b.hooks
        if hooks.before_get is not None:
            await self.core.hooks.call(hooks.before_get, id)
        if not force_l3:
            l1 = rt.l1
            if l1 is not None:
                hit = l1.get(id)
                if hit is not None:
                    out = b.copy_out(hit)
                    if hooks.after_get is not None:
                        out = await self.deliver(rt, out)
                    return out, "l1"
            if rt.negative:
                expires = rt.negative.get(id)
                if expires is not None:
                    if expires > time.monotonic():
                        c.negative_hits += 1
                        c.misses += 1
                        raise NotFoundError(rt.name, id)
                    del rt.negative[id]
        loaded, tier = await self._load(rt, id, force_l3)
        if loaded is None:
            c.misses += 1
            raise NotFoundError(rt.name, id)
        if tier == "l3":
            c.l3_hits += 1
        elif tier == "l2":
            c.l2_hits += 1
        else:
            c.l1_hits += 1
        return await self.deliver(rt, loaded), tier

    async def deliver(self, rt: Route, value: BaseModel) -> BaseModel:
        after_get = rt.b.hooks.after_get
        if after_get is not None:
            replaced = await self.core.hooks.call(after_get, value)
            if replaced is not None:
                return cast(BaseModel, replaced)
        return value

    async def l2_get(
        self, rt: Route, ids: Sequence[Any], versions: dict[Any, int] | None = None
    ) -> tuple[dict[Any, BaseModel], set[Any]]:
        """L2 lookups for ids (one round trip); hits fill L1. Returns caller copies, and the
        ids L2 holds a tombstone for (recently deleted: not to be loaded from L3).
        ``versions``, when given, gets the version of every value and tombstone found."""
        core, b = self.core, rt.b
        assert core.l2 is not None and b.codec is not None
        answers = await core.l2.get_many([b.key(i) for i in ids])
        out: dict[Any, BaseModel] = {}
        gone: set[Any] = set()
        for id, (payload, remaining) in zip(ids, answers, strict=True):
            if payload is None:
                continue
            try:
                decoded = b.codec.decode(payload)
            except (CodecError, StrataError) as exc:
                core.count_error(exc)
                core.log.warning(
                    "%s: unreadable L2 payload for %r, refetching: %s", rt.name, id, exc
                )
                continue
            if isinstance(decoded, Tombstone):
                core.clock.observe(decoded.version)
                gone.add(id)
                if versions is not None:
                    versions[id] = decoded.version
                rt.path.saw(id, decoded.version)
                continue
            value, version = decoded
            core.clock.observe(version)  # a lagging clock catches up with what it reads
            rt.path.saw(id, version)
            if versions is not None:
                versions[id] = version
            queued = rt.path.own_write(id)  # held ones too: L2 answered
            newer_queued = queued is not None and queued[1] > version
            if rt.l1 is not None and core.l1_fillable() and not newer_queued:
                rt.l1.set(id, b.l1_copy(value), version, ttl=ttl_min(remaining, b.l1_ttl))
            out[id] = value  # freshly decoded: owned by nobody else
        return out, gone

    async def queued(self, rt: Route, ids: Sequence[Any]) -> dict[Any, Queued]:
        """Writes of these ids L3 may not have yet (write-behind): this process's queue,
        then the Redis journal (every instance's), the newer of the two per id."""
        path = rt.path
        if not path.lags:
            return {}
        # The journal first: reading it drops this instance's held writes a newer one of
        # another instance superseded (or a peer flushed), so pending() no longer offers them.
        out = await path.journaled(rt, ids)
        for i in ids:
            q = path.pending(i)
            if q is not None and (i not in out or out[i][1] < q[1]):
                out[i] = q
        return out

    async def _load(self, rt: Route, id: Any, force_l3: bool) -> tuple[BaseModel | None, str]:
        """A miss in L1: L2, then L3, once per key per process at a time (single flight):
        concurrent misses of one key share one L2 lookup and at most one L3 query. Fills
        the faster tiers. Returns the caller's copy (or None) and the tier that had it."""
        core, b = self.core, rt.b
        key = (rt.name, id)
        if not force_l3:
            pending = core.inflight.get(key)
            if pending is not None:
                self._joined[key] = self._joined.get(key, 0) + 1
                await asyncio.wait([pending])
                if not pending.cancelled():
                    shared, tier = pending.result()
                    return (None if shared is None else b.out(shared)), tier
                # the loader was cancelled: load for ourselves
            else:
                # A load of this key may have finished while this caller was on its way:
                # its result is in L1 (or the negative cache) now; do not load it again.
                hit = rt.l1.get(id) if rt.l1 is not None else None
                if hit is not None:
                    return b.out(hit), "l1"
                if rt.negative.get(id, 0.0) > time.monotonic():
                    return None, "miss"
        fut: asyncio.Future[tuple[BaseModel | None, str]] = (
            asyncio.get_running_loop().create_future()
        )
        if not force_l3:
            core.inflight[key] = fut
        try:
            value, tier = await self._load_tiers(rt, id, force_l3)
            fut.set_result((value, tier))
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: joiners get it through their own await
            raise
        finally:
            if core.inflight.get(key) is fut:
                del core.inflight[key]
            joined = self._joined.pop(key, 0)
        if value is None:
            return None, tier
        # Freshly decoded (L2) or built from its row (L3), L1 holding a copy of its own:
        # the caller may have this one, unless others share the flight (they copy it).
        return (value if not joined and tier in _PRIVATE else b.out(value)), tier

    async def _load_tiers(self, rt: Route, id: Any, force_l3: bool) -> tuple[BaseModel | None, str]:
        """``force_l3``: what L3 holds, even while a newer write-behind write is queued."""
        core, b = self.core, rt.b
        epoch = rt.epoch
        if not force_l3:
            # This process's own queued write (write-behind) wins unless L2 holds a newer
            # one (another instance's): one version space, the higher version wins. Asked
            # after L2: with Redis failing, a journaled write held here is no longer offered
            # (another instance's newer one may be in L3: check_l3 compares them).
            versions: dict[Any, int] = {}
            found: dict[Any, BaseModel] = {}
            gone: set[Any] = set()
            if b.l2_on:
                found, gone = await self.l2_get(rt, [id], versions)
            # L2 answered: an own write newer than its copy wins, held ones included
            queued = rt.path.own_write(id) if id in versions else rt.path.pending(id)
            if b.l2_on and not found and not gone and rt.path.lags:
                # the journal is the truth for keys not in L3 yet (also when their L2
                # value was invalidated or evicted)
                queued = (await self.queued(rt, [id])).get(id)
            if queued is not None and queued[1] > versions.get(id, -1):
                return queued[0], "l1"
            if id in found:
                return found[id], "l2"
            if gone:  # a versioned tombstone: deleted after any row L3 may still hold
                return None, "gone"
        if not b.l3_on:
            return None, "miss"
        if core.lease is not None and b.l2_on and not force_l3:
            return await self._leased_load(rt, id, epoch)
        return await self._load_l3(rt, id, force_l3, epoch)

    async def _leased_load(self, rt: Route, id: Any, epoch: int) -> tuple[BaseModel | None, str]:
        """Cold miss: the holder of the key's Redis lease queries L3 and fills L2; other
        instances wait for that L2 value (``strata.cache.lease``), so a stampede of N
        instances costs one L3 query."""
        assert self.core.lease is not None

        async def probe() -> tuple[BaseModel | None, str] | None:
            found, gone = await self.l2_get(rt, [id])
            return (found[id], "l2") if id in found else ((None, "gone") if gone else None)

        return await self.core.lease.run(
            rt.b.key(id) + "\x00lease", probe, lambda: self._load_l3(rt, id, False, epoch)
        )

    async def _load_l3(
        self, rt: Route, id: Any, force_l3: bool, epoch: int
    ) -> tuple[BaseModel | None, str]:
        core, b = self.core, rt.b
        core.c.l3_queries += 1
        try:
            rows = await core.l3.get_many(b.cs, [id])
        except TierUnavailableError:
            own = None if force_l3 else rt.path.own_write(id)
            if own is None:
                raise
            return own[0], "l1"  # L3 away: this instance's own write (read your writes)
        if rows:
            sealed = b.rows.sealed(rows[0])
            value, version = b.rows.from_row(rows[0])
            if not force_l3:
                own = rt.path.check_l3(rt, id, version)
                if own is not None:
                    return own[0], "l1"
                await self.fill(rt, [(id, value, version)], {id: sealed})
            return value, "l3"
        if not force_l3:
            deleted = (await self._deleted(rt, [id])).get(id)
            own = rt.path.check_l3(rt, id, None, deleted)
            if own is not None:
                return own[0], "l1"
        if rt.epoch == epoch and not force_l3:
            rt.negative[id] = time.monotonic() + self._negative_ttl
        return None, "miss"

    async def fill(
        self,
        rt: Route,
        items: Sequence[tuple[Any, BaseModel, int]],
        sealed: Mapping[Any, dict[str, bytes]] | None = None,
    ) -> None:
        """Promote L3 values into L2 and L1; both refuse to replace a newer version.
        ``sealed`` holds the ciphertexts L3 returned, reused in L2 rather than re-encrypted."""
        l2, b = self.core.l2, rt.b
        if rt.path.lags:  # an L3 row older than a queued write never fills a cache
            items = [it for it in items if not _older(rt.path.pending(it[0]), it[2])]
        if b.l2_on and l2 is not None and b.codec is not None:
            codec = b.codec
            cts = sealed or {}
            written = await l2.set_many(
                [(b.key(i), codec.encode(v, ver, cts.get(i)), b.l2_ttl) for i, v, ver in items]
            )
            # A fill Redis refused (it holds a newer version, or could not be reached) is
            # not kept in L1 either: L1 may have forgotten the newer write's tombstone.
            items = [item for item, ok in zip(items, written, strict=True) if ok]
        l1 = rt.l1
        if l1 is not None and self.core.l1_fillable():
            ttl = ttl_min(b.l2_ttl if b.l2_on else None, b.l1_ttl)
            for i, v, ver in items:
                l1.set(i, b.l1_copy(v), ver, ttl=ttl)

    async def get_many(self, rt: Route, ids: Any) -> tuple[dict[Any, BaseModel], str | None]:
        core, b = self.core, rt.b
        c = core.c
        wanted = list(dict.fromkeys(b.check_id(i) for i in ids))
        c.gets += len(wanted)
        if b.hooks.before_get is not None:  # as get does, for every id
            for i in wanted:
                await core.hooks.call(b.hooks.before_get, i)
        epoch = rt.epoch
        found: dict[Any, BaseModel] = {}
        missing = wanted
        tier: str | None = None
        if rt.l1 is not None:
            hits = rt.l1.get_many(missing)
            for i, v in hits.items():
                found[i] = b.copy_out(v)
            c.l1_hits += len(hits)
            missing = [i for i in missing if i not in hits]
            tier = "l1" if hits else None
        if missing and rt.negative:
            missing = self._not_negative(rt, missing)
        if missing and b.l2_on:
            versions: dict[Any, int] = {}
            hits2, gone = await self.l2_get(rt, missing, versions)
            found.update(hits2)
            c.l2_hits += len(hits2)
            missing = [i for i in missing if i not in hits2 and i not in gone]
            tier = "l2" if hits2 else tier
            if rt.path.lags:
                self._newer_pending(rt, versions, found)
        if missing and rt.path.lags:  # queued or journaled: the truth for keys not in L3 yet
            queued = await self.queued(rt, missing)
            missing = [i for i in missing if i not in queued]
            for i, (held, _) in queued.items():
                if held is not None:
                    found[i] = rt.b.out(held)
        if missing and b.l3_on:
            c.l3_queries += 1
            rows = await core.l3.get_many(b.cs, missing)
            sealed = {r[b.pk_column]: b.rows.sealed(r) for r in rows} if b.rows.encrypted else None
            loaded = [b.rows.from_row(r) for r in rows]
            items = [(getattr(v, b.pk_field), v, ver) for v, ver in loaded]
            if rt.path.lags:  # never back in time while Redis is away (or lost its data)
                have = {i for i, _, _ in items}
                deleted = await self._deleted(rt, [i for i in missing if i not in have])
                items, own = self._own_newer(rt, missing, items, deleted)
                found.update({i: v for i, v in own.items() if v is not None})
            await self.fill(rt, items, sealed)
            for i, v, _ in items:
                found[i] = v
            c.l3_hits += len(items)
            tier = "l3"
            if rt.epoch == epoch:  # as get does: L3 has none of these, remembered briefly
                until = time.monotonic() + self._negative_ttl
                for i in missing:
                    if i not in found:
                        rt.negative[i] = until
        c.misses += len(wanted) - len(found)
        if b.hooks.after_get is not None:
            for i in list(found):
                found[i] = await self.deliver(rt, found[i])
        return {i: found[i] for i in wanted if i in found}, tier

    def _not_negative(self, rt: Route, ids: list[Any]) -> list[Any]:
        """The ids the negative cache does not answer (a missing id L3 was just asked for)."""
        now = time.monotonic()
        rest = []
        for i in ids:
            expires = rt.negative.get(i)
            if expires is None:
                rest.append(i)
            elif expires > now:
                self.core.c.negative_hits += 1
            else:
                del rt.negative[i]
                rest.append(i)
        return rest

    async def _deleted(self, rt: Route, absent: Sequence[Any]) -> dict[Any, int]:
        """L3's delete versions of the ids it has no row of, where the write path cannot
        tell a deleted row from a write Redis lost (``WritePath.unsure``); else empty."""
        unsure = [i for i in absent if rt.path.unsure(i)]
        if not unsure:
            return {}
        self.core.c.l3_queries += 1
        return await self.core.l3.deleted_versions(rt.b.cs, unsure)

    @staticmethod
    def _own_newer(
        rt: Route,
        ids: Sequence[Any],
        items: list[tuple[Any, BaseModel, int]],
        deleted: Mapping[Any, int],
    ) -> tuple[list[tuple[Any, BaseModel, int]], dict[Any, BaseModel | None]]:
        """The L3 rows of ids this instance has no newer own write of (fit to fill), and
        its newer own writes (check_l3) of the others."""
        have = {i: (v, ver) for i, v, ver in items}
        rows = []
        own: dict[Any, BaseModel | None] = {}
        for i in ids:
            row = have.get(i)
            newer = rt.path.check_l3(rt, i, None if row is None else row[1], deleted.get(i))
            if newer is not None:
                own[i] = newer[0]
            elif row is not None:
                rows.append((i, row[0], row[1]))
        return rows, own

    @staticmethod
    def _newer_pending(rt: Route, versions: Mapping[Any, int], found: dict[Any, BaseModel]) -> None:
        """L2 answered these ids (value or tombstone, at these versions): this process's
        queued write of one wins if it is newer (also a journaled one held while Redis is
        not trusted: the L2 copy it is newer than came from L3 or a write, not later)."""
        for i in versions:
            queued = rt.path.own_write(i)
            if queued is None or queued[1] <= versions.get(i, -1):
                continue
            if queued[0] is None:
                found.pop(i, None)
            else:
                found[i] = rt.b.out(queued[0])

    async def exists(self, rt: Route, id: Any) -> tuple[bool, str | None]:
        """Whether a row with this id exists (L1, then L2, then L3; fills nothing)."""
        core, b = self.core, rt.b
        id = b.check_id(id)
        if rt.l1 is not None and id in rt.l1:
            return True, "l1"
        if b.l2_on:
            assert core.l2 is not None and b.codec is not None
            ((payload, _),) = await core.l2.get_many([b.key(id)])
            if payload is not None:
                try:
                    decoded = b.codec.decode(payload)
                except (CodecError, StrataError) as exc:
                    core.count_error(exc)
                else:
                    return not isinstance(decoded, Tombstone), "l2"
        queued = rt.path.pending(id)
        if queued is not None:
            return queued[0] is not None, "l1"
        if rt.path.lags and b.l2_on:
            journaled = await rt.path.journaled(rt, [id])
            if id in journaled:
                return journaled[id][0] is not None, "l2"
        if not b.l3_on:
            return False, None
        core.c.l3_queries += 1
        return bool(await core.l3.exists_many(b.cs, [id])), "l3"
