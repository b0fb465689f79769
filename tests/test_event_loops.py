"""One DataStore used across several ``asyncio.run()`` calls in one script (embedded)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pydantic import BaseModel
    from strata import Config, DataStore, Field, Schema, WriteMode

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    class Item(BaseModel):
        id: str = Field(primary_key=True)
        n: int = 0

    ds = DataStore(Config(**CONFIG))
    ds.register(Schema(name="items", model=Item, write_mode=WriteMode[MODE]))

    async def setup() -> None:
        await ds.connect()
        await ds.migrate()
        await ds.set(Item, Item(id="a", n=1))

    async def use() -> None:
        # write-behind with Redis: the journaled value is in L2 (no TTL) until PostgreSQL has it
        print("read", (await ds.get(Item, "a", force_l3=MODE != "WRITE_BEHIND")).n)
        await ds.set(Item, Item(id="a", n=2))
        print("read", (await ds.get(Item, "a")).n)

    async def finish() -> None:
        await ds.close()

    asyncio.run(setup())
    asyncio.run(use())
    asyncio.run(finish())
    """
)


def run_script(
    config: dict[str, object], cwd: Path, mode: str = "WRITE_THROUGH"
) -> subprocess.CompletedProcess[str]:
    """Run SCRIPT with ``Config(**config)`` and a schema in write mode ``mode``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    return subprocess.run(
        [sys.executable, "-c", f"CONFIG = {config!r}\nMODE = {mode!r}\n" + SCRIPT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(("ERROR", "CRITICAL", "Traceback")) or "Error" in line
    ]


def test_one_store_serves_three_asyncio_runs_on_sqlite(tmp_path: Path) -> None:
    done = run_script({"database_url": f"sqlite:///{tmp_path / 'loops.db'}"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["read", "1", "read", "2"]
    assert error_lines(done.stderr) == [], done.stderr


def test_write_behind_writes_left_by_one_asyncio_run_are_flushed_by_the_next(
    tmp_path: Path,
) -> None:
    db = tmp_path / "loops.db"
    done = run_script({"database_url": f"sqlite:///{db}"}, tmp_path, "WRITE_BEHIND")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["read", "1", "read", "2"]
    assert error_lines(done.stderr) == [], done.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT n FROM items WHERE id = 'a'").fetchall() == [(2,)]
