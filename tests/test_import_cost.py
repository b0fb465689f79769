"""``import strata`` stays light: Alembic and SQLAlchemy's ORM load only when migrations run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import sys
    from pydantic import BaseModel
    import strata, strata.sync
    from strata import Config, DataStore, Field, Schema

    class Item(BaseModel):
        id: str = Field(primary_key=True)

    ds = DataStore(Config(database_url="sqlite:///:memory:"))
    ds.register(Schema(name="items", model=Item))
    heavy = sorted(m for m in sys.modules if m == "alembic" or m.startswith(("alembic.",
                   "sqlalchemy.orm")))
    print(",".join(heavy) or "none")
    """
)


def test_import_strata_loads_neither_alembic_nor_the_sqlalchemy_orm() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_alembic_loads_once_migrations_run() -> None:
    probe = PROBE.replace(
        'print(",".join(heavy) or "none")',
        "import asyncio\n"
        "async def main():\n"
        "    async with ds:\n"
        "        await ds.migrate()\n"
        "asyncio.run(main())\n"
        'print("alembic" in sys.modules)',
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
