"""One DataStore used across several ``asyncio.run()`` calls, on PostgreSQL + Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from tests.test_event_loops import error_lines, run_script


def test_one_store_serves_three_asyncio_runs_on_postgres_and_redis(
    settings: dict[str, Any], tmp_path: Path
) -> None:
    done = run_script(settings, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["read", "1", "read", "2"]
    assert error_lines(done.stderr) == [], done.stderr


async def test_write_behind_writes_left_by_one_asyncio_run_reach_postgres_in_the_next(
    settings: dict[str, Any], tmp_path: Path, pg_conn: asyncpg.Connection
) -> None:
    done = run_script(settings, tmp_path, "WRITE_BEHIND")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["read", "1", "read", "2"]
    assert error_lines(done.stderr) == [], done.stderr
    row = await pg_conn.fetchrow("SELECT n FROM items WHERE id = 'a'")
    assert row is not None
    assert row["n"] == 2
