"""A reference model of the coherence contract, a fault injector, and a random walk over both.

The model-based test (``integration/test_model_based.py``) drives seeded random sequences of
operations over two DataStores ("A" and "B") that share PostgreSQL and a private Redis, with
faults injected between operations, and checks every read against ``Model``::

    generate(seed) ─► [Op, ...] ─► run(): each Op on the stores ─► every read ─► Model.observe
                                    faults: Faults.start / heal      heal ─► recover ─► converge
    a failure ─► shrink(): delta debugging of the Op list ─► a sequence to paste into a test

The contract (DESIGN.md section 4), as the model checks it:

- every write carries a unique token ``"<key>:w<n>"``; a read of a token that was never
  written for that key (or of another key's token) is a phantom;
- **read your writes**: an instance never reads a write older than its own last
  acknowledged write of that key;
- **monotonic reads**: an instance never reads a write older than one it already read;
- **nothing older than an acknowledged write once healed**: after a fault heals (Redis and
  the bus report healthy, checked by polling, not by sleeping) both instances must, within
  ``CONVERGE`` seconds, read the same write, no older than the last acknowledged one. That
  write is then *the* value: every other write so far is dead and must never be read again
  (so a write that raised during the fault, "maybe applied", must settle one way and stay);
- at the end, after ``flush_dirty``, PostgreSQL holds the converged value (no lost write).

Outside a fault any error raised by an operation is a failure; during a fault a read may
raise (no observation) and a write that raises is "maybe applied".
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from integration._servers import FaultProxy, PrivateRedis
from integration.procs.models import Item
from strata import Config, DataStore, MemPolicy, Q, Schema, WriteMode
from strata.errors import NotFoundError, StrataError, TierUnavailableError

__all__ = [
    "FAULTS",
    "CheckFailed",
    "Failure",
    "Faults",
    "Model",
    "ModelConfig",
    "Op",
    "generate",
    "run_sequence",
    "shrink",
]

RECOVERY = 20.0  # a generous bound: the L2 circuit breaker backs off up to 5 s
CONVERGE = 5.0  # after recovery, invalidations take milliseconds: this is very generous
STEP_TIMEOUT = 60.0  # one operation (a heal included) that takes longer is stuck
SLOW = 0.15  # seconds each PostgreSQL response to B is held under the "pg_slow_b" fault

FAULTS = ("redis_kill", "redis_cut_b", "pubsub_kill", "pg_cut", "pg_slow_b")
"""redis_kill: the private Redis is SIGKILLed (restarted empty on heal); redis_cut_b: B's
link to Redis is cut (A keeps it); pubsub_kill: CLIENT KILL TYPE pubsub (every subscriber
drops); pg_cut: both links to PostgreSQL are cut; pg_slow_b: B's PostgreSQL replies are
held ``SLOW`` seconds (and races put a slow read beside a write)."""


class Op(NamedTuple):
    """One step. ``kind``: get, get_many, set, set_many, delete, search, invalidate, update,
    race (``inst`` reads ``keys[0]`` while the other instance writes it), fault (``keys[0]``
    names it), heal. Its repr is valid Python, to paste into a regression test."""

    kind: str
    inst: str = "A"
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    mode: WriteMode
    l1: bool
    faults: tuple[str, ...] = FAULTS
    update: bool = False  # ds.update exists (issue 11, version-checked writes)
    skip: tuple[str, ...] = ()  # op kinds left out (a known bug, until it is fixed)
    writers: tuple[str, ...] = ("A", "B")  # the instances that write
    # False: during a fault, a reader that does not write is only checked for phantoms
    # (write-behind: a queued write lives in Redis alone; with Redis gone, L3 is older)
    monotonic_in_faults: bool = True

    @property
    def name(self) -> str:
        return f"{self.mode.value}-{'l1' if self.l1 else 'no-l1'}"


@dataclass
class Failure:
    kind: str  # phantom | ryw | monotonic | stale-after-heal | disagree | lost | error
    message: str
    step: int
    history: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        tail = "\n".join(self.history[-25:])
        return f"[{self.kind}] at step {self.step}: {self.message}\nlast steps:\n{tail}"


class CheckFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------------------- model

WRITES = ("set", "set_many", "delete", "update")
PENDING, ACKED, MAYBE, DEAD = "pending", "acked", "maybe", "dead"


class Model:
    """What the contract allows each instance to read, key by key (see the module doc)."""

    def __init__(self) -> None:
        self.counter = 0  # write 0 of every key is "absent" (acknowledged)
        self.deleted: dict[str, set[int]] = {}  # key -> write numbers that are deletes
        self.status: dict[str, dict[int, str]] = {}
        self.last_acked: dict[str, int] = {}
        self.floor: dict[tuple[str, str], int] = {}  # (inst, key) -> oldest write allowed

    def _key(self, key: str) -> dict[int, str]:
        if key not in self.status:
            self.status[key] = {0: ACKED}
            self.deleted[key] = {0}
            self.last_acked[key] = 0
        return self.status[key]

    def begin(self, key: str, *, delete: bool = False) -> int:
        status = self._key(key)
        self.counter += 1
        status[self.counter] = PENDING
        if delete:
            self.deleted[key].add(self.counter)
        return self.counter

    def ack(self, inst: str, key: str, n: int) -> None:
        self.status[key][n] = ACKED
        self.last_acked[key] = max(self.last_acked[key], n)
        self.floor[inst, key] = max(self.floor.get((inst, key), 0), n)

    def maybe(self, key: str, n: int) -> None:
        self.status[key][n] = MAYBE

    @staticmethod
    def token(key: str, n: int) -> str:
        return f"{key}:w{n}"

    def parse(self, key: str, value: Item | None) -> int | None:
        """The write number a read saw (None: absent, any delete may explain it)."""
        if value is None:
            return None
        owner, _, n = value.name.rpartition(":w")
        if owner != key or value.id != key or not n.isdigit() or value.level != int(n):
            raise CheckFailed("phantom", f"{key}: read {value!r}, not a write of this key")
        if int(n) not in self._key(key):
            raise CheckFailed("phantom", f"{key}: read {value.name}, never written")
        return int(n)

    def observe(self, inst: str, key: str, value: Item | None, what: str) -> int:
        """Check one read; returns the write number it is taken to be."""
        status = self._key(key)
        n = self.parse(key, value)
        candidates = sorted(self.deleted[key]) if n is None else [n]
        floor = self.floor.get((inst, key), 0)
        live = [c for c in candidates if status.get(c) != DEAD]
        ok = [c for c in live if c >= floor]
        if not ok:
            seen = "absent" if n is None else f"w{n}"
            if not live:
                kind, why = "stale-after-heal", "a write older than the converged value"
            else:
                kind, why = "monotonic", f"older than w{floor}, which it read or wrote"
            raise CheckFailed(
                kind,
                f"{inst}.{what}({key}) read {seen}: {why} (last acknowledged "
                f"w{self.last_acked[key]}; states {self._states(key)})",
            )
        self.floor[inst, key] = ok[0]
        return ok[0]

    def _states(self, key: str) -> str:
        status = self.status[key]
        return ", ".join(
            f"{'d' if n in self.deleted[key] else 'w'}{n}={s}" for n, s in sorted(status.items())
        )

    def agreed(self, key: str, both_absent: bool) -> int | None:
        """The write both instances now read, if they read the same one and it is no older
        than the last acknowledged write (None: not converged yet)."""
        a, b = self.floor.get(("A", key), 0), self.floor.get(("B", key), 0)
        newest = max(a, b, self.last_acked[key])
        if both_absent:
            live = self.status[key]
            deletes = [d for d in sorted(self.deleted[key]) if d >= newest and live[d] != DEAD]
            return deletes[0] if deletes else None
        return a if a == b and a >= newest else None

    def resolve(self, key: str, n: int) -> None:
        """Both instances converged on write ``n``: every other write so far is dead."""
        status = self._key(key)
        for m in status:
            if m != n:
                status[m] = DEAD
        status[n] = ACKED
        self.last_acked[key] = n
        for inst in ("A", "B"):
            self.floor[inst, key] = n

    def expected(self, key: str) -> int:
        """The converged write of a key (after ``resolve``)."""
        return next(n for n, s in self._key(key).items() if s != DEAD)

    def is_delete(self, key: str, n: int) -> bool:
        return n in self.deleted[key]


# ------------------------------------------------------------------------------- faults


class Faults:
    """The servers the two stores run on, and the faults a sequence injects into them.

    A and B use the private Redis (B through ``redis_b``, a proxy that can cut B alone) and
    reach PostgreSQL through their own proxies (``pg_a``, ``pg_b``)."""

    def __init__(
        self, redis: PrivateRedis, redis_b: FaultProxy, pg_a: FaultProxy, pg_b: FaultProxy
    ):
        self.redis, self.redis_b, self.pg_a, self.pg_b = redis, redis_b, pg_a, pg_b
        self.active: str | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, pg_url: str) -> AsyncIterator[Faults]:
        async with (
            PrivateRedis() as redis,
            FaultProxy(redis.host, redis.port) as redis_b,
            FaultProxy.for_url(pg_url) as pg_a,
            FaultProxy.for_url(pg_url) as pg_b,
        ):
            yield cls(redis, redis_b, pg_a, pg_b)

    async def start(self, kind: str) -> None:
        if self.active is not None:
            await self.heal()
        self.active = kind
        if kind == "redis_kill":
            await self.redis.stop()
        elif kind == "redis_cut_b":
            await self.redis_b.cut()
        elif kind == "pubsub_kill":
            client = aioredis.Redis.from_url(self.redis.url)
            try:
                await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            finally:
                await client.aclose()
        elif kind == "pg_cut":
            await self.pg_a.cut()
            await self.pg_b.cut()
        elif kind == "pg_slow_b":
            self.pg_b.delay(SLOW)
        else:
            raise ValueError(f"unknown fault {kind!r}")

    async def heal(self) -> None:
        self.active = None
        await self.redis.start()
        for proxy in (self.redis_b, self.pg_a, self.pg_b):
            await proxy.restore()


# ------------------------------------------------------------------------------- walk


def generate(seed: int, config: ModelConfig, *, length: int = 30, keys: int = 4) -> list[Op]:
    """A random sequence (``seed`` makes it reproducible)."""
    rng = random.Random(seed)
    names = [f"k{i}" for i in range(keys)]
    kinds = ["get"] * 5 + ["get_many"] * 2 + ["set"] * 5 + ["set_many"] * 2
    kinds += ["delete", "search", "invalidate", "race"]
    if config.update:
        kinds += ["update"] * 2
    kinds = [k for k in kinds if k not in config.skip]
    ops: list[Op] = []
    fault_left = 0
    for _ in range(length):
        if fault_left == 0 and config.faults and rng.random() < 0.12:
            ops.append(Op("fault", keys=(rng.choice(config.faults),)))
            fault_left = rng.randint(2, 6)
            continue
        if fault_left > 0:
            fault_left -= 1
            if fault_left == 0:
                ops.append(Op("heal"))
                continue
        kind = rng.choice(kinds)
        inst = rng.choice("AB")
        if kind in WRITES:
            inst = rng.choice(config.writers)
        elif kind == "race" and len(config.writers) == 1:
            inst = "B" if config.writers == ("A",) else "A"  # the reader: not the writer
        if kind in ("get_many", "set_many"):
            chosen = tuple(rng.sample(names, rng.randint(1, keys)))
        elif kind == "search":
            chosen = ()
        else:
            chosen = (rng.choice(names),)
        ops.append(Op(kind, inst, chosen))
    return ops


@dataclass
class _Run:
    config: ModelConfig
    faults: Faults
    stores: dict[str, DataStore]
    ns: str  # this run's id namespace: runs never see each other's rows
    model: Model = field(default_factory=Model)
    history: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def id(self, key: str) -> str:
        return f"{self.ns}{key}"

    def item(self, key: str, n: int) -> Item:
        return Item(id=self.id(key), name=Model.token(self.id(key), n), level=n)

    def log(self, step: int, text: str) -> None:
        self.history.append(f"{step:3d} {text}")

    @property
    def faulty(self) -> bool:
        return self.faults.active is not None

    def see(self, inst: str, key: str, value: Item | None, what: str) -> str:
        lax = self.faulty and not self.config.monotonic_in_faults
        if lax and inst not in self.config.writers:
            n = self.model.parse(self.id(key), value)  # phantoms only; the floor stays
            return "absent" if n is None else f"w{n} (unchecked: fault)"
        n = self.model.observe(inst, self.id(key), value, what)
        return "absent" if value is None else f"w{n}"

    async def read(self, inst: str, key: str, what: str = "get") -> str:
        try:
            value: Item | None = await self.stores[inst].get(Item, self.id(key))
        except NotFoundError:
            value = None
        return self.see(inst, key, value, what)

    async def write(self, inst: str, keys: Sequence[str], kind: str) -> str:
        ds = self.stores[inst]
        model = self.model
        delete = kind == "delete"
        ns = [model.begin(self.id(k), delete=delete) for k in keys]
        self.keys.update(keys)
        try:
            if kind == "set":
                await ds.set(Item, self.item(keys[0], ns[0]))
            elif kind == "set_many":
                await ds.set_many(Item, [self.item(k, n) for k, n in zip(keys, ns, strict=True)])
            elif kind == "delete":
                await ds.delete(Item, self.id(keys[0]))
            else:
                n = ns[0]

                def bump(old: Item) -> Item:
                    return self.item(keys[0], n)

                try:
                    await ds.update(Item, self.id(keys[0]), bump)  # type: ignore[attr-defined]
                except NotFoundError:
                    model.status[self.id(keys[0])][n] = DEAD  # nothing to update: not a write
                    return "not found"
        except StrataError:
            for k, n in zip(keys, ns, strict=True):
                model.maybe(self.id(k), n)
            if not self.faulty:
                raise
            return f"raised (maybe applied: {ns})"
        for k, n in zip(keys, ns, strict=True):
            model.ack(inst, self.id(k), n)
        return f"ok {['w' + str(n) for n in ns]}"

    async def step(self, op: Op) -> str:
        kind, inst, keys = op
        ds = self.stores[inst]
        if kind == "get":
            return await self.read(inst, keys[0])
        if kind == "get_many":
            found = await ds.get_many(Item, [self.id(k) for k in keys])
            return " ".join(
                f"{k}={self.see(inst, k, found.get(self.id(k)), 'get_many')}" for k in keys
            )
        if kind in ("set", "set_many", "delete", "update"):
            return await self.write(inst, keys, kind)
        if kind == "search":
            ids = [self.id(k) for k in sorted(self.keys)]
            if not ids:
                return "nothing written yet"
            rows = {r.id: r for r in await ds.search(Item, Q().filter(id__in=ids))}
            return " ".join(
                f"{k}={self.see(inst, k, rows.get(self.id(k)), 'search')}"
                for k in sorted(self.keys)
            )
        if kind == "invalidate":
            await ds.invalidate(Item, self.id(keys[0]))
            return "ok"
        if kind == "race":
            return await self.race(inst, keys[0])
        if kind == "fault":
            await self.faults.start(keys[0])
            return "injected"
        if kind == "heal":
            return await self.heal()
        raise ValueError(f"unknown op {op!r}")

    async def race(self, inst: str, key: str) -> str:
        """``inst`` reads ``key`` from L3 while the other instance writes it."""
        other = "B" if inst == "A" else "A"
        await self.stores[other].invalidate(Item, self.id(key))
        reader = asyncio.ensure_future(self.read(inst, key, "race-get"))
        await asyncio.sleep(0)  # let the read start before the write
        written = await self.write(other, [key], "set")
        return f"read {await reader}, {other} wrote {written}"

    async def heal(self) -> str:
        await self.faults.heal()
        await self.recover()
        return await self.converge()

    async def recover(self) -> None:
        """Wait (bounded) until both stores see Redis, the bus and PostgreSQL again."""
        deadline = time.monotonic() + RECOVERY
        while not await self._healthy():
            if time.monotonic() > deadline:
                raise CheckFailed("recovery", f"not healthy after {RECOVERY} s: {self._why()}")
            await asyncio.sleep(0.05)

    async def _healthy(self) -> bool:
        for ds in self.stores.values():
            core: Any = ds._core
            if core.l2 is not None and not core.l2.available:
                await core.l2.ping()
            try:
                await ds.get(Item, f"{self.ns}absent", force_l3=True)
            except NotFoundError:
                pass
            except StrataError:
                return False
        return all(self._store_healthy(ds) for ds in self.stores.values())

    @staticmethod
    def _store_healthy(ds: DataStore) -> bool:
        core: Any = ds._core  # what an operator's health check looks at
        coherence: Any = ds._coherence
        return bool(
            core.l2 is not None
            and core.l2.available
            and core.bus is not None
            and core.bus.connected
            and coherence.l2_repairs_pending == 0
        )

    def _why(self) -> str:
        return "; ".join(
            f"{inst}: l2={ds._core.l2.available if ds._core.l2 else None} "
            f"bus={ds._core.bus.connected if ds._core.bus else None} "
            f"repairs={ds._coherence.l2_repairs_pending}"
            for inst, ds in self.stores.items()
        )

    async def converge(self) -> str:
        """Both instances read the same write of every key, no older than the last
        acknowledged one, within ``CONVERGE`` seconds; that write becomes the value."""
        settled: dict[str, int] = {}
        for key in sorted(self.keys):
            kid = self.id(key)
            deadline = time.monotonic() + CONVERGE
            while True:
                try:
                    seen = {inst: await self.read(inst, key, "converge-get") for inst in "AB"}
                except TierUnavailableError as exc:
                    # a reader refuses an older row while the newer one is being recovered
                    # (write-behind: Redis came back without the journal; the rescue is on
                    # its way): not a stale read, but it must end within CONVERGE
                    if time.monotonic() > deadline:
                        raise CheckFailed("unavailable", f"{key}: still after heal: {exc}") from exc
                    await asyncio.sleep(0.05)
                    continue
                agreed = self.model.agreed(kid, seen["A"] == "absent" == seen["B"])
                if agreed is not None:
                    self.model.resolve(kid, agreed)
                    settled[key] = agreed
                    break
                if time.monotonic() > deadline:
                    raise CheckFailed(
                        "disagree" if seen["A"] != seen["B"] else "stale-after-heal",
                        f"{key}: after healing A reads {seen['A']}, B reads {seen['B']}, last "
                        f"acknowledged w{self.model.last_acked[kid]} (still after {CONVERGE} s)",
                    )
                await asyncio.sleep(0.05)
        return "converged " + " ".join(f"{k}=w{n}" for k, n in settled.items())

    async def durable(self) -> None:
        """After ``flush_dirty``, PostgreSQL holds every key's converged value."""
        for ds in self.stores.values():
            await ds.flush_dirty(timeout=RECOVERY)
        for key in sorted(self.keys):
            kid = self.id(key)
            n = self.model.expected(kid)
            try:
                row: Item | None = await self.stores["A"].get(Item, kid, force_l3=True)
            except NotFoundError:
                row = None
            got = self.model.parse(kid, row)
            if (got is None) != self.model.is_delete(kid, n) or (got is not None and got != n):
                raise CheckFailed("lost", f"{key}: PostgreSQL holds {got}, converged on w{n}")


