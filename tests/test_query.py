"""Query building and SQL compilation: exact SQL per dialect, identifier safety, digests,
and the compiled SQLite SQL run for real against an in-memory database."""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from strata.config import Config
from strata.crypto import generate_key
from strata.errors import InvalidQueryError, UnsupportedOperationError
from strata.fields import Field
from strata.query import (
    LOOKUPS,
    CompiledQuery,
    Lookup,
    Q,
    Query,
    Where,
    as_query,
    compile_count,
    compile_select,
)
from strata.schema import ColumnSpec, CompiledSchema, PostgresPolicy, Schema, compile_schema


class Tier(enum.Enum):
    FREE = "free"
    GOLD = "gold"


class Rank(enum.Enum):
    LOW = 1
    HIGH = 2


class Player(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(default="")
    email: str | None = Field(default=None)
    level: int = Field(default=1)
    region: str = Field(default="eu")
    created_at: datetime = Field(auto_now_add=True)
    password_hash: str = Field(default="", omit_cache=True)
    display: str = Field(default="", column="display_name")
    tags: list[str] = Field(default_factory=list)
    tier: Tier = Field(default=Tier.FREE)
    rank: Rank = Field(default=Rank.LOW)


class Secret(BaseModel):
    id: str = Field(primary_key=True)
    api_key: str = Field(default="", encrypted=True)
    level: int = Field(default=0)


COLS = (
    '"id", "username", "email", "level", "region", "created_at", "password_hash", '
    '"display_name", "tags", "tier", "rank", "_strata_version"'
)
SELECT = f'SELECT {COLS} FROM "players"'


@pytest.fixture
def cs() -> CompiledSchema:
    return compile_schema(
        Schema(name="players", model=Player), Config(), has_cipher=False, metadata=sa.MetaData()
    )


@pytest.fixture
def secret_cs() -> CompiledSchema:
    return compile_schema(
        Schema(name="secrets", model=Secret),
        Config(encryption_key=generate_key()),
        has_cipher=True,
        metadata=sa.MetaData(),
    )


def pg(q: Q | Query | None, cs: CompiledSchema, **kw: Any) -> CompiledQuery:
    kw.setdefault("default_limit", 0)
    return compile_select(q, cs, "postgresql", **kw)


def lite(q: Q | Query | None, cs: CompiledSchema, **kw: Any) -> CompiledQuery:
    kw.setdefault("default_limit", 0)
    return compile_select(q, cs, "sqlite", **kw)


# --------------------------------------------------------------------------- SELECT basics


def test_empty_query_selects_every_column_plus_version(cs: CompiledSchema) -> None:
    for compiled in (pg(None, cs), lite(Q(), cs), pg(Query(), cs)):
        assert compiled.sql == SELECT
        assert compiled.args == ()
        assert compiled.columns == (
            "id",
            "username",
            "email",
            "level",
            "region",
            "created_at",
            "password_hash",
            "display_name",
            "tags",
            "tier",
            "rank",
            "_strata_version",
        )
        assert compiled.projection is False


def test_extra_columns_can_be_replaced(cs: CompiledSchema) -> None:
    compiled = pg(Q(), cs, extra_columns=())
    assert compiled.columns[-1] == "rank"
    assert compiled.sql.startswith('SELECT "id", ') and '"_strata_version"' not in compiled.sql


def test_where_numbers_placeholders_per_dialect(cs: CompiledSchema) -> None:
    q = Q().where("level > $1 AND region = $2", 10, "eu")
    assert pg(q, cs).sql == f"{SELECT} WHERE (level > $1 AND region = $2)"
    assert lite(q, cs).sql == f"{SELECT} WHERE (level > ?1 AND region = ?2)"
    assert pg(q, cs).args == lite(q, cs).args == (10, "eu")


def test_where_may_reuse_a_placeholder(cs: CompiledSchema) -> None:
    q = Q().filter(level=1).where("username = $1 OR email = $1", "ann")
    assert pg(q, cs).sql == f'{SELECT} WHERE "level" = $1 AND (username = $2 OR email = $2)'
    assert pg(q, cs).args == (1, "ann")


@pytest.mark.parametrize(
    ("lookups", "pg_where", "pg_args", "lite_where", "lite_args"),
    [
        ({"level": 5}, '"level" = $1', (5,), '"level" = ?1', (5,)),
        ({"level__eq": 5}, '"level" = $1', (5,), '"level" = ?1', (5,)),
        ({"level__ne": 5}, '"level" <> $1', (5,), '"level" <> ?1', (5,)),
        ({"level__gt": 5}, '"level" > $1', (5,), '"level" > ?1', (5,)),
        ({"level__gte": 5}, '"level" >= $1', (5,), '"level" >= ?1', (5,)),
        ({"level__lt": 5}, '"level" < $1', (5,), '"level" < ?1', (5,)),
        ({"level__lte": 5}, '"level" <= $1', (5,), '"level" <= ?1', (5,)),
        ({"email": None}, '"email" IS NULL', (), '"email" IS NULL', ()),
        ({"email__ne": None}, '"email" IS NOT NULL', (), '"email" IS NOT NULL', ()),
        ({"email__isnull": True}, '"email" IS NULL', (), '"email" IS NULL', ()),
        ({"email__isnull": False}, '"email" IS NOT NULL', (), '"email" IS NOT NULL', ()),
        (
            {"region__in": ["eu", "us"]},
            '"region" = ANY($1)',
            (["eu", "us"],),
            '"region" IN (?1, ?2)',
            ("eu", "us"),
        ),
        ({"region__in": []}, "1 = 0", (), "1 = 0", ()),
        (
            {"username__like": "a%"},
            "\"username\" LIKE $1 ESCAPE '\\'",
            ("a%",),
            "\"username\" LIKE ?1 ESCAPE '\\'",
            ("a%",),
        ),
        (
            {"username__ilike": "a%"},
            "\"username\" ILIKE $1 ESCAPE '\\'",
            ("a%",),
            "lower(\"username\") LIKE lower(?1) ESCAPE '\\'",
            ("a%",),
        ),
        ({"display": "x"}, '"display_name" = $1', ("x",), '"display_name" = ?1', ("x",)),
        ({"display_name": "x"}, '"display_name" = $1', ("x",), '"display_name" = ?1', ("x",)),
        (
            {"level__gte": 5, "region": "eu"},
            '"level" >= $1 AND "region" = $2',
            (5, "eu"),
            '"level" >= ?1 AND "region" = ?2',
            (5, "eu"),
        ),
    ],
)
def test_filter_lookup_sql(
    cs: CompiledSchema,
    lookups: dict[str, Any],
    pg_where: str,
    pg_args: tuple[Any, ...],
    lite_where: str,
    lite_args: tuple[Any, ...],
) -> None:
    q = Q().filter(**lookups)
    assert pg(q, cs).sql == f"{SELECT} WHERE {pg_where}"
    assert pg(q, cs).args == pg_args
    assert lite(q, cs).sql == f"{SELECT} WHERE {lite_where}"
    assert lite(q, cs).args == lite_args


def test_in_accepts_any_iterable_and_orders_sets(cs: CompiledSchema) -> None:
    assert lite(Q().filter(level__in=range(3)), cs).args == (0, 1, 2)
    assert lite(Q().filter(region__in={"us", "ap", "eu"}), cs).args == ("ap", "eu", "us")


def test_enum_filter_values_become_their_stored_text(cs: CompiledSchema) -> None:
    q = Q().filter(tier=Tier.GOLD, rank__in=[Rank.HIGH, Rank.LOW])
    assert pg(q, cs).args == ("gold", ["HIGH", "LOW"])
    assert lite(q, cs).args == ("gold", "HIGH", "LOW")


def test_to_db_converts_every_filter_value(cs: CompiledSchema) -> None:
    seen: list[str] = []

    def to_db(spec: ColumnSpec, value: Any) -> Any:
        seen.append(spec.name)
        return value.isoformat() if isinstance(value, datetime) else value

    when = datetime(2024, 1, 2, tzinfo=UTC)
    assert lite(Q().filter(tier=Tier.GOLD), cs, to_db=to_db).args == ("gold",)
    seen.clear()
    q = Q().filter(created_at__gte=when, level__in=[1, 2]).where("level > $1", when)
    compiled = lite(q, cs, to_db=to_db)
    assert compiled.args == ("2024-01-02T00:00:00+00:00", 1, 2, when)  # where() args as given
    assert seen == ["created_at", "level", "level"]


def test_conditions_are_renumbered_across_where_and_filter_calls(cs: CompiledSchema) -> None:
    q = (
        Q()
        .where("level > $1", 3)
        .filter(region__in=["eu", "us"], email=None)
        .where("username <> $2 AND username <> $1", "a", "b")
        .filter(level__lt=9)
    )
    assert pg(q, cs).sql == (
        f'{SELECT} WHERE (level > $1) AND "region" = ANY($2) AND "email" IS NULL '
        'AND (username <> $4 AND username <> $3) AND "level" < $5'
    )
    assert pg(q, cs).args == (3, ["eu", "us"], "a", "b", 9)
    assert lite(q, cs).sql == (
        f'{SELECT} WHERE (level > ?1) AND "region" IN (?2, ?3) AND "email" IS NULL '
        'AND (username <> ?5 AND username <> ?4) AND "level" < ?6'
    )
    assert lite(q, cs).args == (3, "eu", "us", "a", "b", 9)


def test_placeholders_inside_quoted_text_are_left_alone(cs: CompiledSchema) -> None:
    q = Q().filter(level=1).where("username = '$1 costs $2' AND \"level\" > $1", 5)
    assert (
        pg(q, cs).sql
        == f'{SELECT} WHERE "level" = $1 AND (username = \'$1 costs $2\' AND "level" > $2)'
    )
    assert (
        lite(q, cs).sql
        == f'{SELECT} WHERE "level" = ?1 AND (username = \'$1 costs $2\' AND "level" > ?2)'
    )
    assert pg(q, cs).args == (1, 5)


def test_semicolon_and_comment_markers_inside_string_literals_are_allowed(
    cs: CompiledSchema,
) -> None:
    q = Q().where("username <> 'a;b--c/*d' AND username <> 'it''s'")
    assert pg(q, cs).sql == f"{SELECT} WHERE (username <> 'a;b--c/*d' AND username <> 'it''s')"


# --------------------------------------------------------------------------- ordering, paging


def test_order_by_and_desc(cs: CompiledSchema) -> None:
    q = Q().order_by("level").desc().order_by("created_at")
    assert pg(q, cs).sql == f'{SELECT} ORDER BY "level" DESC, "created_at"'
    assert lite(q, cs).sql == f'{SELECT} ORDER BY "level" DESC, "created_at"'


def test_minus_prefix_sorts_descending(cs: CompiledSchema) -> None:
    assert pg(Q().order_by("-level", "username"), cs).sql == (
        f'{SELECT} ORDER BY "level" DESC, "username"'
    )


def test_desc_without_order_by_orders_by_primary_key_descending(cs: CompiledSchema) -> None:
    assert pg(Q().desc(), cs).sql == f'{SELECT} ORDER BY "id" DESC'


def test_sqlite_sorts_nulls_like_postgresql(cs: CompiledSchema) -> None:
    q = Q().order_by("email", "-email")
    assert pg(q, cs).sql == f'{SELECT} ORDER BY "email", "email" DESC'
    assert lite(q, cs).sql == f'{SELECT} ORDER BY "email" NULLS LAST, "email" DESC NULLS FIRST'


def test_limit_none_takes_the_default(cs: CompiledSchema) -> None:
    for q in (Q(), Q().limit(5).limit(None)):
        compiled = pg(q, cs, default_limit=100)
        assert (compiled.sql, compiled.args) == (f"{SELECT} LIMIT $1 OFFSET $2", (100, 0))


def test_explicit_limit_overrides_the_default(cs: CompiledSchema) -> None:
    assert pg(Q().limit(25), cs, default_limit=100).args == (25, 0)


def test_limit_zero_means_no_limit(cs: CompiledSchema) -> None:
    assert pg(Q().limit(0), cs, default_limit=100).sql == SELECT
    assert lite(Q().limit(0), cs, default_limit=100).sql == SELECT


def test_limit_and_offset(cs: CompiledSchema) -> None:
    q = Q().limit(25).offset(50)
    assert (pg(q, cs).sql, pg(q, cs).args) == (f"{SELECT} LIMIT $1 OFFSET $2", (25, 50))
    assert (lite(q, cs).sql, lite(q, cs).args) == (f"{SELECT} LIMIT ?1 OFFSET ?2", (25, 50))


def test_offset_without_limit(cs: CompiledSchema) -> None:
    q = Q().limit(0).offset(10)
    # NULL is no limit on PostgreSQL; SQLite needs a LIMIT before OFFSET and reads -1 so.
    assert (pg(q, cs).sql, pg(q, cs).args) == (f"{SELECT} LIMIT $1 OFFSET $2", (None, 10))
    assert (lite(q, cs).sql, lite(q, cs).args) == (f"{SELECT} LIMIT ?1 OFFSET ?2", (-1, 10))


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True, None])
def test_bad_offset_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidQueryError):
        Q().offset(bad)


