"""The seam between the router's write-behind path and the Redis journal (strata/journal.py).

Each function is one call the router makes; ``ds`` is the DataStore (the router), used for
its tiers, schemas, counters and logger only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from strata.config import WriteMode
from strata.errors import WriteBehindError
from strata.journal import DeadLetterEntry, Journal, JournalWrite
from strata.runtime import TOMBSTONE_TTL, SchemaRuntime, call_hook
from strata.schema import VERSION_COLUMN

if TYPE_CHECKING:
    from strata.datastore import DataStore


def _secs(value: Any) -> float:
    return float(value.total_seconds() if hasattr(value, "total_seconds") else value)


def start(ds: DataStore) -> Journal | None:
    """The journal of a store with Redis (None when embedded: the in-process queue stays)."""
    l2 = ds._l2
    if l2 is None or not l2.available:
        return None
    cfg = ds.config
    journal = Journal(
        l2,
        consumer=cfg.instance_id,
        apply=ds._apply_journal,
        on_refused=ds._on_journal_refused,
        claim_after=_secs(cfg.write_behind_claim_after),
        interval=_secs(cfg.write_behind_flush_interval),
        batch=cfg.write_behind_flush_threshold,
        retry_base=_secs(cfg.write_behind_retry_base),
        retry_max=_secs(cfg.write_behind_retry_max),
        max_pending=cfg.write_behind_max_pending,
        wait_timeout=_secs(cfg.write_behind_wait_timeout),
        tombstone_ttl=TOMBSTONE_TTL,
        logger=ds._log,
        on_error=ds._count_error,
    )
    for rt in ds._schemas.values():
        journaled(journal, rt)
    journal.start()
    return journal


def journaled(journal: Journal, rt: SchemaRuntime) -> bool:
    """Write-behind schemas with L2 and L3 go through the journal (registered on first use)."""
    if journal.has(rt.name):
        return True
    if rt.mode is not WriteMode.WRITE_BEHIND or not rt.l3_on or not rt.l2_on:
        return False
    journal.add(rt.name, rt.gen_key.removesuffix(":gen"), rt.l2_ttl)
    return True


async def write(
    ds: DataStore, rt: SchemaRuntime, prepared: dict[Any, BaseModel]
) -> list[tuple[Any, BaseModel, int]]:
    """Journal sets: acknowledged once L2 value + journal entry are in Redis."""
    assert ds._journal is not None and rt.codec is not None
    items = []
    entries = []
    for i, v in prepared.items():
        version = ds._next_version()
        payload = rt.codec.encode(v, version)
        entries.append((rt.key(i), payload, version, "set", i, v.model_dump_json()))
        items.append((i, v, version))
    await ds._journal.append(rt.name, entries)
    return items


async def delete(ds: DataStore, rt: SchemaRuntime, ids: list[Any]) -> int:
    """Journal deletes: the L2 tombstone and the entry in one script; returns the version."""
    assert ds._journal is not None and rt.codec is not None
    version = ds._next_version()
    tomb = rt.codec.tombstone(version)
    await ds._journal.append(rt.name, [(rt.key(i), tomb, version, "delete", i, None) for i in ids])
    return version


async def apply(ds: DataStore, rt: SchemaRuntime, writes: list[JournalWrite]) -> None:
    """Apply coalesced entries to L3, version-guarded both ways: replaying changes nothing."""
    sets = []
    for w in writes:
        if w.op == "set" and w.row is not None:
            model = rt.cs.model.model_validate_json(w.row)
            row = rt.to_row(model, rt.check_id(w.id))
            row[VERSION_COLUMN] = w.version
            sets.append(row)
    deletes = {rt.check_id(w.id): w.version for w in writes if w.op == "delete"}
    if sets:
        ds._c.l3_queries += 1
        await ds._l3.upsert_many(rt.cs, sets, versioned=True, returning=False)
    if deletes:
        ds._c.l3_queries += 1
        stored = await ds._l3.get_many(rt.cs, list(deletes))
        older = [i for i, v in deletes.items() if i in stored and stored[i][VERSION_COLUMN] < v]
        if older:
            await ds._l3.delete_many(rt.cs, older)
    if rt.l2_on:  # a search cached before the flush did not see these rows
        await ds._bump_generation(rt)


async def refused(ds: DataStore, letter: DeadLetterEntry) -> None:
    """L3 refused a row: it is a dead letter; caches drop it so reads show what L3 holds."""
    ds._c.dead_letters += 1
    ds._log.error("write-behind: L3 refused %s %r: %s", letter.schema, letter.id, letter.error)
    rt = ds._schemas.get(letter.schema)
    if rt is None:
        return
    id = rt.check_id(letter.id)
    await ds._forget_cached(rt, [id])
    if rt.hooks.on_write_error is not None:
        model = rt.cs.model.model_validate_json(letter.row) if letter.row else None
        await call_hook(rt.hooks.on_write_error, id, model, WriteBehindError(letter.error))


def _pick(ds: DataStore, schema: Any) -> str | None:
    return None if schema is None else ds._rt(schema).name


async def dead_letters(ds: DataStore, schema: Any) -> list[DeadLetterEntry]:
    if ds._journal is None:
        return []
    name = _pick(ds, schema)
    if name is not None and not ds._journal.has(name):
        return []
    return await ds._journal.dead_letters(name)


async def _chosen(ds: DataStore, schema: Any, ids: Iterable[Any] | None) -> list[DeadLetterEntry]:
    letters = await dead_letters(ds, schema)
    if ids is None:
        return letters
    wanted = {str(i) for i in ids}
    return [d for d in letters if str(d.id) in wanted]


async def retry(ds: DataStore, schema: Any, ids: Iterable[Any] | None) -> int:
    """Journal each chosen dead letter again as a new write, then forget it."""
    letters = await _chosen(ds, schema, ids)
    for d in letters:
        rt = ds._schemas[d.schema]
        if d.op == "set" and d.row is not None:
            model = rt.cs.model.model_validate_json(d.row)
            await ds.set(rt.name, model)
        else:
            await ds.delete(rt.name, rt.check_id(d.id))
    if ds._journal is not None:
        await ds._journal.forget_dead_letters(letters)
    return len(letters)


async def drop(ds: DataStore, schema: Any, ids: Iterable[Any] | None) -> int:
    letters = await _chosen(ds, schema, ids)
    if ds._journal is None:
        return 0
    return await ds._journal.forget_dead_letters(letters)


def warn_if_embedded(ds: DataStore, rt: SchemaRuntime) -> None:
    """Without Redis, write-behind queues in process: say at register what a crash loses."""
    if rt.mode is WriteMode.WRITE_BEHIND and rt.l3_on and ds._l2 is None:
        ds._log.warning(
            "%s: write-behind without Redis keeps its queue in this process; a crash loses up "
            "to write_behind_flush_interval of acknowledged writes (configure redis_url for "
            "the crash-safe journal)",
            rt.name,
        )
