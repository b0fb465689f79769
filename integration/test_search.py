"""``search``, ``count`` and projections against real PostgreSQL and SQLite (issue 4).

Every answer is checked against the same predicate, ordering or slice evaluated in Python
over the rows that were inserted. The 10,000-row data set is written once per module and
dialect (``seeded``) and only read afterwards; each test opens its own ``DataStore`` on it,
so every test starts with empty caches. Tests that write (cache filling, read replicas)
use the per-test ``l3_env`` stores and a few dozen rows of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from integration import _services as svc
from integration._servers import FaultProxy, free_port
from integration.stacks import L3_STACKS, PG_STACKS, STACKS, Env, Stack, config_for
from strata import Config, DataStore, Field, PostgresPolicy, Q, Schema
from strata.errors import InvalidQueryError, TierUnavailableError, UnsupportedOperationError


class Player(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    region: str
    level: int
    score: float
    email: str | None = None
    created_at: datetime = Field(auto_now_add=True)
    secret: str = Field(default="", encrypted=True)


PLAYERS = Schema(name="players", model=Player)

N = 10_000
REGIONS = ("eu", "us", "asia")
BASE = datetime(2024, 1, 1, tzinfo=UTC)
INJECTION = "x'); DROP TABLE players; --"
INJECTION_ID = "p-injection"


def player(i: int) -> Player:
    # Usernames mix case ("Ana"/"ana") and LIKE wildcards ("_") so that like, ilike and
    # escaping each select a different set; scores are exact quarters (no float rounding).
    return Player(
        id=f"p{i:05d}",
        username=f"{'Ana' if i % 4 == 0 else 'ana'}{'_' if i % 5 == 0 else '-'}{i:05d}",
        region=REGIONS[i % 3],
        level=(i * 37) % 100,
        score=((i * 7919) % 10007) / 4,
        email=None if i % 7 == 0 else f"user{i}@{'Mail' if i % 2 else 'example'}.com",
        created_at=BASE + timedelta(minutes=i),
        secret=f"secret-{i}",
    )


ROWS: list[Player] = [player(i) for i in range(N - 1)] + [
    Player(
        id=INJECTION_ID,
        username=INJECTION,
        region="eu",
        level=0,
        score=0.0,
        created_at=BASE,
        secret="x",
    )
]
BY_ID = sorted(ROWS, key=lambda p: p.id)


def ids(found: list[Any]) -> list[str]:
    return [p["id"] if isinstance(p, dict) else p.id for p in found]


def expected(pred: Callable[[Player], bool]) -> list[str]:
    """Ids of the inserted rows the predicate selects, in id order."""
    return [p.id for p in BY_ID if pred(p)]


def like(value: str | None, pattern: str, *, fold: bool = False) -> bool:
    """SQL LIKE (``\\`` escapes) in Python; NULL never matches."""
    if value is None:
        return False
    parts, chars = [], iter(pattern)
    for c in chars:
        if c == "\\":
            parts.append(re.escape(next(chars)))
        elif c == "%":
            parts.append(".*")
        elif c == "_":
            parts.append(".")
        else:
            parts.append(re.escape(c))
    flags = re.DOTALL | (re.IGNORECASE if fold else 0)
    return re.fullmatch("".join(parts), value, flags) is not None


# --------------------------------------------------------------------------- the data set


@dataclasses.dataclass(frozen=True)
class Seeded:
    stack: Stack
    config: Config


SEEDED_STACKS = [s for s in STACKS if s.name in ("l1+sqlite", "l1+pg")]


async def _create_schema(pg_url: str, name: str, *, drop: bool = False) -> None:
    conn = await asyncpg.connect(svc.asyncpg_dsn(pg_url))
    try:
        if drop:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        else:
            await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()


async def _seed(config: Config, stack: Stack) -> None:
    ds = DataStore(config)
    ds.register(stack.adapt(PLAYERS))
    async with ds:
        await ds.migrate()
        await ds.set_many(Player, ROWS)


@pytest.fixture(scope="module", params=SEEDED_STACKS, ids=lambda s: s.name)
def seeded(
    request: pytest.FixtureRequest, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """10,000 players written once per module and dialect, in their own PostgreSQL schema
    or SQLite file (dropped after the module). Tests only read them."""
    stack: Stack = request.param
    name = f"t_{uuid.uuid4().hex[:8]}"
    config = config_for(
        stack,
        pg_url=pg_url,
        pg_schema=name,
        redis_url="redis://unused",
        prefix=name,
        sqlite=tmp_path_factory.mktemp("search") / "players.db",
        channel=f"{name}:inv",
    )
    if stack.l3 == "postgresql":
        asyncio.run(_create_schema(pg_url, name))
    try:
        asyncio.run(_seed(config, stack))
        yield Seeded(stack, config)
    finally:
        if stack.l3 == "postgresql":
            asyncio.run(_create_schema(pg_url, name, drop=True))


async def _open(seeded: Seeded, **changes: Any) -> DataStore:
    ds = DataStore(dataclasses.replace(seeded.config, **changes))
    ds.register(seeded.stack.adapt(PLAYERS))
    await ds.connect()
    return ds


@pytest.fixture
async def ds(seeded: Seeded) -> AsyncIterator[DataStore]:
    """A fresh store (empty L1) on the seeded data set."""
    store = await _open(seeded)
    try:
        yield store
    finally:
        await store.close()


# --------------------------------------------------------------------------- whole rows


async def test_search_returns_every_stored_model_unchanged(ds: DataStore) -> None:
    found = await ds.search(Player, Q().order_by("id").limit(0))

    assert found == BY_ID


async def test_count_without_a_filter_counts_every_row(ds: DataStore) -> None:
    assert await ds.count(Player) == N
    assert await ds.count(Player, Q()) == N


async def test_count_ignores_order_limit_offset_and_fields(ds: DataStore) -> None:
    q = Q().filter(region="us").order_by("-level").limit(5).offset(3).fields("id")

    assert await ds.count(Player, q) == len(expected(lambda p: p.region == "us"))


# --------------------------------------------------------------------------- filters

FILTERS = [
    pytest.param(Q().filter(region="eu"), lambda p: p.region == "eu", id="eq"),
    pytest.param(Q().filter(level__eq=42), lambda p: p.level == 42, id="eq-suffix"),
    pytest.param(Q().filter(region__ne="eu"), lambda p: p.region != "eu", id="ne"),
    pytest.param(Q().filter(level__gt=90), lambda p: p.level > 90, id="gt"),
    pytest.param(Q().filter(level__gte=90), lambda p: p.level >= 90, id="gte"),
    pytest.param(Q().filter(score__lt=100.25), lambda p: p.score < 100.25, id="lt-float"),
    pytest.param(Q().filter(score__lte=100.25), lambda p: p.score <= 100.25, id="lte-float"),
    pytest.param(
        Q().filter(created_at__gte=BASE + timedelta(minutes=9_000)),
        lambda p: p.created_at >= BASE + timedelta(minutes=9_000),
        id="gte-datetime",
    ),
    pytest.param(Q().filter(level__in=[1, 3, 5]), lambda p: p.level in (1, 3, 5), id="in"),
    pytest.param(
        Q().filter(region__in={"asia", "us"}), lambda p: p.region in ("asia", "us"), id="in-set"
    ),
    pytest.param(Q().filter(level__in=[]), lambda p: False, id="in-empty"),
    pytest.param(Q().filter(email__isnull=True), lambda p: p.email is None, id="isnull-true"),
    pytest.param(Q().filter(email__isnull=False), lambda p: p.email is not None, id="isnull-false"),
    pytest.param(Q().filter(email=None), lambda p: p.email is None, id="eq-none"),
    pytest.param(Q().filter(username__like="Ana%"), lambda p: like(p.username, "Ana%"), id="like"),
    pytest.param(
        Q().filter(username__like="ana\\_%"),
        lambda p: like(p.username, "ana\\_%"),
        id="like-escaped-underscore",
    ),
    pytest.param(
        Q().filter(email__like="%@Mail.com"), lambda p: like(p.email, "%@Mail.com"), id="like-null"
    ),
    pytest.param(
        Q().filter(username__ilike="ANA_0001%"),
        lambda p: like(p.username, "ANA_0001%", fold=True),
        id="ilike",
    ),
    pytest.param(
        Q().filter(region="eu", level__gte=10).where("level > $1", 20),
        lambda p: p.region == "eu" and p.level >= 10 and p.level > 20,
        id="filters-and-where",
    ),
    pytest.param(
        Q().where("level > $1 AND region = $2", 80, "us").where("score < $1", 1000.0),
        lambda p: p.level > 80 and p.region == "us" and p.score < 1000.0,
        id="two-wheres",
    ),
]


@pytest.mark.parametrize(("q", "pred"), FILTERS)
async def test_filter_returns_exactly_the_rows_the_same_python_predicate_selects(
    ds: DataStore, q: Q, pred: Callable[[Player], bool]
) -> None:
    found = await ds.search(Player, q.order_by("id").limit(0))

    assert ids(found) == expected(pred)


@pytest.mark.parametrize(("q", "pred"), FILTERS)
async def test_count_with_a_filter_equals_the_python_count(
    ds: DataStore, q: Q, pred: Callable[[Player], bool]
) -> None:
    assert await ds.count(Player, q) == len(expected(pred))


async def test_like_is_case_sensitive_and_ilike_is_not(ds: DataStore) -> None:
    upper = Q().filter(username__like="Ana-%").limit(0)
    either = Q().filter(username__ilike="ana-%").limit(0)

    assert await ds.count(Player, upper) == len(expected(lambda p: like(p.username, "Ana-%")))
    assert await ds.count(Player, either) > await ds.count(Player, upper)


# --------------------------------------------------------------------------- property test

INT_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")


@st.composite
def _pattern(draw: st.DrawFn, name: str) -> str:
    """A LIKE pattern cut from a stored value, with some letters' case flipped, some
    characters turned into ``_`` and ``%`` where it was cut: likely to match something,
    and to tell case-sensitive from case-insensitive matching."""
    value = getattr(ROWS[draw(st.integers(0, N - 2))], name) or "nobody@nowhere"
    size = draw(st.integers(1, min(len(value), 8)))
    start = draw(st.integers(0, len(value) - size))
    end = start + size
    out = []
    for c in value[start:end]:
        how = draw(st.sampled_from(("keep", "keep", "flip", "any")))
        if how == "any":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c.swapcase() if how == "flip" else c)
    lead = "%" if start > 0 or draw(st.booleans()) else ""
    tail = "%" if end < len(value) or draw(st.booleans()) else ""
    return lead + "".join(out) + tail


def _lookup_strategy() -> st.SearchStrategy[tuple[str, Any]]:
    def key(name: str, op: str) -> str:
        return name if op == "eq" and name == "region" else f"{name}__{op}"

    return st.one_of(
        st.tuples(st.sampled_from(INT_OPS), st.integers(-5, 105)).map(
            lambda t: (key("level", t[0]), t[1])
        ),
        st.tuples(st.sampled_from(INT_OPS), st.integers(-4, 10_010).map(lambda n: n / 4)).map(
            lambda t: (key("score", t[0]), t[1])
        ),
        st.tuples(
            st.sampled_from(INT_OPS),
            st.integers(-10, N + 10).map(lambda m: BASE + timedelta(minutes=m)),
        ).map(lambda t: (key("created_at", t[0]), t[1])),
        st.lists(st.integers(0, 99), max_size=5).map(lambda v: ("level__in", v)),
        st.tuples(st.sampled_from(("eq", "ne")), st.sampled_from((*REGIONS, "xx"))).map(
            lambda t: (key("region", t[0]), t[1])
        ),
        st.lists(st.sampled_from((*REGIONS, "xx")), max_size=3).map(lambda v: ("region__in", v)),
        st.booleans().map(lambda b: ("email__isnull", b)),
        _like_lookup(),
    )


def _like_lookup() -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(
        st.sampled_from(("username", "email", "region")), st.sampled_from(("like", "ilike"))
    ).flatmap(lambda t: _pattern(t[0]).map(lambda pat: (f"{t[0]}__{t[1]}", pat)))


def _python_lookup(p: Player, key: str, value: Any) -> bool:
    name, _, op = key.partition("__")
    op = op or "eq"
    actual = getattr(p, name)
    if op == "isnull":
        return (actual is None) is value
    if actual is None:  # SQL: a comparison with NULL is never true
        return False
    if op == "in":
        return actual in value
    if op in ("like", "ilike"):
        return like(actual, value, fold=op == "ilike")
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    return compare[op](actual, value)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(lookups=st.lists(_lookup_strategy(), min_size=1, max_size=3).map(dict))
async def test_any_filter_combination_matches_python_evaluation(
    ds: DataStore, lookups: dict[str, Any]
) -> None:
    found = await ds.search(Player, Q().filter(**lookups).fields("id").order_by("id").limit(0))

    want = expected(lambda p: all(_python_lookup(p, k, v) for k, v in lookups.items()))
    assert ids(found) == want
    assert await ds.count(Player, Q().filter(**lookups)) == len(want)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(lookup=_like_lookup())
async def test_any_like_pattern_matches_python_evaluation(
    ds: DataStore, lookup: tuple[str, str]
) -> None:
    key, pattern = lookup
    found = await ds.search(
        Player, Q().filter(**{key: pattern}).fields("id").order_by("id").limit(0)
    )

    assert ids(found) == expected(lambda p: _python_lookup(p, key, pattern))


# --------------------------------------------------------------------------- ordering
# Sorting 10,000 rows is what is checked here: the rows come back as small projections so
# that building 10,000 models per query does not dominate the run.


def column(found: list[dict[str, Any]], name: str) -> list[Any]:
    return [row[name] for row in found]


async def test_order_by_ascending_sorts_by_that_column(ds: DataStore) -> None:
    found = await ds.search(Player, Q().fields("id", "level").order_by("level").limit(0))

    assert column(found, "level") == sorted(p.level for p in ROWS)


async def test_desc_sorts_the_last_order_by_column_descending(ds: DataStore) -> None:
    found = await ds.search(Player, Q().fields("id", "score").order_by("score").desc().limit(0))

    assert column(found, "score") == sorted((p.score for p in ROWS), reverse=True)


async def test_minus_prefix_sorts_descending_like_desc(ds: DataStore) -> None:
    q = Q().fields("id", "created_at")
    minus = await ds.search(Player, q.order_by("-created_at").limit(0))
    desc = await ds.search(Player, q.order_by("created_at").desc().limit(0))

    newest_first = sorted((p.created_at for p in ROWS), reverse=True)
    assert column(minus, "created_at") == column(desc, "created_at") == newest_first


async def test_several_order_by_columns_sort_lexicographically(ds: DataStore) -> None:
    q = Q().fields("id").order_by("region", "-level").order_by("id").limit(0)

    found = await ds.search(Player, q)

    assert ids(found) == [p.id for p in sorted(ROWS, key=lambda p: (p.region, -p.level, p.id))]


async def test_desc_without_order_by_sorts_by_primary_key_descending(ds: DataStore) -> None:
    found = await ds.search(Player, Q().fields("id").desc().limit(0))

    assert ids(found) == [p.id for p in reversed(BY_ID)]


async def test_nulls_sort_last_ascending_and_first_descending(ds: DataStore) -> None:
    q = Q().fields("id", "email").limit(0)
    asc = await ds.search(Player, q.order_by("email", "id"))
    desc = await ds.search(Player, q.order_by("-email", "id"))

    emails = sorted(p.email for p in ROWS if p.email is not None)
    nulls = [None] * (N - len(emails))
    assert column(asc, "email") == [*emails, *nulls]
    assert column(desc, "email") == [*nulls, *reversed(emails)]
    assert ids(asc)[len(emails) :] == sorted(p.id for p in ROWS if p.email is None)


# --------------------------------------------------------------------------- limit, paging


async def test_default_limit_is_100_rows(ds: DataStore) -> None:
    unordered = await ds.search(Player)
    ordered = await ds.search(Player, Q().order_by("id"))

    assert len(unordered) == 100
    assert len(set(ids(unordered))) == 100
    assert set(ids(unordered)) <= {p.id for p in ROWS}
    assert ids(ordered) == [p.id for p in BY_ID[:100]]


async def test_default_limit_follows_the_config(seeded: Seeded) -> None:
    store = await _open(seeded, default_query_limit=250)
    try:
        found = await store.search(Player, Q().order_by("id"))
    finally:
        await store.close()

    assert ids(found) == [p.id for p in BY_ID[:250]]


async def test_limit_zero_returns_every_matching_row(ds: DataStore) -> None:
    found = await ds.search(Player, Q().filter(level__lt=50).limit(0))

    assert sorted(ids(found)) == expected(lambda p: p.level < 50)
    assert len(found) > 100


async def test_offset_without_limit_keeps_the_default_limit(ds: DataStore) -> None:
    tail = await ds.search(Player, Q().order_by("id").offset(N - 40))
    window = await ds.search(Player, Q().order_by("id").offset(500))
    unlimited = await ds.search(Player, Q().order_by("id").offset(N - 7).limit(0))

    assert ids(tail) == [p.id for p in BY_ID[N - 40 :]]
    assert ids(window) == [p.id for p in BY_ID[500:600]]
    assert ids(unlimited) == [p.id for p in BY_ID[N - 7 :]]


async def test_walking_every_page_returns_each_row_exactly_once_in_order(ds: DataStore) -> None:
    base = Q().fields("id").order_by("region", "-score", "id")
    size, seen = 700, list[str]()
    while True:
        page = await ds.search(Player, base.limit(size).offset(len(seen)))
        seen.extend(ids(page))
        if len(page) < size:
            break

    assert len(seen) == len(set(seen)) == N
    assert seen == [p.id for p in sorted(ROWS, key=lambda p: (p.region, -p.score, p.id))]


async def test_a_shared_base_query_is_not_changed_by_refining_it(ds: DataStore) -> None:
    base = Q().filter(region="asia")
    await ds.search(Player, base.order_by("-level").limit(3))

    assert await ds.count(Player, base) == len(expected(lambda p: p.region == "asia"))
    assert len(await ds.search(Player, base.build())) == 100


# --------------------------------------------------------------------------- projections


async def test_projection_returns_dicts_with_exactly_the_requested_fields(ds: DataStore) -> None:
    found = await ds.search(Player, Q().fields("id", "level").order_by("id").limit(0))

    assert all(type(row) is dict and set(row) == {"id", "level"} for row in found)
    assert found == [{"id": p.id, "level": p.level} for p in BY_ID]


async def test_projection_values_keep_their_python_types(ds: DataStore) -> None:
    q = Q().fields("id", "created_at", "email", "score").filter(level__lt=3).order_by("id")

    found = await ds.search(Player, q.limit(0))

    want = [
        {"id": p.id, "created_at": p.created_at, "email": p.email, "score": p.score}
        for p in BY_ID
        if p.level < 3
    ]
    assert found == want


async def test_projection_with_the_primary_key_decrypts_an_encrypted_field(
    ds: DataStore,
) -> None:
    found = await ds.search(Player, Q().fields("secret", "id").filter(region="us").limit(0))

    assert sorted(found, key=lambda r: r["id"]) == [
        {"id": p.id, "secret": p.secret} for p in BY_ID if p.region == "us"
    ]


async def test_projection_of_an_encrypted_field_without_the_primary_key_is_refused(
    ds: DataStore,
) -> None:
    with pytest.raises(InvalidQueryError) as info:
        await ds.search(Player, Q().fields("secret", "level"))

    assert info.value.identifier == "secret"


# --------------------------------------------------------------------------- hostile input

HOSTILE: list[Any] = [
    pytest.param(lambda: Q().filter(**{"level; DROP TABLE players": 1}), id="filter-semicolon"),
    pytest.param(lambda: Q().filter(**{'level" = 1 OR "x': 1}), id="filter-quote"),
    pytest.param(lambda: Q().filter(**{"level--": 1}), id="filter-comment"),
    pytest.param(lambda: Q().filter(**{"password": "x"}), id="filter-unknown-column"),
    pytest.param(lambda: Q().filter(**{"level__gt__or": 1}), id="filter-unknown-lookup"),
    pytest.param(lambda: Q().filter(**{"\uff4cevel": 1}), id="filter-fullwidth-letter"),
    pytest.param(lambda: Q().filter(**{"Level": 1}), id="filter-case-folded"),
    pytest.param(lambda: Q().filter(secret="secret-1"), id="filter-encrypted"),
    pytest.param(lambda: Q().order_by("level; DROP TABLE players"), id="order-semicolon"),
    pytest.param(lambda: Q().order_by('"level"'), id="order-quoted"),
    pytest.param(lambda: Q().order_by("level DESC, (SELECT 1)"), id="order-subquery"),
    pytest.param(lambda: Q().order_by("-\uff4cevel"), id="order-fullwidth-letter"),
    pytest.param(lambda: Q().order_by("secret"), id="order-encrypted"),
    pytest.param(lambda: Q().fields("id", "*"), id="fields-star"),
    pytest.param(lambda: Q().fields("id", "level FROM players; --"), id="fields-statement"),
    pytest.param(lambda: Q().fields("id", "pg_sleep"), id="fields-unknown"),
    pytest.param(lambda: Q().fields("id", "level\u200b"), id="fields-zero-width"),
    pytest.param(lambda: Q().where("level > 1; DROP TABLE players"), id="where-semicolon"),
    pytest.param(lambda: Q().where("level > 1 -- x"), id="where-comment"),
    pytest.param(lambda: Q().where("level > $1 /* x */", 1), id="where-block-comment"),
    pytest.param(lambda: Q().where("level > 1) OR (1 = 1"), id="where-parenthesis"),
    pytest.param(lambda: Q().where("username = $$x$$"), id="where-dollar-quote"),
    pytest.param(lambda: Q().where("username = 'a\\' OR 1=1 OR 'b'"), id="where-backslash"),
]


@pytest.mark.parametrize("build", HOSTILE)
async def test_hostile_query_is_refused_before_any_sql_and_the_table_survives(
    ds: DataStore, build: Callable[[], Q]
) -> None:
    before = ds.stats().l3_queries

    with pytest.raises(InvalidQueryError):
        await ds.search(Player, build())
    with pytest.raises(InvalidQueryError):
        await ds.count(Player, build())

    assert ds.stats().l3_queries == before
    assert await ds.count(Player) == N


async def test_sql_in_a_where_argument_is_bound_as_a_value(ds: DataStore) -> None:
    found = await ds.search(Player, Q().where("username = $1", INJECTION))
    filtered = await ds.search(Player, Q().filter(username=INJECTION))

    assert ids(found) == ids(filtered) == [INJECTION_ID]
    assert found[0].username == INJECTION
    assert await ds.count(Player) == N


# --------------------------------------------------------------------------- caches

SMALL = [player(i) for i in range(40)]
LEVEL_Q = Q().filter(level__gte=30).order_by("id").limit(0)
# Cache filling is checked on every L3 stack; what must NOT fill caches on one stack per
# mix of cache tiers (L1 only, L1+L2, L2 only).
EACH_TIER_MIX = [s for s in L3_STACKS if s.name in ("l1+sqlite", "l1+l2+pg", "l2+pg")]
WITH_L2 = [s for s in L3_STACKS if s.name in ("l1+l2+pg", "l2+pg")]


async def _writer_and_fresh_reader(env: Env) -> tuple[DataStore, DataStore]:
    """Rows written by one store, caches emptied, and a second store that has seen none."""
    writer = await env.make(PLAYERS)
    await writer.set_many(Player, SMALL)
    await writer.flush_dirty()  # write-behind: the rows must be in L3 to be searched
    await writer.invalidate_all(Player)  # L2 too: only the reader's search may fill it
    reader = await env.make(PLAYERS, migrate=False)
    return writer, reader


async def test_search_fills_the_caches_so_gets_of_returned_ids_need_no_l3_query(
    l3_env: Env,
) -> None:
    _, reader = await _writer_and_fresh_reader(l3_env)
    found = await reader.search(Player, LEVEL_Q)
    before = reader.stats()

    first = await reader.get(Player, found[0].id)
    one = reader.stats()
    rest = await reader.get_many(Player, ids(found[1:]))
    after = reader.stats()

    assert ids(found) == [p.id for p in SMALL if p.level >= 30]
    assert first == found[0]
    assert rest == {p.id: p for p in found[1:]}
    assert after.l3_queries == before.l3_queries
    hit = "l1_hits" if l3_env.stack.l1 else "l2_hits"
    assert getattr(one, hit) == getattr(before, hit) + 1
    assert getattr(after, hit) == getattr(before, hit) + len(found)


@pytest.mark.parametrize("l3_env", WITH_L2, ids=lambda s: s.name, indirect=True)
async def test_search_fills_l2_for_other_instances(l3_env: Env) -> None:
    _, reader = await _writer_and_fresh_reader(l3_env)
    found = await reader.search(Player, LEVEL_Q)
    other = await l3_env.make(PLAYERS, migrate=False)

    got = await other.get(Player, found[-1].id)

    assert got == found[-1]
    assert other.stats().l2_hits == 1
    assert other.stats().l3_queries == 0


@pytest.mark.parametrize("l3_env", EACH_TIER_MIX, ids=lambda s: s.name, indirect=True)
async def test_force_l3_search_leaves_the_caches_alone(l3_env: Env) -> None:
    _, reader = await _writer_and_fresh_reader(l3_env)
    found = await reader.search(Player, LEVEL_Q.force_l3())
    before = reader.stats()

    got = await reader.get(Player, found[0].id)

    after = reader.stats()
    assert got == found[0]
    assert after.l3_queries == before.l3_queries + 1
    assert after.l3_hits == before.l3_hits + 1


@pytest.mark.parametrize("l3_env", EACH_TIER_MIX, ids=lambda s: s.name, indirect=True)
async def test_a_projection_never_fills_the_caches(l3_env: Env) -> None:
    _, reader = await _writer_and_fresh_reader(l3_env)
    found = await reader.search(Player, LEVEL_Q.fields("id", "level", "secret"))
    before = reader.stats()

    got = await reader.get(Player, found[0]["id"])

    after = reader.stats()
    assert got.level == found[0]["level"]
    assert after.l3_queries == before.l3_queries + 1
    assert after.l3_hits == before.l3_hits + 1
    assert after.l1_hits == before.l1_hits and after.l2_hits == before.l2_hits


# --------------------------------------------------------------------------- read replica

L1_PG = next(s for s in STACKS if s.name == "l1+pg")
REPLICA_LOG = "read replica"


def _replica_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.levelno == logging.WARNING and REPLICA_LOG in r.getMessage()
    ]


def _with_replica(url: str) -> Schema:
    return dataclasses.replace(PLAYERS, l3=PostgresPolicy(read_replica=url))


@pytest.mark.parametrize("l3_env", PG_STACKS, ids=lambda s: s.name, indirect=True)
async def test_unreachable_read_replica_falls_back_to_the_primary(
    l3_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="strata")
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    ds = await l3_env.make(_with_replica(dead))
    await ds.set_many(Player, SMALL)
    await ds.flush_dirty()

    found = await ds.search(Player, LEVEL_Q)
    again = await ds.search(Player, Q().filter(region="eu").order_by("-level", "id"))
    counted = await ds.count(Player, Q().filter(level__lt=30))

    assert ids(found) == [p.id for p in SMALL if p.level >= 30]
    assert ids(again) == [
        p.id for p in sorted(SMALL, key=lambda p: (-p.level, p.id)) if p.region == "eu"
    ]
    assert counted == sum(p.level < 30 for p in SMALL)
    assert ds.stats().errors > 0
    assert len(_replica_warnings(caplog)) == 1


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.for_url(pg_url) as proxy:
        yield proxy


def _l1_pg_config(database_url: str, pg_schema: str, tmp_path: Path) -> Config:
    return config_for(
        L1_PG,
        pg_url=database_url,
        pg_schema=pg_schema,
        redis_url="redis://unused",
        prefix="unused",
        sqlite=tmp_path / "unused.db",
        channel="unused",
    )


async def test_a_working_read_replica_serves_searches_while_the_primary_is_away(
    pg_url: str, pg_schema: str, pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    # The primary is reached through a proxy, the "replica" is the same server reached
    # directly: with the proxy cut, only the replica can answer.
    ds = DataStore(_l1_pg_config(pg_proxy.url_for(pg_url), pg_schema, tmp_path))
    ds.register(L1_PG.adapt(_with_replica(pg_url)))
    async with ds:
        await ds.migrate()
        await ds.set_many(Player, SMALL)
        await pg_proxy.cut()

        found = await ds.search(Player, LEVEL_Q)
        counted = await ds.count(Player, Q().filter(region="us"))
        with pytest.raises(TierUnavailableError):
            await ds.get(Player, "p99999", force_l3=True)  # the primary really is away

        assert ids(found) == [p.id for p in SMALL if p.level >= 30]
        assert counted == sum(p.region == "us" for p in SMALL)


async def test_a_read_replica_that_goes_down_falls_back_and_warns_once(
    pg_url: str,
    pg_schema: str,
    pg_proxy: FaultProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="strata")
    ds = DataStore(_l1_pg_config(pg_url, pg_schema, tmp_path))
    ds.register(L1_PG.adapt(_with_replica(pg_proxy.url_for(pg_url))))
    async with ds:
        await ds.migrate()
        await ds.set_many(Player, SMALL)
        assert ids(await ds.search(Player, LEVEL_Q)) == [p.id for p in SMALL if p.level >= 30]
        assert ds.stats().errors == 0
        await pg_proxy.cut()

        found = await ds.search(Player, LEVEL_Q)
        again = await ds.search(Player, LEVEL_Q.desc())
        counted = await ds.count(Player, Q().filter(region="us"))

        assert ids(found) == [p.id for p in SMALL if p.level >= 30]
        assert ids(again) == list(reversed(ids(found)))
        assert counted == sum(p.region == "us" for p in SMALL)
        assert ds.stats().errors > 0
        assert len(_replica_warnings(caplog)) == 1


# --------------------------------------------------------------------------- no L3

NO_L3_STACKS = [Stack("l1-only", None), *(s for s in STACKS if s.l3 is None)]


@pytest.mark.parametrize("env", NO_L3_STACKS, ids=lambda s: s.name, indirect=True)
async def test_search_and_count_on_a_schema_without_l3_are_unsupported(env: Env) -> None:
    ds = await env.make(dataclasses.replace(PLAYERS, l3=None))
    await ds.set(Player, SMALL[0])

    with pytest.raises(UnsupportedOperationError):
        await ds.search(Player, Q())
    with pytest.raises(UnsupportedOperationError):
        await ds.search_cached(Player)
    with pytest.raises(UnsupportedOperationError):
        await ds.count(Player)
    assert await ds.get(Player, SMALL[0].id) == SMALL[0]