@pytest.mark.parametrize("bad", [-1, 2.0, "10", False])
def test_bad_limit_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidQueryError):
        Q().limit(bad)


def test_full_example_from_the_design(cs: CompiledSchema) -> None:
    q = (
        Q()
        .where("level > $1 AND region = $2", 10, "eu")
        .filter(level__gte=5, region__in=["eu", "us"], email__isnull=False, username__ilike="a%")
        .order_by("level")
        .desc()
        .order_by("created_at")
        .limit(25)
        .offset(50)
        .fields("id", "level")
    )
    compiled = pg(q, cs, default_limit=100)
    assert compiled.sql == (
        'SELECT "id", "level" FROM "players" WHERE (level > $1 AND region = $2) '
        'AND "level" >= $3 AND "region" = ANY($4) AND "email" IS NOT NULL '
        "AND \"username\" ILIKE $5 ESCAPE '\\' "
        'ORDER BY "level" DESC, "created_at" LIMIT $6 OFFSET $7'
    )
    assert compiled.args == (10, "eu", 5, ["eu", "us"], "a%", 25, 50)
    compiled = lite(q, cs, default_limit=100)
    assert compiled.sql == (
        'SELECT "id", "level" FROM "players" WHERE (level > ?1 AND region = ?2) '
        'AND "level" >= ?3 AND "region" IN (?4, ?5) AND "email" IS NOT NULL '
        "AND lower(\"username\") LIKE lower(?6) ESCAPE '\\' "
        'ORDER BY "level" DESC, "created_at" LIMIT ?7 OFFSET ?8'
    )
    assert compiled.args == (10, "eu", 5, "eu", "us", "a%", 25, 50)


