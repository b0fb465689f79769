"""FastAPI integration (extra: ``pip install 'strata[fastapi]'``)::

    ds = DataStore(Config.from_env())
    ds.register(Schema(...))
    app = FastAPI(lifespan=strata_lifespan(ds, migrate=True))

    @app.get("/players/{id}")
    async def read(id: str, ds: Store) -> Player:
        return await ds.get(Player, id)

``strata_lifespan`` connects the store when the app starts (and migrates, if asked), puts it
on ``app.state.strata`` and closes it (flushing write-behind) when the app stops. ``Store``
is the dependency that hands it to an endpoint; ``get_store`` is the same as a function.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from strata.datastore import DataStore
from strata.errors import LifecycleError

__all__ = ["Store", "get_store", "strata_lifespan"]


def strata_lifespan(
    ds: DataStore, *, migrate: bool = False
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan``: connect ``ds`` on startup, close it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with ds:
            if migrate:
                await ds.migrate()
            app.state.strata = ds
            try:
                yield
            finally:
                del app.state.strata

    return lifespan


def get_store(request: Request) -> DataStore:
    """The app's DataStore (put there by ``strata_lifespan``)."""
    ds = getattr(request.app.state, "strata", None)
    if not isinstance(ds, DataStore):
        raise LifecycleError(
            "no DataStore on this app: create it with FastAPI(lifespan=strata_lifespan(ds))"
        )
    return ds


Store = Annotated[DataStore, Depends(get_store)]
