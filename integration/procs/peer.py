"""A DataStore in its own process, driven one JSON line at a time over stdin/stdout.

    python -m integration.procs.peer '{"database_url": ..., "redis_url": ..., ...}' [MODULE]

The first argument holds the ``Config`` fields (strings and numbers only). The process
registers ``MODULE.ITEMS`` (default ``integration.procs.models``), connects, prints
``{"ok": true, "ready": true}`` and then answers each command line with one line:

    {"op": "get", "id": "a"}                  -> {"ok": true, "value": {...}}
    {"op": "get_many", "ids": ["a", "b"]}     -> {"ok": true, "value": {"a": {...}, ...}}
    {"op": "set", "value": {...}}             -> {"ok": true, "value": {...}}
    {"op": "set_many", "values": [{...}]}     -> {"ok": true, "value": null}
    {"op": "delete", "id": "a"}               -> {"ok": true, "value": null}
    {"op": "invalidate", "id": "a"}           -> {"ok": true, "value": null}
    {"op": "invalidate_all"}                  -> {"ok": true, "value": null}
    {"op": "stats"}                           -> {"ok": true, "value": {"gets": ..., ...}}
    {"op": "quit"}                            -> {"ok": true, "value": null}, then it exits

An operation that raises answers ``{"ok": false, "error": "<class name>", "message": ...}``.
Nothing else is written to stdout; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import sys
from typing import Any

from strata import Config, DataStore, Schema

DEFAULT_MODULE = "integration.procs.models"


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _run(ds: DataStore, items: Schema, command: dict[str, Any]) -> Any:
    Item = items.model
    assert Item is not None
    op = command["op"]
    if op == "get":
        return (await ds.get(Item, command["id"])).model_dump(mode="json")
    if op == "get_many":
        found = await ds.get_many(Item, command["ids"])
        return {k: v.model_dump(mode="json") for k, v in found.items()}
    if op == "set":
        return (await ds.set(Item, Item(**command["value"]))).model_dump(mode="json")
    if op == "set_many":
        await ds.set_many(Item, [Item(**v) for v in command["values"]])
        return None
    if op == "delete":
        await ds.delete(Item, command["id"])
        return None
    if op == "invalidate":
        await ds.invalidate(Item, command["id"])
        return None
    if op == "invalidate_all":
        await ds.invalidate_all(Item)
        return None
    if op == "stats":
        return dataclasses.asdict(ds.stats())
    raise ValueError(f"unknown op {op!r}")


async def main(settings: dict[str, Any], module: str = DEFAULT_MODULE) -> None:
    loop = asyncio.get_running_loop()
    items: Schema = importlib.import_module(module).ITEMS
    ds = DataStore(Config(**settings))
    ds.register(items)
    async with ds:
        _reply({"ok": True, "ready": True})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:  # the parent went away
                return
            command = json.loads(line)
            if command["op"] == "quit":
                break
            try:
                value = await _run(ds, items, command)
            except Exception as exc:
                _reply({"ok": False, "error": type(exc).__name__, "message": str(exc)})
            else:
                _reply({"ok": True, "value": value})
    _reply({"ok": True, "value": None})


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), *sys.argv[2:3]))