# --------------------------------------------------------------------------- projection, table


def test_fields_selects_exactly_the_requested_columns(cs: CompiledSchema) -> None:
    compiled = pg(Q().fields("level", "display", "id", "display_name"), cs)
    assert compiled.sql == 'SELECT "level", "display_name", "id" FROM "players"'
    assert compiled.columns == ("level", "display_name", "id")
    assert compiled.projection is True


def test_a_later_fields_call_replaces_the_earlier(cs: CompiledSchema) -> None:
    assert pg(Q().fields("id", "level").fields("email"), cs).columns == ("email",)


def test_fields_needs_a_column() -> None:
    with pytest.raises(InvalidQueryError):
        Q().fields()


def test_schema_qualified_table_on_postgresql_only() -> None:
    qualified = compile_schema(
        Schema(name="players", model=Player, l3=PostgresPolicy(db_schema="game")),
        Config(),
        has_cipher=False,
        metadata=sa.MetaData(),
    )
    assert pg(Q().fields("id"), qualified).sql == 'SELECT "id" FROM "game"."players"'
    # the SQLite tier creates its tables without a schema (SQLite has none)
    assert lite(Q().fields("id"), qualified).sql == 'SELECT "id" FROM "players"'


def test_unknown_dialect_is_refused(cs: CompiledSchema) -> None:
    with pytest.raises(UnsupportedOperationError):
        compile_select(Q(), cs, "mysql", default_limit=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- immutability


def test_building_from_a_shared_base_leaves_the_base_unchanged(cs: CompiledSchema) -> None:
    base = Q().filter(region="eu")
    before = pg(base, cs)
    derived = [
        base.where("level > $1", 1),
        base.filter(level=2),
        base.order_by("level"),
        base.desc(),
        base.limit(3),
        base.offset(4),
        base.fields("id"),
        base.force_l3(),
        base.force_l2(),
    ]
    assert base == Q().filter(region="eu")
    assert pg(base, cs) == before
    assert all(d != base for d in derived)


def test_desc_does_not_touch_the_query_it_was_called_on(cs: CompiledSchema) -> None:
    asc = Q().order_by("level")
    asc.desc()
    assert pg(asc, cs).sql == f'{SELECT} ORDER BY "level"'


def test_in_values_are_copied_when_filtering(cs: CompiledSchema) -> None:
    regions = ["eu"]
    q = Q().filter(region__in=regions)
    regions.append("us")
    assert lite(q, cs).args == ("eu",)


def test_build_and_as_query_give_the_same_immutable_value() -> None:
    q = Q().filter(level=1).force_l3()
    built = q.build()
    assert isinstance(built, Query)
    assert as_query(q) == built == as_query(built)
    assert built.tier == "l3"
    assert Q().force_l3().force_l2().build().tier == "l2"
    assert as_query(None) == Query() == Q().build()
    with pytest.raises(InvalidQueryError):
        as_query("SELECT 1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "query",
    [
        Query(conditions=(Where("level > $1", ()),)),
        Query(conditions=(Where("level > 1; DROP TABLE players", ()),)),
        Query(conditions=(Lookup("level__gt", "level", "eq", None),)),
        Query(conditions=(Lookup("level; --", "level", "eq", 1),)),
        Query(conditions=("level = 1",)),  # type: ignore[arg-type]
        Query(ordering=(("level desc", False),)),
        Query(ordering=((["level"], False),)),  # type: ignore[arg-type]
        Query(fields=("id", 'x" FROM y --')),
        Query(limit=-1),
        Query(offset=-5),
    ],
)
def test_hand_made_query_is_checked_when_compiled(cs: CompiledSchema, query: Query) -> None:
    with pytest.raises(InvalidQueryError):
        pg(query, cs)


def test_q_continues_building_from_a_query(cs: CompiledSchema) -> None:
    built = Q().filter(level=1).build()
    compiled = pg(Q(built).limit(3), cs)
    assert compiled.sql == f'{SELECT} WHERE "level" = $1 LIMIT $2 OFFSET $3'
    assert compiled.args == (1, 3, 0)


@pytest.mark.parametrize("bad", [-1, True, 2.5])
def test_bad_default_limit_is_refused(cs: CompiledSchema, bad: Any) -> None:
    with pytest.raises(InvalidQueryError):
        compile_select(Q(), cs, "sqlite", default_limit=bad)


# --------------------------------------------------------------------------- identifier safety

HOSTILE = [
    "level; DROP TABLE x",
    'level"',
    "level--",
    "lev el",
    "l\u0435vel",  # Cyrillic ie, U+0435
    "\uff4cevel",  # fullwidth l, U+FF4C
    "level\x00",
    "levels",
    "LEVEL",
    "",
    "_strata_version",
]


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_hostile_filter_key_is_refused(cs: CompiledSchema, bad: str, dialect: Any) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile_select(Q().filter(**{bad: 1}), cs, dialect, default_limit=0)
    assert info.value.identifier == bad
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_filter_key_with_a_lookup_is_refused(cs: CompiledSchema, bad: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        pg(Q().filter(**{f"{bad}__gt": 1}), cs)
    assert info.value.identifier == f"{bad}__gt"


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_hostile_order_by_is_refused(cs: CompiledSchema, bad: str, dialect: Any) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile_select(Q().order_by("level", bad), cs, dialect, default_limit=0)
    assert info.value.identifier == bad


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_descending_order_by_is_refused(cs: CompiledSchema, bad: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        pg(Q().order_by(f"-{bad}"), cs)
    assert info.value.identifier == bad


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_hostile_field_is_refused(cs: CompiledSchema, bad: str, dialect: Any) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile_select(Q().fields("id", bad), cs, dialect, default_limit=0)
    assert info.value.identifier == bad


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_identifier_is_refused_by_count_too(cs: CompiledSchema, bad: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile_count(Q().order_by(bad), cs, "postgresql")
    assert info.value.identifier == bad


def test_non_string_identifier_is_refused() -> None:
    with pytest.raises(InvalidQueryError):
        Q().order_by(1)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError):
        Q().fields(None)  # type: ignore[arg-type]


def test_unknown_column_error_lists_the_columns(cs: CompiledSchema) -> None:
    with pytest.raises(InvalidQueryError, match="level, region"):
        pg(Q().filter(levle=3), cs)


def test_unknown_lookup_suffix_lists_the_valid_ones(cs: CompiledSchema) -> None:
    with pytest.raises(InvalidQueryError) as info:
        pg(Q().filter(level__between=3), cs)
    assert info.value.identifier == "level__between"
    for lookup in LOOKUPS:
        assert lookup in str(info.value)


# --------------------------------------------------------------------------- column rules


def test_filter_on_an_encrypted_column_is_refused(secret_cs: CompiledSchema) -> None:
    for q in (Q().filter(api_key="k"), Q().filter(api_key__in=["k"])):
        with pytest.raises(InvalidQueryError, match="encrypted") as info:
            pg(q, secret_cs)
        assert info.value.identifier in ("api_key", "api_key__in")


def test_order_by_an_encrypted_column_is_refused(secret_cs: CompiledSchema) -> None:
    with pytest.raises(InvalidQueryError, match="encrypted") as info:
        lite(Q().order_by("-api_key"), secret_cs)
    assert info.value.identifier == "api_key"


def test_encrypted_column_can_be_selected(secret_cs: CompiledSchema) -> None:
    compiled = pg(Q().fields("id", "api_key").filter(level=1), secret_cs)
    assert compiled.sql == 'SELECT "id", "api_key" FROM "secrets" WHERE "level" = $1'


def test_omit_cache_column_can_be_filtered_ordered_and_selected(cs: CompiledSchema) -> None:
    q = Q().filter(password_hash="x").order_by("password_hash").fields("password_hash")
    assert pg(q, cs).sql == (
        'SELECT "password_hash" FROM "players" WHERE "password_hash" = $1 ORDER BY "password_hash"'
    )


def test_json_column_only_takes_isnull(cs: CompiledSchema) -> None:
    with pytest.raises(InvalidQueryError, match="JSON"):
        pg(Q().filter(tags=["a"]), cs)
    assert pg(Q().filter(tags__isnull=True), cs).sql == f'{SELECT} WHERE "tags" IS NULL'


def test_like_needs_a_text_column(cs: CompiledSchema) -> None:
    with pytest.raises(InvalidQueryError, match="text"):
        pg(Q().filter(level__like="1%"), cs)


@pytest.mark.parametrize(
    "lookups",
    [
        {"level__gt": None},
        {"email__lte": None},
        {"email__isnull": "yes"},
        {"email__isnull": 1},
        {"username__like": 5},
        {"region__in": "eu"},
        {"region__in": 5},
        {"region__in": {"eu": 1}},
    ],
)
def test_badly_shaped_lookup_value_is_refused(lookups: dict[str, Any]) -> None:
    with pytest.raises(InvalidQueryError) as info:
        Q().filter(**lookups)
    assert info.value.identifier == next(iter(lookups))


# --------------------------------------------------------------------------- where() guards


@pytest.mark.parametrize(
    "sql",
    [
        "level > 1; DROP TABLE players",
        "level > 1 -- and the rest",
        "level > 1 /* hidden */",
        "level > $1 OR 1=1;",
        "username = `x`",
        "level > 1) OR (1 = 1",
        "(level > 1",
        "username = $$text$$",
        "username = $name",
        "username = 'unterminated",
        "username = E'\\'' ; DROP TABLE x; '",
        "username = 'a\\' OR 1=1",
        'username = "unterminated',
        "level > 1\x00",
    ],
)
def test_unsafe_where_sql_is_refused(sql: str) -> None:
    args = (1,) if "$1" in sql else ()
    with pytest.raises(InvalidQueryError):
        Q().where(sql, *args)


def test_empty_where_sql_is_refused() -> None:
    with pytest.raises(InvalidQueryError):
        Q().where("  ")


def test_sqlite_parameter_markers_are_refused_only_for_sqlite(cs: CompiledSchema) -> None:
    q = Q().where("tags ? $1", "a")  # PostgreSQL's jsonb key-exists operator
    assert pg(q, cs).sql == f"{SELECT} WHERE (tags ? $1)"
    with pytest.raises(InvalidQueryError, match="SQLite parameter"):
        lite(q, cs)


def test_sqlite_bracket_identifiers_hide_nothing(cs: CompiledSchema) -> None:
    # in SQLite "[x']" is an identifier: the quote inside must not start a string literal
    with pytest.raises(InvalidQueryError):
        Q().where("[x'] = 1; DROP TABLE players --'")


def test_placeholder_in_array_subscript_is_postgresql_only(cs: CompiledSchema) -> None:
    q = Q().where("tags[$1] = 'x'", 1)
    assert pg(q, cs).sql == f"{SELECT} WHERE (tags[$1] = 'x')"
    with pytest.raises(InvalidQueryError, match="placeholders"):
        lite(q, cs)  # in SQLite [$1] is a quoted identifier, not a subscript


def test_dollar_inside_an_identifier_is_not_a_placeholder(cs: CompiledSchema) -> None:
    q = Q().where("a$1 = $1", 3)
    assert pg(q, cs).sql == f"{SELECT} WHERE (a$1 = $1)"


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("level > $1", ()),
        ("level > $1 AND region = $2", (1,)),
        ("level > $1", (1, 2)),
        ("level > 1", (1,)),
        ("level > $0", ()),
        ("level > $2", (1,)),
        ("level > $1 AND level < $3", (1, 2, 3)),
    ],
)
def test_placeholder_count_must_match_the_arguments(sql: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidQueryError, match="placeholders"):
        Q().where(sql, *args)


# --------------------------------------------------------------------------- digest


def test_digest_is_equal_for_equal_queries(cs: CompiledSchema) -> None:
    a = pg(Q().filter(level__gt=3).order_by("level"), cs)
    b = pg(Q().filter(level__gt=3).order_by("level"), cs)
    assert a.digest() == b.digest()
    assert len(a.digest()) == 40


def test_digest_tells_argument_boundaries_apart() -> None:
    one = CompiledQuery("SELECT 1", (["1 2"],), ("x",), False)
    two = CompiledQuery("SELECT 1", (["1", "2"],), ("x",), False)
    assert one.digest() != two.digest()
    flat_one = CompiledQuery("SELECT 1", ("1 2",), ("x",), False)
    flat_two = CompiledQuery("SELECT 1", ("1", "2"), ("x",), False)
    assert flat_one.digest() != flat_two.digest()


@pytest.mark.parametrize(
    ("a", "b"),
    [(1, "1"), (1, 1.0), (1, True), (0, None), ("None", None), (b"a", "a"), ([1], (1,))],
)
def test_digest_tells_argument_types_apart(a: Any, b: Any) -> None:
    assert (
        CompiledQuery("S", (a,), (), False).digest() != CompiledQuery("S", (b,), (), False).digest()
    )


def test_digest_depends_on_the_sql_and_values(cs: CompiledSchema) -> None:
    digests = {
        pg(Q().filter(level=1), cs).digest(),
        pg(Q().filter(level=2), cs).digest(),
        pg(Q().filter(level__gt=1), cs).digest(),
        lite(Q().filter(level=1), cs).digest(),
    }
    assert len(digests) == 4


# --------------------------------------------------------------------------- count


def test_count_ignores_order_limit_offset_and_fields(cs: CompiledSchema) -> None:
    q = Q().filter(level__gt=3).order_by("level").limit(5).offset(10).fields("id")
    compiled = compile_count(q, cs, "postgresql")
    assert compiled.sql == 'SELECT count(*) AS "count" FROM "players" WHERE "level" > $1'
    assert compiled.args == (3,)
    assert compiled.columns == ("count",)
    assert compile_count(None, cs, "sqlite").sql == 'SELECT count(*) AS "count" FROM "players"'


# --------------------------------------------------------------------------- run on SQLite

ROWS: list[dict[str, Any]] = [
    {"id": "p1", "username": "Ann", "email": "ann@x", "level": 10, "region": "eu", "tier": "gold"},
    {"id": "p2", "username": "bob", "email": None, "level": 5, "region": "us", "tier": "free"},
    {"id": "p3", "username": "cat", "email": "cat@x", "level": 7, "region": "eu", "tier": "free"},
    {"id": "p4", "username": "alf", "email": None, "level": 12, "region": "ap", "tier": "gold"},
    {"id": "p5", "username": "dan", "email": "dan@x", "level": 1, "region": "us", "tier": "free"},
]


@pytest.fixture
def db(cs: CompiledSchema) -> Iterator[sqlite3.Connection]:
    engine = sa.create_engine("sqlite://")
    assert cs.table.metadata is not None
    cs.table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            cs.table.insert(),
            [
                {**row, "tags": [], "created_at": f"2024-01-0{i + 1}T00:00:00+00:00"}
                for i, row in enumerate(ROWS)
            ],
        )
    raw = engine.raw_connection()
    try:
        yield raw.driver_connection  # type: ignore[misc]
    finally:
        raw.close()
        engine.dispose()


