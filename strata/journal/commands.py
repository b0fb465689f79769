"""``strata dead-letters list|retry|drop``: the command's work, given a connected store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strata.datastore import DataStore

__all__ = ["dead_letters"]


async def dead_letters(
    store: DataStore, action: str, schema: str | None, ids: list[str] | None, as_json: bool
) -> str:
    """What the command prints: counts for retry and drop, the letters for list."""
    if action == "retry":
        return f"retried {await store.retry_dead_letters(schema, ids)} dead letter(s)"
    if action == "drop":
        return f"dropped {await store.drop_dead_letters(schema, ids)} dead letter(s)"
    rows: list[dict[str, Any]] = [
        {
            "schema": d.write.schema,
            "id": str(d.write.id),
            "op": d.write.op,
            "version": d.write.version,
            "error": f"{type(d.error).__name__}: {d.error}",
            "failed_at": datetime.fromtimestamp(d.failed_at, UTC).isoformat(timespec="seconds"),
        }
        for d in await store.dead_letters(schema, ids)
    ]
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return "no dead letters"
    return "\n".join(
        f"{r['schema']}\t{r['id']}\t{r['op']}\t{r['failed_at']}\t"
        + str(r["error"]).replace("\n", " ")[:120]
        for r in rows
    )
