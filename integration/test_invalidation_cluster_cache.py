"""On a Redis Cluster invalidations travel on sharded pub/sub, one channel per schema: the
keyed cache's namespaces (whose messages name ``cache:<namespace>``) must be heard too, or
another instance keeps serving a value from its memory after it was replaced."""

from __future__ import annotations

from typing import Any

from integration.procs import eventually
from integration.stacks import _cluster_url
from strata import Config, DataStore


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    cfg = {**settings, "redis_url": _cluster_url()}
    cfg.pop("database_url")
    cfg.pop("database_schema")
    return cfg


async def test_a_keyed_cache_set_drops_the_value_from_another_instance_on_a_cluster(
    settings: dict[str, Any], tmp_path: Any
) -> None:
    cfg = {**_settings(settings), "database_url": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    async with DataStore(Config(**cfg)) as a, DataStore(Config(**cfg)) as b:
        for ns in (a.cache, a.cache.namespace("users", version="v2")):
            other = b.cache if ns is a.cache else b.cache.namespace("users", version="v2")
            await ns.set("k", 1)
            assert await other.get("k") == 1  # now in b's memory as well
            await ns.set("k", 2)

            async def b_reads_2(other: Any = other) -> bool:
                return bool(await other.get("k") == 2)

            await eventually(b_reads_2, timeout=10.0)