def run(db: sqlite3.Connection, compiled: CompiledQuery) -> list[tuple[Any, ...]]:
    return db.execute(compiled.sql, compiled.args).fetchall()


def ids(db: sqlite3.Connection, cs: CompiledSchema, q: Q) -> list[str]:
    compiled = lite(q.fields("id"), cs)
    return [r[0] for r in run(db, compiled)]


def test_compiled_sqlite_sql_selects_every_column(
    db: sqlite3.Connection, cs: CompiledSchema
) -> None:
    rows = run(db, lite(Q().filter(id="p1"), cs))
    assert len(rows) == 1
    row = dict(zip(lite(Q(), cs).columns, rows[0], strict=True))
    assert row["username"] == "Ann" and row["_strata_version"] == 0


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (Q().order_by("id"), ["p1", "p2", "p3", "p4", "p5"]),
        (Q().desc(), ["p5", "p4", "p3", "p2", "p1"]),
        (Q().filter(level__gte=7).order_by("-level"), ["p4", "p1", "p3"]),
        (Q().filter(region__in=["eu", "ap"], level__lt=12).order_by("id"), ["p1", "p3"]),
        (Q().filter(region__in=[]), []),
        (Q().filter(email=None).order_by("id"), ["p2", "p4"]),
        (Q().filter(email__ne="ann@x").order_by("id"), ["p3", "p5"]),
        (Q().filter(email__isnull=False).order_by("id"), ["p1", "p3", "p5"]),
        (Q().filter(username__ilike="A%").order_by("id"), ["p1", "p4"]),
        (Q().filter(username__like="_a%").order_by("id"), ["p3", "p5"]),
        (Q().filter(tier=Tier.GOLD).order_by("id"), ["p1", "p4"]),
        (Q().where("level > $1 AND region = $2", 4, "eu").order_by("level"), ["p3", "p1"]),
        (
            Q().where("level > $1", 1).filter(region="us").where("username <> $1", "x"),
            ["p2"],
        ),
        (Q().where("username <> '$1'").filter(level__gt=10), ["p4"]),
        (Q().order_by("email", "id"), ["p1", "p3", "p5", "p2", "p4"]),
        (Q().order_by("-email", "id"), ["p2", "p4", "p5", "p3", "p1"]),
        (Q().order_by("level").limit(2), ["p5", "p2"]),
        (Q().order_by("level").limit(2).offset(2), ["p3", "p1"]),
        (Q().order_by("level").limit(0).offset(3), ["p1", "p4"]),
    ],
)
def test_compiled_sqlite_sql_returns_the_right_rows(
    db: sqlite3.Connection, cs: CompiledSchema, q: Q, expected: list[str]
) -> None:
    assert ids(db, cs, q) == expected


