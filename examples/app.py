"""An application module the ``strata`` command and the Alembic environment can load.

The command line finds the application's DataStore through ``--app MODULE:ATTR``: either
the store itself (``examples.app:ds``) or a zero-argument function returning one
(``examples.app:make_store``). Settings come from the environment (``STRATA_DATABASE_URL``,
``STRATA_DATABASE_SCHEMA``, ``STRATA_REDIS_URL``, ...); without any, the store is embedded
(a SQLite file ``strata.db`` in the working directory).

    strata migrate --app examples.app:ds --dry-run
    strata migrate --app examples.app:ds
    strata check   --app examples.app:make_store

Constructing a DataStore opens nothing: connections are made by ``connect()``, so importing
this module is cheap and safe.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from strata import Config, DataStore, Field, Index, MemPolicy, Schema


class Player(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True, index=True)
    email: str | None = Field(default=None, index=True)
    level: int = Field(default=1)
    created_at: datetime = Field(auto_now_add=True)
    updated_at: datetime = Field(auto_now=True)
    password_hash: str = Field(default="", omit_cache=True)


class Guild(BaseModel):
    id: str = Field(primary_key=True)
    name: str = Field(unique=True)
    owner_id: str = Field(index=True)
    members: list[str] = Field(default_factory=list)
    created_at: datetime = Field(auto_now_add=True)


def make_store(config: Config | None = None) -> DataStore:
    """The application's DataStore with every schema registered (not yet connected)."""
    store = DataStore(config or Config.from_env())
    store.register(
        Schema(
            name="players",
            model=Player,
            l1=MemPolicy(ttl=60, max_entries=50_000),
            indexes=[Index(fields=["level", "created_at"])],
        )
    )
    store.register(Schema(name="guilds", model=Guild))
    return store


ds = make_store()
