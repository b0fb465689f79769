"""A blocking DataStore for code that is not async: scripts, Django, Flask, worker threads.

    caller thread ──► sync method ──► run_coroutine_threadsafe ──► private loop thread
         ▲                                                           │  the async DataStore
         └──────────────── result, or the same StrataError ◄─────────┘  (one per sync store)

    with ds.tx() as tx:   one task on the loop thread owns the transaction; each tx.get /
                          tx.set is handed to it, so every statement runs in that task
                          (as the async transaction requires); leaving the block commits,
                          an exception rolls back and propagates unchanged
    ds.retry_tx(fn)       fn(tx) inside ds.tx(), in the caller's thread; a SerializationError
                          (from fn, a statement, BEGIN or COMMIT) runs it again in a new one

Any number of threads may share one store: the calls interleave on its loop like concurrent
tasks. The loop thread starts on ``connect()`` (or ``with DataStore(...) as ds``) and ends on
``close()``; a store still open when the interpreter exits is closed by ``atexit`` (write-behind
flushed, no thread left behind), before the interpreter stops its thread pools.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import random
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from pydantic import BaseModel

from strata.config import Config
from strata.datastore import DataStore as AsyncDataStore
from strata.errors import InvalidValueError, LifecycleError, SerializationError
from strata.tx import Tx, TxContext

if TYPE_CHECKING:
    import sqlalchemy as sa

    from strata.datastore import SchemaRef
    from strata.observability import Stats
    from strata.query import Q, Query
    from strata.router.update import UpdateFn
    from strata.schema import CompiledSchema, Schema

__all__ = ["DataStore", "SyncTx"]

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


class _LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="strata-sync-loop", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        if threading.current_thread() is self.thread:
            coro.close()
            raise LifecycleError(
                "a strata.sync.DataStore was called from its own event loop (a hook?); "
                "use the async DataStore there"
            )
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt while waiting: stop the operation too
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _close_at_exit(store: DataStore) -> None:
    """Close ``store`` when the interpreter exits, if it is still open then.

    ``threading``'s exit hooks run before ``atexit``'s, and one of them stops every
    ThreadPoolExecutor (the SQLite tier's included): a store closed from ``atexit`` could no
    longer flush. Hooks registered later run first, so this one runs before that.
    """
    ref = weakref.ref(store)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    register: Callable[[Callable[[], None]], Any] = getattr(
        threading, "_register_atexit", atexit.register
    )
    register(close)


def _blocking(
    fn: Callable[Concatenate[AsyncDataStore, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[DataStore, P], R]:
    """The blocking twin of an async DataStore method: same name, arguments and result."""

    @functools.wraps(fn)
    def method(self: DataStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop().run(fn(self.aio, *args, **kwargs))

    return method


def _in_tx(
    fn: Callable[Concatenate[Tx, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SyncTx, P], R]:
    """The blocking twin of an async Tx method, run by the task that owns the transaction."""

    @functools.wraps(fn)
    def method(self: SyncTx, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(functools.partial(fn, self._tx, *args, **kwargs))

    return method


class SyncTx:
    """The blocking face of ``Tx``: ``with ds.tx() as tx: tx.set(...)``."""

    def __init__(
        self,
        tx: Tx,
        loop: asyncio.AbstractEventLoop,
        inbox: asyncio.Queue[Any],
        owner: concurrent.futures.Future[None],
    ) -> None:
        self._tx = tx
        self._loop = loop
        self._inbox = inbox
        self._owner = owner

    def _call(self, call: Callable[[], Coroutine[Any, Any, R]]) -> R:
        result: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, (call, result))
        both: list[concurrent.futures.Future[Any]] = [result, self._owner]
        concurrent.futures.wait(both, return_when="FIRST_COMPLETED")
        if not result.done():  # the transaction ended (its timeout, for one)
            self._owner.result()
            raise LifecycleError("the transaction has ended")
        return result.result()

    if TYPE_CHECKING:

        @overload
        def get(self, schema: type[M], id: Any, *, for_update: bool = False) -> M: ...
        @overload
        def get(self, schema: str, id: Any, *, for_update: bool = False) -> BaseModel: ...
        def get(self, schema: SchemaRef, id: Any, *, for_update: bool = False) -> BaseModel: ...
        @overload
        def set(self, schema: type[M], value: M | Mapping[str, Any]) -> M: ...
        @overload
        def set(self, schema: str, value: BaseModel | Mapping[str, Any]) -> BaseModel: ...
        def set(self, schema: SchemaRef, value: Any) -> BaseModel: ...

    else:
        get = _in_tx(Tx.get)
        set = _in_tx(Tx.set)
    get_many = _in_tx(Tx.get_many)
    search = _in_tx(Tx.search)
    set_many = _in_tx(Tx.set_many)
    delete = _in_tx(Tx.delete)


async def _own_transaction(
    ctx: TxContext, inbox: asyncio.Queue[Any], entered: concurrent.futures.Future[Tx]
) -> None:
    """Hold the transaction in one task and run the calls handed to it, until told to leave:
    ``None`` commits; an exception rolls back and is raised again."""
    try:
        tx = await ctx.__aenter__()
    except BaseException as exc:
        entered.set_exception(exc)
        raise
    entered.set_result(tx)
    failure: BaseException | None = None
    try:
        while True:
            item = await inbox.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                failure = item
                break
            call, result = item
            try:
                result.set_result(await call())
            except Exception as exc:
                result.set_exception(exc)
    except BaseException as exc:  # cancelled, or the timeout fired
        failure = exc
    if failure is None:
        await ctx.__aexit__(None, None, None)
    else:  # the transaction never swallows an exception
        await ctx.__aexit__(type(failure), failure, failure.__traceback__)
        raise failure


class DataStore:
    """``strata.DataStore`` with every operation blocking. Same methods, same errors::

    ds = strata.sync.DataStore(Config(...))
    ds.register(Schema(...))
    with ds:
        ds.migrate()
        ds.set(Player, player)
        with ds.tx() as tx:
            tx.set(Account, account)
    """

    def __init__(self, config: Config | None = None) -> None:
        self.aio = AsyncDataStore(config)  # the async store this one drives
        self.config = self.aio.config
        self._thread: _LoopThread | None = None
        self._guard = threading.Lock()
        self._exit_hooked = False

    def _loop(self) -> _LoopThread:
        thread = self._thread
        if thread is None:
            raise LifecycleError(
                "DataStore is not connected: use `with DataStore(...)` or `ds.connect()` first"
            )
        return thread

    # -- lifecycle -------------------------------------------------------------------------

    def connect(self) -> None:
        """Start the loop thread and connect. Idempotent while open."""
        with self._guard:
            if self._thread is None:
                self._thread = _LoopThread()
                if not self._exit_hooked:
                    _close_at_exit(self)
                    self._exit_hooked = True
            thread = self._thread
        try:
            thread.run(self.aio.connect())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Flush write-behind, close connections, end the loop thread. Idempotent."""
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            thread.run(self.aio.close())
        finally:
            thread.stop()

    def __enter__(self) -> DataStore:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what needs no loop ----------------------------------------------------------------

    def register(self, schema: Schema) -> CompiledSchema:
        return self.aio.register(schema)

    @property
    def schemas(self) -> Mapping[str, CompiledSchema]:
        return self.aio.schemas

    @property
    def metadata(self) -> sa.MetaData:
        return self.aio.metadata

    def stats(self) -> Stats:
        return self.aio.stats()

    # -- the operations, derived from the async ones ---------------------------------------

    if TYPE_CHECKING:

        @overload
        def get(self, schema: type[M], id: Any, *, force_l3: bool = False) -> M: ...
        @overload
        def get(self, schema: str, id: Any, *, force_l3: bool = False) -> BaseModel: ...
        def get(self, schema: SchemaRef, id: Any, *, force_l3: bool = False) -> BaseModel: ...
        @overload
        def set(self, schema: type[M], value: M | Mapping[str, Any]) -> M: ...
        @overload
        def set(self, schema: str, value: BaseModel | Mapping[str, Any]) -> BaseModel: ...
        def set(self, schema: SchemaRef, value: Any) -> BaseModel: ...
        @overload
        def search(self, schema: type[M], q: Q | Query | None = None) -> list[M]: ...
        @overload
        def search(self, schema: str, q: Q | Query | None = None) -> list[BaseModel]: ...
        def search(self, schema: SchemaRef, q: Q | Query | None = None) -> list[Any]: ...
        @overload
        def update(
            self, schema: type[M], id: Any, fn: UpdateFn[M], *, attempts: int = ...
        ) -> M: ...
        @overload
        def update(
            self, schema: str, id: Any, fn: UpdateFn[Any], *, attempts: int = ...
        ) -> BaseModel: ...
        def update(self, schema: SchemaRef, id: Any, fn: Any, *, attempts: int = 10) -> Any: ...
        @overload
        def patch(self, schema: type[M], id: Any, /, **fields: Any) -> M: ...
        @overload
        def patch(self, schema: str, id: Any, /, **fields: Any) -> BaseModel: ...
        def patch(self, schema: SchemaRef, id: Any, /, **fields: Any) -> Any: ...

    else:
        get = _blocking(AsyncDataStore.get)
        set = _blocking(AsyncDataStore.set)
        search = _blocking(AsyncDataStore.search)
        update = _blocking(AsyncDataStore.update)
        patch = _blocking(AsyncDataStore.patch)
    get_many = _blocking(AsyncDataStore.get_many)
    exists = _blocking(AsyncDataStore.exists)
    set_many = _blocking(AsyncDataStore.set_many)
    delete = _blocking(AsyncDataStore.delete)
    delete_many = _blocking(AsyncDataStore.delete_many)
    search_cached = _blocking(AsyncDataStore.search_cached)
    count = _blocking(AsyncDataStore.count)
    invalidate = _blocking(AsyncDataStore.invalidate)
    invalidate_all = _blocking(AsyncDataStore.invalidate_all)
    warm_cache = _blocking(AsyncDataStore.warm_cache)
    flush_dirty = _blocking(AsyncDataStore.flush_dirty)
    dead_letters = _blocking(AsyncDataStore.dead_letters)
    retry_dead_letters = _blocking(AsyncDataStore.retry_dead_letters)
    drop_dead_letters = _blocking(AsyncDataStore.drop_dead_letters)
    migrate = _blocking(AsyncDataStore.migrate)
    migrate_from = _blocking(AsyncDataStore.migrate_from)
    migration_status = _blocking(AsyncDataStore.migration_status)

    @contextmanager
    def tx(self, *, isolation: str | None = None, timeout: float | None = None) -> Iterator[SyncTx]:
        """One L3 transaction: commits when the block ends, rolls back on an exception."""
        thread = self._loop()
        ctx = self.aio.tx(isolation=isolation, timeout=timeout)
        entered: concurrent.futures.Future[Tx] = concurrent.futures.Future()
        inbox = thread.run(_make_queue())
        owner = thread.submit(_own_transaction(ctx, inbox, entered))
        tx = entered.result()
        try:
            yield SyncTx(tx, thread.loop, inbox, owner)
        except BaseException as exc:
            thread.loop.call_soon_threadsafe(inbox.put_nowait, exc)
            try:
                owner.result()
            except BaseException as ended:
                if ended is not exc:
                    raise
            raise
        else:
            thread.loop.call_soon_threadsafe(inbox.put_nowait, None)
            owner.result()

    def retry_tx(
        self,
        fn: Callable[[SyncTx], R],
        *,
        attempts: int = 3,
        isolation: str | None = None,
        timeout: float | None = None,
        backoff: float = 0.01,
    ) -> R:
        """Run the blocking ``fn(tx)`` in a transaction, again (up to ``attempts`` times in
        all, each in a new transaction, with a jittered exponential backoff) when it fails
        with a retryable ``SerializationError``; the last one is raised. Any other error
        rolls back and propagates at once, as from ``tx()``."""
        if inspect.iscoroutinefunction(fn):
            raise InvalidValueError(
                "strata.sync retry_tx takes a blocking function; use the async DataStore's "
                "retry_tx for a coroutine function"
            )
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidValueError(f"retry_tx needs attempts >= 1, got {attempts!r}")
        for attempt in range(attempts):
            try:
                with self.tx(isolation=isolation, timeout=timeout) as tx:
                    return fn(tx)
            except SerializationError:
                if attempt == attempts - 1:
                    raise
                time.sleep(backoff * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        return f"<strata.sync.DataStore {self.aio!r}>"


async def _make_queue() -> asyncio.Queue[Any]:
    return asyncio.Queue()