def test_like_escape_matches_a_literal_wildcard(db: sqlite3.Connection, cs: CompiledSchema) -> None:
    db.execute("UPDATE players SET username = 'a_b' WHERE id = 'p5'")
    assert ids(db, cs, Q().filter(username__like="a\\_%")) == ["p5"]


def test_default_limit_applies_on_sqlite(db: sqlite3.Connection, cs: CompiledSchema) -> None:
    compiled = compile_select(Q().fields("id"), cs, "sqlite", default_limit=3)
    assert len(run(db, compiled)) == 3


def test_compiled_sqlite_count(db: sqlite3.Connection, cs: CompiledSchema) -> None:
    compiled = compile_count(Q().filter(region="eu").limit(1).order_by("level"), cs, "sqlite")
    assert run(db, compiled) == [(2,)]


def test_pages_share_one_statement_text_with_limit_and_offset_bound(cs: CompiledSchema) -> None:
    # Inlined literals made every page a new prepared statement (issue 14).
    for compile_ in (pg, lite):
        first = compile_(Q().order_by("id").limit(25), cs)
        later = compile_(Q().order_by("id").limit(25).offset(300), cs)
        other_size = compile_(Q().order_by("id").limit(50).offset(300), cs)
        assert first.sql == later.sql == other_size.sql
        assert "300" not in later.sql and "25" not in first.sql
        assert first.args == (25, 0)
        assert later.args == (25, 300)
        assert other_size.args == (50, 300)
        assert first.digest() != later.digest()