def schema_for(config: ModelConfig) -> Schema:
    return Schema(
        name="items",
        model=Item,
        l1=MemPolicy(ttl=300) if config.l1 else None,
        write_mode=config.mode,
    )


@contextlib.asynccontextmanager
async def _stores(
    config: ModelConfig, faults: Faults, settings: dict[str, Any], tag: str
) -> AsyncIterator[dict[str, DataStore]]:
    prefix = f"{settings['key_prefix']}-{tag}"
    common = {
        **settings,
        "key_prefix": prefix,
        "invalidation_channel": f"{prefix}:invalidation",
        "heartbeat_interval": 0.5,
        "redis_timeout": 0.25,
        "default_l2_ttl": 300,
        "write_behind_flush_interval": 0.05,
        "write_behind_max_retry": 100_000,  # a short outage must never dead-letter a write
        "write_behind_retry_max": 0.5,
    }
    pg_url = settings["database_url"]
    a = DataStore(
        Config(
            **{**common, "database_url": faults.pg_a.url_for(pg_url), "redis_url": faults.redis.url}
        )
    )
    b = DataStore(
        Config(
            **{
                **common,
                "database_url": faults.pg_b.url_for(pg_url),
                "redis_url": f"redis://{faults.redis_b.host}:{faults.redis_b.port}/0",
            }
        )
    )
    for ds in (a, b):
        ds.register(schema_for(config))
    try:
        await a.connect()
        await b.connect()
        await a.migrate()
        yield {"A": a, "B": b}
    finally:
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                await a.close()
                await b.close()
        except TimeoutError:
            raise CheckFailed("hang", f"close() still running after {STEP_TIMEOUT} s") from None


