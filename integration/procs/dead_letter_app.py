"""An application for ``strata dead-letters --app integration.procs.dead_letter_app:ds``:
a write-behind schema with a unique column (a row PostgreSQL can refuse), settings from the
environment (``STRATA_DATABASE_URL``, ``STRATA_REDIS_URL``, ``STRATA_KEY_PREFIX`` ...)."""

from __future__ import annotations

from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, WriteMode


class Handle(BaseModel):
    id: str = Field(primary_key=True)
    handle: str = Field(unique=True)


HANDLES = Schema(name="handles", model=Handle, write_mode=WriteMode.WRITE_BEHIND)


def ds() -> DataStore:
    store = DataStore(Config.from_env())
    store.register(HANDLES)
    return store
