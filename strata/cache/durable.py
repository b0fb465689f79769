"""The durable tier of the keyed cache: the ``_strata_cache`` table on the L3 database.

    _strata_cache(key TEXT PRIMARY KEY, value BYTES, expires_at FLOAT NULL, _strata_version)

It is an ordinary internal schema (compiled like any other, so ``migrate()`` creates it
additively and compares it like the others: never drift), used through the L3 tier's
public methods (``get_many`` / ``upsert_many`` / ``delete_many`` / ``fetch``). Expired rows
are invisible at once and purged by the DataStore every ``Config.cache_purge_interval``.
Keys are ``{tag}:{path}`` without generations: a wildcard invalidation deletes the rows
under its prefix (an indexed range on the primary key is not available portably, so this is
a prefix match; such invalidations are rare next to reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from strata.config import Config
from strata.errors import StrataError
from strata.fields import Field
from strata.schema import CompiledSchema, PostgresPolicy, Schema, compile_schema
from strata.tiers.base import L3Tier

__all__ = ["TABLE", "Durable", "compile_table"]

TABLE = "_strata_cache"


class CacheRow(BaseModel):
    key: str = Field(primary_key=True)
    value: bytes = b""
    expires_at: float | None = None


def compile_table(config: Config, metadata: Any) -> CompiledSchema:
    return compile_schema(
        Schema(name=TABLE, model=CacheRow, l1=None, l2=None, l3=PostgresPolicy()),
        config,
        has_cipher=False,
        metadata=metadata,
    )


class Durable:
    def __init__(self, l3: L3Tier, cs: CompiledSchema) -> None:
        self.l3 = l3
        self.cs = cs
        self._mark = "$" if l3.dialect == "postgresql" else "?"

    def _sql(self, text: str) -> str:
        if self._mark == "?":
            for n in range(9, 0, -1):
                text = text.replace(f"${n}", f"?{n}")
        return text.replace("{t}", self.cs.qualified_table)

    async def exists(self) -> bool:
        """Whether the table is there (``migrate()`` creates it)."""
        try:
            await self.l3.fetch(self._sql("SELECT key FROM {t} WHERE 1 = 0"), [])
        except StrataError:
            return False
        return True

    async def get_many(
        self, keys: Sequence[str], now: float
    ) -> dict[str, tuple[bytes, float | None]]:
        rows = await self.l3.get_many(self.cs, list(keys))
        out: dict[str, tuple[bytes, float | None]] = {}
        for row in rows:
            expires = row["expires_at"]
            if expires is None or expires > now:
                out[row["key"]] = (bytes(row["value"]), expires)
        return out

    async def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        rows = [{"key": k, "value": v, "expires_at": e} for k, v, e in items]
        await self.l3.upsert_many(self.cs, rows)

    async def add(self, key: str, value: bytes, expires: float | None, now: float) -> bool:
        sql = self._sql(
            "INSERT INTO {t} (key, value, expires_at, _strata_version) VALUES ($1, $2, $3, 0) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at "
            "WHERE {t}.expires_at IS NOT NULL AND {t}.expires_at <= $4 RETURNING key"
        )
        return bool(await self.l3.fetch(sql, [key, value, expires, now]))

    async def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            await self.l3.delete_many(self.cs, list(keys))

    async def delete_prefix(self, prefix: str) -> int:
        sql = self._sql("DELETE FROM {t} WHERE substr(key, 1, $2) = $1 RETURNING key")
        return len(await self.l3.fetch(sql, [prefix, len(prefix)]))

    async def purge(self, now: float) -> int:
        sql = self._sql("DELETE FROM {t} WHERE expires_at <= $1 RETURNING key")
        return len(await self.l3.fetch(sql, [now]))
