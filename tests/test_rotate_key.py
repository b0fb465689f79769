"""``strata rotate-key``: every encrypted column ends on the active key, resumably."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, errors, generate_key
from strata.cli import main
from strata.rotate import key_id_of, rotate_key

OLD, NEW = generate_key(), generate_key()

APP = """
from pydantic import BaseModel
from strata import Config, DataStore, Field, Schema

class Secret(BaseModel):
    id: str = Field(primary_key=True)
    token: str = Field(default="", encrypted=True)
    pin: int | None = Field(default=None, encrypted=True)
    note: str = ""

ds = DataStore(Config(database_url={url!r}, encryption_key={keys!r}, encryption_key_id="new"))
ds.register(Schema(name="secrets", model=Secret))
"""


class Secret(BaseModel):
    id: str = Field(primary_key=True)
    token: str = Field(default="", encrypted=True)
    pin: int | None = Field(default=None, encrypted=True)
    note: str = ""


def store(db: Path, keys: dict[str, str], active: str) -> DataStore:
    ds = DataStore(
        Config(database_url=f"sqlite:///{db}", encryption_key=keys, encryption_key_id=active)
    )
    ds.register(Schema(name="secrets", model=Secret))
    return ds


def key_ids(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT token, pin FROM secrets ORDER BY id").fetchall()
    return [(key_id_of(t), key_id_of(p) if p is not None else None) for t, p in rows]


ROWS = 35


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database whose rows were all written with key 'old'."""
    path = tmp_path / "secrets.db"
    asyncio.run(fill(path))
    return path


async def fill(path: Path) -> None:
    async with store(path, {"old": OLD}, "old") as ds:
        await ds.migrate()
        await ds.set_many(
            Secret,
            [Secret(id=f"s{i:02}", token=f"t{i}", pin=i if i % 2 else None) for i in range(ROWS)],
        )
    return path


@pytest.fixture
def app(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"rot_{uuid.uuid4().hex[:8]}"
    source = APP.format(url=f"sqlite:///{db}", keys={"old": OLD, "new": NEW})
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:ds"


async def read_all_with_only_the_new_key(db: Path) -> list[Secret]:
    async with store(db, {"new": NEW}, "new") as ds:
        found = await ds.get_many(Secret, [f"s{i:02}" for i in range(ROWS)])
    return [found[k] for k in sorted(found)]  # type: ignore[misc]


def test_rotate_key_moves_every_encrypted_column_to_the_active_key(
    db: Path, app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rotate-key", "--app", app, "--batch", "10"]) == 0
    captured = capsys.readouterr()
    assert "secrets: 35 row(s) re-encrypted to key 'new', 0 already on it" in captured.out
    assert "rotating secrets: 10/35 rows scanned" in captured.err
    assert "rotating secrets: 35/35 rows scanned" in captured.err
    assert {t for t, _ in key_ids(db)} == {"new"}
    assert {p for _, p in key_ids(db)} == {"new", None}
    values = asyncio.run(read_all_with_only_the_new_key(db))
    assert [(v.token, v.pin) for v in values] == [
        (f"t{i}", i if i % 2 else None) for i in range(ROWS)
    ]


def test_interrupted_rotation_finishes_when_run_again(
    db: Path, app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt_after_two_batches(schema: str, done: int, total: int) -> None:
        if done >= 20:
            raise KeyboardInterrupt

    async def interrupted_run() -> None:
        async with store(db, {"old": OLD, "new": NEW}, "new") as ds:
            await rotate_key(ds, batch=10, progress=interrupt_after_two_batches)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(interrupted_run())
    ids = [t for t, _ in key_ids(db)]
    assert ids == ["new"] * 20 + ["old"] * 15  # two batches committed, the rest untouched

    assert main(["rotate-key", "--app", app, "--batch", "10"]) == 0
    assert "15 row(s) re-encrypted to key 'new', 20 already on it" in capsys.readouterr().out
    assert {t for t, _ in key_ids(db)} == {"new"}
    assert len(asyncio.run(read_all_with_only_the_new_key(db))) == ROWS


async def test_rotation_drops_cached_copies_sealed_with_the_old_key(db: Path) -> None:
    async with store(db, {"old": OLD, "new": NEW}, "new") as ds:
        before = await ds.get(Secret, "s01")  # now cached in L1
        report = await rotate_key(ds)
        assert report.total_rotated == ROWS
        assert ds._core.routes["secrets"].l1.get("s01") is None  # type: ignore[union-attr]
        assert await ds.get(Secret, "s01") == before


async def test_rotate_without_an_encryption_key_is_a_config_error(tmp_path: Path) -> None:
    ds = DataStore(Config(database_url=f"sqlite:///{tmp_path / 'x.db'}"))
    async with ds:
        with pytest.raises(errors.ConfigError, match="nothing to rotate"):
            await rotate_key(ds)
