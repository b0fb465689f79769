"""Key rotation: re-encrypt every encrypted column to the active key (``strata rotate-key``).

    for each schema with encrypted fields, rows in primary-key order, ``batch`` at a time:
      row's envelopes all on the active key id? ── yes ──► skip (so a rerun resumes)
                                                └─ no ──► decrypt (any configured key)
                                                          ─► encrypt (active key)
      one transaction per batch: UPDATE ... WHERE pk = ? AND col = <the ciphertext read>
      (a row rewritten meanwhile is left to its writer) ─► commit ─► drop cached copies

The key id sits in each envelope (see ``strata.crypto``), so no checkpoint is kept: an
interrupted run loses at most its current batch, and running again finishes the job. Old
keys must stay configured (``Config.encryption_key={id: key, ...}``) until it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects import postgresql, sqlite

from strata.crypto import FieldCipher
from strata.errors import ConfigError
from strata.tiers.sqlite import to_sqlite

if TYPE_CHECKING:
    from strata.datastore import DataStore
    from strata.router.core import Core, Route

__all__ = ["RotationReport", "key_id_of", "rotate_key"]

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]
_SQLITE = sqlite.dialect()
Progress = Callable[[str, int, int], None]  # (schema, rows scanned, rows in total)


@dataclass
class RotationReport:
    """Rows re-encrypted and rows already on the active key, per schema."""

    active_key_id: str
    rotated: dict[str, int] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)

    @property
    def total_rotated(self) -> int:
        return sum(self.rotated.values())


def key_id_of(blob: bytes) -> str:
    """The key id an encrypted value was sealed with (no decryption)."""
    blob = bytes(blob)
    n = blob[1] if len(blob) > 1 else 0
    return blob[2 : 2 + n].decode("ascii", "replace")


async def rotate_key(
    ds: DataStore, *, batch: int = 500, progress: Progress | None = None
) -> RotationReport:
    """Re-encrypt every encrypted column of ``ds``'s schemas to the active key."""
    core: Core = ds._core  # the router's tiers and routes (rotation is an L3 maintenance job)
    cipher = core.cipher
    if cipher is None:
        raise ConfigError("no encryption_key is configured: there is nothing to rotate")
    if batch < 1:
        raise ConfigError("batch must be at least 1")
    ds._check_open()
    report = RotationReport(cipher.active_key_id)
    for rt in list(core.routes.values()):
        if rt.b.rows.encrypted and rt.b.l3_on:
            await _rotate_schema(ds, core, rt, cipher, batch, report, progress)
    return report


async def _rotate_schema(
    ds: DataStore,
    core: Core,
    rt: Route,
    cipher: FieldCipher,
    batch: int,
    report: RotationReport,
    progress: Progress | None,
) -> None:
    total = await ds.count(rt.name)
    scanned = rotated = current = 0
    pk = rt.b.cs.pk.name
    active = cipher.active_key_id
    async for rows in core.l3.iterate(rt.b.cs, batch):
        updates: list[tuple[Any, str, bytes, bytes]] = []  # (pk, column, old, new)
        for row in rows:
            for spec in rt.b.rows.encrypted:
                blob = row.get(spec.name)
                if blob is None or key_id_of(blob) == active:
                    continue
                aad = FieldCipher.aad(rt.b.rows.aad_table, row[pk], spec.name)
                updates.append(
                    (
                        row[pk],
                        spec.name,
                        bytes(blob),
                        cipher.encrypt(cipher.decrypt(blob, aad), aad),
                    )
                )
        changed = {u[0] for u in updates}
        if updates:
            await _apply(core, rt, updates)
            for id in changed:
                await ds.invalidate(rt.name, id)
        rotated += len(changed)
        current += len(rows) - len(changed)
        scanned += len(rows)
        if progress is not None:
            progress(rt.name, scanned, max(total, scanned))
    report.rotated[rt.name] = rotated
    report.current[rt.name] = current


async def _apply(core: Core, rt: Route, updates: list[tuple[Any, str, bytes, bytes]]) -> None:
    """One transaction; each column only if it still holds the ciphertext that was read."""
    dialect = core.l3.dialect
    prep = _PG.identifier_preparer if dialect == "postgresql" else _SQLITE.identifier_preparer
    table = prep.format_table(rt.b.cs.table)
    pk = prep.quote(rt.b.cs.pk.name)
    ph = ["$1", "$2", "$3"] if dialect == "postgresql" else ["?", "?", "?"]
    handle = await core.l3.begin()
    try:
        for id, column, old, new in updates:
            col = prep.quote(column)
            sql = (
                f"UPDATE {table} SET {col} = {ph[0]} WHERE {pk} = {ph[1]} AND {col} = {ph[2]} "
                f"RETURNING {pk}"
            )
            await core.l3.fetch(sql, [new, _wire(dialect, rt, id), old], tx=handle)
    except BaseException:
        await handle.rollback()
        raise
    await handle.commit()


def _wire(dialect: str, rt: Route, id: Any) -> Any:
    """The primary key as the driver takes it (SQLite stores some kinds as text)."""
    return to_sqlite(rt.b.cs.pk.value_kind, id) if dialect == "sqlite" else id