async def run_sequence(
    config: ModelConfig,
    ops: Sequence[Op],
    faults: Faults,
    settings: dict[str, Any],
    tag: str,
) -> Failure | None:
    """Run ``ops`` on two fresh stores (ids and Redis prefix unique to ``tag``); the first
    broken promise, or None. Faults left open are healed at the end, then everything must
    converge and be durable."""
    step = -1
    run: _Run | None = None
    try:
        async with _stores(config, faults, settings, tag) as stores:
            run = _Run(config, faults, stores, ns=f"{tag}-")
            for step, op in enumerate(ops):
                run.log(step, f"{op!r} ...")
                try:
                    async with asyncio.timeout(STEP_TIMEOUT):
                        result = await run.step(op)
                except TimeoutError:
                    raise CheckFailed(
                        "hang", f"{op!r} still running after {STEP_TIMEOUT} s"
                    ) from None
                except StrataError as exc:
                    if not run.faulty or op.kind == "heal":
                        raise
                    result = f"raised {type(exc).__name__} (allowed during the fault)"
                run.history[-1] = f"{step:3d} {op!r} -> {result}"
            step = len(ops)
            run.log(step, "final heal")
            try:
                async with asyncio.timeout(STEP_TIMEOUT):
                    await run.heal()
                    await run.durable()
            except TimeoutError:
                raise CheckFailed(
                    "hang", f"the final heal still running after {STEP_TIMEOUT} s"
                ) from None
    except CheckFailed as exc:
        return Failure(exc.kind, str(exc), step, run.history if run else [])
    except StrataError as exc:
        return Failure("error", f"{type(exc).__name__}: {exc}", step, run.history if run else [])
    finally:
        await faults.heal()
    return None


async def shrink(
    ops: list[Op],
    fails: Callable[[list[Op]], Awaitable[Failure | None]],
    kind: str,
    *,
    budget: float,
) -> list[Op]:
    """Delta debugging (ddmin): the smallest sublist still failing with ``kind`` found
    within ``budget`` seconds."""
    deadline = time.monotonic() + budget
    n = 2
    while len(ops) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(ops) // n)
        reduced = False
        for start in range(0, len(ops), chunk):
            if time.monotonic() >= deadline:
                break
            candidate = ops[:start] + ops[start + chunk :]
            failure = await fails(candidate)
            if failure is not None and failure.kind == kind:
                ops, n, reduced = candidate, max(n - 1, 2), True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(ops), n * 2)
    return ops
