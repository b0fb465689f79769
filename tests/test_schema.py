"""Schema compilation: field flags, type mapping, DDL, and every register() error."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Literal

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from strata import (
    Config,
    DataStore,
    Field,
    Index,
    MemPolicy,
    PostgresPolicy,
    RedisPolicy,
    Schema,
    WriteMode,
    errors,
    generate_key,
)
from strata.schema import VERSION_COLUMN, ColumnKind, compile_schema, snake_case


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Prio(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Inner(BaseModel):
    a: int
    b: list[str] = []


class Everything(BaseModel):
    id: str = Field(primary_key=True)
    s: str = "x"
    i: int = 7
    f: float = 1.5
    b: bool = True
    dt: datetime | None = None
    d: date | None = None
    t: time | None = None
    by: bytes | None = None
    u: uuid.UUID | None = None
    dec: Decimal | None = None
    color: Color = Color.RED
    prio: Prio = Prio.LOW
    inner: Inner | None = None
    tags: list[str] = []
    attrs: dict[str, int] = {}
    kind: Literal["a", "b"] = "a"


def compiled(model: type[BaseModel], *, key: bool = False, **schema_kw: object):
    config = Config(encryption_key=generate_key()) if key else Config()
    return compile_schema(
        Schema(model=model, **schema_kw),  # type: ignore[arg-type]
        config,
        has_cipher=key,
        metadata=sa.MetaData(),
    )


def ddl(model: type[BaseModel], dialect: str = "postgresql", **kw: object) -> str:
    cs = compiled(model, **kw)
    d = postgresql.dialect() if dialect == "postgresql" else sqlite.dialect()
    return str(CreateTable(cs.table).compile(dialect=d))


def test_every_type_maps_to_its_postgresql_column_type() -> None:
    cs = compiled(Everything)
    types = {c.name: c.type.compile(postgresql.dialect()) for c in cs.table.columns}
    assert types == {
        "id": "TEXT",
        "s": "TEXT",
        "i": "BIGINT",
        "f": "DOUBLE PRECISION",
        "b": "BOOLEAN",
        "dt": "TIMESTAMP WITH TIME ZONE",
        "d": "DATE",
        "t": "TIME WITHOUT TIME ZONE",
        "by": "BYTEA",
        "u": "UUID",
        "dec": "NUMERIC",
        "color": "TEXT",
        "prio": "TEXT",
        "inner": "JSONB",
        "tags": "JSONB",
        "attrs": "JSONB",
        "kind": "TEXT",
        VERSION_COLUMN: "BIGINT",
    }


def test_every_type_maps_to_a_sqlite_affinity() -> None:
    cs = compiled(Everything)
    types = {c.name: c.type.compile(sqlite.dialect()) for c in cs.table.columns}
    assert types["i"] == "BIGINT"
    assert types["dt"] == "TEXT"
    assert types["dec"] == "TEXT"  # NUMERIC affinity would round Decimals through REAL
    assert types["u"] == "TEXT"
    assert types["inner"] == "JSON"
    assert types["by"] == "BLOB"


def test_optional_fields_are_nullable_and_others_not_null() -> None:
    cs = compiled(Everything)
    assert cs.table.c.dt.nullable is True
    assert cs.table.c.s.nullable is False
    assert cs.table.c.id.nullable is False


def test_nullable_flag_overrides_the_annotation() -> None:
    class M(BaseModel):
        id: int = Field(primary_key=True)
        x: str = Field(default="", nullable=True)

    assert compiled(M).table.c.x.nullable is True


def test_literal_defaults_become_ddl_defaults() -> None:
    text = ddl(Everything)
    assert "s TEXT DEFAULT 'x' NOT NULL" in text
    assert "i BIGINT DEFAULT 7 NOT NULL" in text
    assert "f DOUBLE PRECISION DEFAULT 1.5 NOT NULL" in text
    assert "b BOOLEAN DEFAULT true NOT NULL" in text
    assert "color TEXT DEFAULT 'red' NOT NULL" in text
    assert "prio TEXT DEFAULT 'LOW' NOT NULL" in text  # non-str enums are stored by name


def test_column_names_are_field_names_unless_overridden() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)
        userName: str = ""
        display: str = Field(default="", column="display_name")

    cs = compiled(M)
    assert [c.name for c in cs.columns] == ["id", "userName", "display_name"]
    assert cs.by_field["display"].name == "display_name"


def test_schema_name_defaults_to_snake_case_of_the_model() -> None:
    class PlayerProfile(BaseModel):
        id: str = Field(primary_key=True)

    assert compiled(PlayerProfile).name == "player_profile"
    assert snake_case("HTTPRequestLog") == "http_request_log"


def test_unique_index_and_composite_indexes_are_in_the_table() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)
        username: str = Field(unique=True)
        email: str | None = Field(default=None, index=True)
        level: int = 1
        region: str = "eu"

    cs = compiled(
        M, indexes=[Index(fields=["level", "region"]), Index(fields=["region"], unique=True)]
    )
    indexes = {i.name: ([c.name for c in i.columns], i.unique) for i in cs.table.indexes}
    assert indexes["ix_m_email"] == (["email"], False)
    assert indexes["ix_m_level_region"] == (["level", "region"], False)
    assert indexes["ix_m_region"] == (["region"], True)
    assert cs.table.c.username.unique is True


def test_flags_decide_which_fields_each_tier_keeps() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)
        name: str = ""
        secret: str = Field(default="", omit_cache=True)
        note: str = Field(default="", omit_l1=True)
        scratch: str = Field(default="", transient=True)

    cs = compiled(M)
    assert [c.field for c in cs.columns] == ["id", "name", "secret", "note"]
    assert cs.cached_fields == {"id", "name", "note"}
    assert cs.l1_fields == {"id", "name"}
    assert cs.transient_fields == {"scratch"}


def test_encrypted_fields_are_stored_as_bytea_without_default() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)
        api_key: str = Field(default="k", encrypted=True)

    cs = compiled(M, key=True)
    col = cs.table.c.api_key
    assert col.type.compile(postgresql.dialect()) == "BYTEA"
    assert col.server_default is None  # a plaintext default would leak into the DDL
    assert cs.by_field["api_key"].kind is ColumnKind.ENCRYPTED


def test_auto_timestamp_fields_need_no_value_at_construction() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)
        created_at: datetime = Field(auto_now_add=True)
        updated_at: datetime = Field(auto_now=True)

    m = M(id="a")
    assert m.created_at.tzinfo is not None
    cs = compiled(M)
    assert cs.auto_now_add == ["created_at"] and cs.auto_now == ["updated_at"]


def test_shape_hash_changes_when_a_cached_field_changes() -> None:
    class A(BaseModel):
        id: str = Field(primary_key=True)
        x: int = 0

    class B(BaseModel):
        id: str = Field(primary_key=True)
        x: str = ""

    assert compiled(A, name="t").shape != compiled(B, name="t").shape
    assert compiled(A, name="t").shape == compiled(A, name="t").shape


def test_db_schema_qualifies_the_table() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)

    cs = compiled(M, l3=PostgresPolicy(table="things", db_schema="app"))
    assert cs.qualified_table == "app.things"


def test_policy_ttls_fall_back_to_the_config_defaults() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)

    cs = compiled(M, l1=MemPolicy(ttl=5), l2=RedisPolicy())
    assert cs.l1_ttl == 5.0
    assert cs.l2_ttl == 1800.0
    assert cs.write_mode is WriteMode.WRITE_THROUGH


def test_a_model_with_only_a_primary_key_compiles() -> None:
    class Tag(BaseModel):
        name: str = Field(primary_key=True)

    cs = compiled(Tag)
    assert [c.name for c in cs.table.columns] == ["name", VERSION_COLUMN]


# -- register() errors: one typed error per mistake, naming model and field ----------------


def register(model: object, **kw: object) -> None:
    DataStore(Config(database_url="sqlite:///:memory:")).register(Schema(model=model, **kw))  # type: ignore[arg-type]


def test_no_primary_key_is_refused() -> None:
    class NoPk(BaseModel):
        x: int = 0

    with pytest.raises(errors.NoPrimaryKeyError, match="NoPk"):
        register(NoPk)


def test_two_primary_keys_are_refused() -> None:
    class TwoPk(BaseModel):
        a: int = Field(primary_key=True)
        b: int = Field(primary_key=True)

    with pytest.raises(errors.MultiplePrimaryKeysError) as info:
        register(TwoPk)
    assert info.value.model == "TwoPk" and info.value.field == "b"


@pytest.mark.parametrize("tp", [float, bool, datetime, bytes, Color])
def test_primary_key_of_another_type_is_refused(tp: type) -> None:
    model = type(
        "BadPk", (BaseModel,), {"__annotations__": {"id": tp}, "id": Field(primary_key=True)}
    )
    with pytest.raises(errors.InvalidPrimaryKeyError, match=r"BadPk\.id"):
        register(model)


def test_optional_primary_key_is_refused() -> None:
    class OptPk(BaseModel):
        id: str | None = Field(default=None, primary_key=True)

    with pytest.raises(errors.InvalidPrimaryKeyError, match="Optional"):
        register(OptPk)


@pytest.mark.parametrize("flag", ["omit_cache", "omit_l1", "transient"])
def test_omitted_fields_need_a_default(flag: str) -> None:
    model = type(
        "NoDefault",
        (BaseModel,),
        {
            "__annotations__": {"id": str, "x": str},
            "id": Field(primary_key=True),
            "x": Field(**{flag: True}),
        },
    )
    with pytest.raises(errors.FieldDefaultRequiredError) as info:
        register(model)
    assert info.value.field == "x" and flag in str(info.value)


def test_encrypted_field_without_a_key_is_refused() -> None:
    class Secret(BaseModel):
        id: str = Field(primary_key=True)
        token: str = Field(default="", encrypted=True)

    with pytest.raises(errors.EncryptionKeyRequiredError, match=r"Secret\.token"):
        register(Secret)


def test_unknown_index_field_is_refused() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)

    with pytest.raises(errors.UnknownIndexFieldError, match="nope"):
        register(M, indexes=[Index(fields=["nope"])])


def test_unsupported_type_is_refused() -> None:
    class Weird(BaseModel):
        id: str = Field(primary_key=True)
        c: complex = 0j

    with pytest.raises(errors.UnsupportedTypeError, match=r"Weird\.c"):
        register(Weird)


def test_duplicate_names_and_models_are_refused() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)

    class N(BaseModel):
        id: str = Field(primary_key=True)

    ds = DataStore(Config(database_url="sqlite:///:memory:"))
    ds.register(Schema(name="things", model=M))
    with pytest.raises(errors.SchemaDuplicateError):
        ds.register(Schema(name="other", model=M))
    with pytest.raises(errors.SchemaDuplicateError):
        ds.register(Schema(name="things", model=N))


def test_a_schema_whose_model_is_not_a_pydantic_class_is_our_error() -> None:
    class Plain:
        id: str

    with pytest.raises(errors.InvalidModelError):
        register(Plain)
    with pytest.raises(errors.InvalidModelError):
        register(None)


def test_conflicting_flags_are_refused() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)
        x: str = Field(default="", transient=True, index=True)

    with pytest.raises(errors.ConflictingFieldOptionsError, match=r"M\.x"):
        register(M)


def test_hostile_names_are_refused() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)
        x: str = Field(default="", column='x"; DROP TABLE y; --')

    with pytest.raises(errors.InvalidModelError):
        register(M)
    with pytest.raises(errors.InvalidModelError):
        register(M, name="bad name")


def test_every_schema_error_is_a_strata_error() -> None:
    for cls in (errors.NoPrimaryKeyError, errors.UnsupportedTypeError, errors.SchemaDuplicateError):
        assert issubclass(cls, errors.SchemaError) and issubclass(cls, errors.StrataError)


def test_redis_policy_key_prefix_is_checked() -> None:
    from strata import RedisPolicy

    class M(BaseModel):
        id: str = Field(primary_key=True)

    with pytest.raises(errors.InvalidModelError, match="key_prefix"):
        register(M, l2=RedisPolicy(key_prefix="a:b"))
