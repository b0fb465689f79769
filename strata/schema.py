"""Schemas: a Pydantic model plus per-tier policies, compiled once at ``register``.

Compilation checks everything up front (one primary key, defaults where needed, types with a
column mapping, index fields) and produces a ``CompiledSchema``: the columns with their
per-dialect converters, the SQLAlchemy ``Table`` (the one description of the table: DDL,
Alembic diff and SQL compilation all come from it) and the shape hash used in cache keys.

``compile_schema`` reads as its list of rules: the schema-level ones are below it, the
per-field ones (and the type mapping) in ``strata.columns``.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel

from strata.columns import (
    MUTABLE_KINDS,
    UNSET,
    VERSION_COLUMN,
    ColumnKind,
    ColumnSpec,
    aware_utc,
    check_identifier,
    compile_column,
    enum_to_text,
    json_default,
    kind_of,
    pk_coercer,
    static_default,
    unwrap_optional,
)
from strata.config import Config, Seconds, WriteMode, seconds
from strata.errors import (
    ConfigError,
    ConflictingFieldOptionsError,
    InvalidModelError,
    InvalidPrimaryKeyError,
    MultiplePrimaryKeysError,
    NoPrimaryKeyError,
    UnknownIndexFieldError,
)
from strata.fields import field_meta

__all__ = [
    "DEFAULT",
    "VERSION_COLUMN",
    "ColumnKind",
    "ColumnSpec",
    "CompiledSchema",
    "Eviction",
    "Index",
    "MemPolicy",
    "PostgresPolicy",
    "RedisPolicy",
    "Schema",
    "SchemaHooks",
    "aware_utc",
    "check_identifier",
    "compile_schema",
    "enum_to_text",
    "json_default",
    "snake_case",
    "ttl_min",
]

Hook = Callable[..., Any]


class Eviction(enum.Enum):
    """Which entry a full memory tier gives up first (``MemPolicy.eviction``)."""

    LRU = "lru"  # least recently used; get and set count as use
    LFU = "lfu"  # fewest accesses (get hits and sets); ties go to the least recently used
    FIFO = "fifo"  # oldest inserted; reads and updates do not move a key


@dataclass(frozen=True)
class MemPolicy:
    """L1 settings. ``ttl=None`` takes ``Config.default_l1_ttl``."""

    ttl: Seconds | None = None
    max_entries: int | None = 10_000
    max_bytes: int | None = None
    eviction: Eviction = Eviction.LRU


class _Default(enum.Enum):
    DEFAULT = "default"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default.DEFAULT
"""``RedisPolicy(ttl=...)`` left out: take ``Config.default_l2_ttl`` (``None`` says "never
expire", so it cannot also mean "the default")."""


@dataclass(frozen=True)
class RedisPolicy:
    """L2 settings. ``ttl``: seconds (or a timedelta) greater than 0; ``None``: the keys
    never expire; left out: ``Config.default_l2_ttl``. ``key_prefix`` overrides
    ``Config.key_prefix`` for this schema."""

    ttl: Seconds | Literal[_Default.DEFAULT] | None = DEFAULT
    key_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.ttl is not DEFAULT:
            _positive_l2_ttl(seconds(self.ttl, "RedisPolicy.ttl"), "RedisPolicy.ttl")


def _positive_l2_ttl(ttl: float | None, what: str) -> float | None:
    """Redis cannot keep a key for 0 seconds (it would be rounded up to 1 ms): refused."""
    if ttl is not None and ttl <= 0:
        raise ConfigError(
            f"{what} must be greater than 0 seconds, got {ttl!r} "
            "(use ttl=None for keys that never expire)"
        )
    return ttl


@dataclass(frozen=True)
class PostgresPolicy:
    """L3 settings. ``table`` defaults to the schema name, ``db_schema`` to
    ``Config.database_schema`` (PostgreSQL's ``public`` when unset)."""

    table: str | None = None
    db_schema: str | None = None
    read_replica: str | None = None
    partition_by: str | None = None
    partitions: int = 0


@dataclass(frozen=True)
class Index:
    fields: Sequence[str]
    unique: bool = False
    name: str | None = None


@dataclass(frozen=True)
class SchemaHooks:
    """Callbacks, sync or async. ``before_set(value)`` may return a replacement value or
    raise to abort the write; ``after_set(value)``; ``before_get(id)``; ``after_get(value)``
    may return a replacement; ``on_evict(id, value)``; ``on_write_error(id, value, exc)``
    (write-behind dead letters)."""

    before_set: Hook | None = None
    after_set: Hook | None = None
    before_get: Hook | None = None
    after_get: Hook | None = None
    on_evict: Hook | None = None
    on_write_error: Hook | None = None


@dataclass(frozen=True)
class Schema:
    """A model and how each tier treats it. ``l1=None`` / ``l2=None`` / ``l3=None`` turn a
    tier off for this schema; ``name`` defaults to the snake_case class name."""

    name: str | None = None
    model: type[BaseModel] | None = None
    l1: MemPolicy | None = field(default_factory=MemPolicy)
    l2: RedisPolicy | None = field(default_factory=RedisPolicy)
    l3: PostgresPolicy | None = field(default_factory=PostgresPolicy)
    write_mode: WriteMode | None = None
    indexes: Sequence[Index] = ()
    hooks: SchemaHooks | None = None


@dataclass(eq=False)
class CompiledSchema:
    name: str
    model: type[BaseModel]
    source: Schema
    pk: ColumnSpec
    columns: list[ColumnSpec]  # L3 columns, model order, transient excluded
    by_field: dict[str, ColumnSpec]
    by_column: dict[str, ColumnSpec]
    cached_fields: frozenset[str]  # fields kept in L2 (and L1 unless omit_l1)
    l1_fields: frozenset[str]
    omit_cache_fields: frozenset[str]
    omit_l1_fields: frozenset[str]
    transient_fields: frozenset[str]
    encrypted: list[ColumnSpec]
    auto_now: list[str]
    auto_now_add: list[str]
    table: sa.Table
    shape: str
    mutable: bool  # values hold mutable containers: copies must be deep
    l1_ttl: float | None
    l2_ttl: float | None
    write_mode: WriteMode
    hooks: SchemaHooks
    defaults: dict[str, Any]  # field -> static default for fields reset in caches
    pk_coerce: Callable[[Any], Any] = field(default=lambda v: v)

    @property
    def has_l1(self) -> bool:
        return self.source.l1 is not None

    @property
    def has_l2(self) -> bool:
        return self.source.l2 is not None

    @property
    def has_l3(self) -> bool:
        return self.source.l3 is not None

    @property
    def qualified_table(self) -> str:
        return f"{self.table.schema}.{self.table.name}" if self.table.schema else self.table.name

    def coerce_id(self, id: Any) -> Any:
        return self.pk_coerce(id)


def snake_case(name: str) -> str:
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def _shape_hash(model: type[BaseModel], cached: Sequence[ColumnSpec]) -> str:
    """A short hash of what a cached payload holds: each cached field's name, column, kind
    and JSON schema. Structural on purpose: the same model declared in two services (or
    moved between modules) shares its cache entries; a changed field type does not."""
    try:
        full = model.model_json_schema(mode="serialization")
    except Exception:  # an exotic type without a JSON schema: fall back to its annotation
        full = {}
    props = full.get("properties", {})
    parts = [
        orjson.dumps(
            [c.field, c.name, c.value_kind.value, c.meta.encrypted, props.get(c.field)],
            option=orjson.OPT_SORT_KEYS,
        ).decode()
        if c.field in props
        else f"{c.field}:{c.name}:{c.value_kind.value}:{c.meta.encrypted}:{c.annotation!r}"
        for c in cached
    ]
    parts.append(orjson.dumps(full.get("$defs", {}), option=orjson.OPT_SORT_KEYS).decode())
    return hashlib.blake2b("|".join(parts).encode(), digest_size=4).hexdigest()


def compile_schema(
    schema: Schema, config: Config, *, has_cipher: bool, metadata: sa.MetaData
) -> CompiledSchema:
    """Check a Schema and build everything the router and tiers need. Raises SchemaError."""
    model = check_model_is_a_pydantic_class(schema.model)
    mname = model.__name__
    name = schema_name(schema, mname)
    check_write_mode(schema, mname)
    check_policy_types(schema, mname)
    check_l2_key_prefix(schema, mname)
    check_at_least_one_tier(schema, mname)
    columns = [
        spec
        for fname, info in model.model_fields.items()
        if (spec := compile_column(mname, fname, info, has_cipher=has_cipher)) is not None
    ]
    pk = primary_key(columns, mname)
    check_column_names_are_unique(columns, mname)
    table = build_table(schema, config, name, columns, mname, metadata)
    add_field_indexes(table, columns)
    add_declared_indexes(table, schema.indexes, columns, mname)
    transient = frozenset(f for f, i in model.model_fields.items() if field_meta(i).transient)
    cached = [c for c in columns if not c.meta.omit_cache]
    return CompiledSchema(
        name=name,
        model=model,
        source=schema,
        pk=pk,
        columns=columns,
        by_field={c.field: c for c in columns},
        by_column={c.name: c for c in columns},
        cached_fields=frozenset(c.field for c in cached),
        l1_fields=frozenset(c.field for c in cached if not c.meta.omit_l1),
        omit_cache_fields=frozenset(c.field for c in columns if c.meta.omit_cache),
        omit_l1_fields=frozenset(c.field for c in columns if c.meta.omit_l1),
        transient_fields=transient,
        encrypted=[c for c in columns if c.meta.encrypted],
        auto_now=[c.field for c in columns if c.meta.auto_now],
        auto_now_add=[c.field for c in columns if c.meta.auto_now_add],
        table=table,
        shape=_shape_hash(model, cached),
        mutable=values_are_mutable(model, columns, transient),
        l1_ttl=l1_ttl(schema, config, mname),
        l2_ttl=l2_ttl(schema, config, mname),
        write_mode=schema.write_mode or config.default_write_mode,
        hooks=schema.hooks or SchemaHooks(),
        defaults=cache_defaults(model),
        pk_coerce=pk_coercer(pk),
    )


# -- schema-level rules: each checks one thing or derives one thing ------------------------


def check_model_is_a_pydantic_class(model: Any) -> type[BaseModel]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise InvalidModelError(
            f"Schema.model must be a pydantic BaseModel subclass, got {model!r}",
            model=getattr(model, "__name__", repr(model)),
        )
    return model


def schema_name(schema: Schema, mname: str) -> str:
    """``Schema.name``, or the snake_case model name; a valid SQL identifier either way."""
    name = schema.name if schema.name is not None else snake_case(mname)
    return check_identifier(name, "schema name", mname)


def check_write_mode(schema: Schema, mname: str) -> None:
    if schema.write_mode is not None and not isinstance(schema.write_mode, WriteMode):
        raise InvalidModelError(f"{mname}: write_mode must be a WriteMode", model=mname)


def check_policy_types(schema: Schema, mname: str) -> None:
    for policy, policy_type in (
        (schema.l1, MemPolicy),
        (schema.l2, RedisPolicy),
        (schema.l3, PostgresPolicy),
    ):
        if policy is not None and not isinstance(policy, policy_type):
            raise InvalidModelError(
                f"{mname}: expected {policy_type.__name__} or None, got {policy!r}", model=mname
            )


def check_l2_key_prefix(schema: Schema, mname: str) -> None:
    prefix = schema.l2.key_prefix if schema.l2 is not None else None
    if prefix is not None and (not prefix or ":" in prefix):
        raise InvalidModelError(
            f"{mname}: RedisPolicy.key_prefix must be non-empty without ':', got {prefix!r}",
            model=mname,
        )


def check_at_least_one_tier(schema: Schema, mname: str) -> None:
    if schema.l1 is None and schema.l2 is None and schema.l3 is None:
        raise InvalidModelError(f"{mname}: a schema needs at least one tier", model=mname)


def primary_key(columns: Sequence[ColumnSpec], mname: str) -> ColumnSpec:
    """The one primary key column: str, int or UUID, not Optional."""
    pks = [c for c in columns if c.meta.primary_key]
    if not pks:
        raise NoPrimaryKeyError(
            f"{mname}: no field has primary_key=True (exactly one is required)", model=mname
        )
    if len(pks) > 1:
        raise MultiplePrimaryKeysError(
            f"{mname}: {', '.join(p.field for p in pks)} are all primary keys; exactly one is "
            "allowed",
            model=mname,
            field=pks[1].field,
        )
    pk = pks[0]
    if pk.kind not in (ColumnKind.TEXT, ColumnKind.INT, ColumnKind.UUID) or pk.enum_type:
        raise InvalidPrimaryKeyError(
            f"{mname}.{pk.field}: a primary key must be str, int or UUID, got {pk.annotation!r}",
            model=mname,
            field=pk.field,
        )
    if unwrap_optional(pk.annotation)[1]:
        raise InvalidPrimaryKeyError(
            f"{mname}.{pk.field}: a primary key cannot be Optional", model=mname, field=pk.field
        )
    return pk


def check_column_names_are_unique(columns: Sequence[ColumnSpec], mname: str) -> None:
    names = [c.name for c in columns]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InvalidModelError(
            f"{mname}: column name(s) {sorted(dup)} used by more than one field", model=mname
        )


def build_table(
    schema: Schema,
    config: Config,
    name: str,
    columns: Sequence[ColumnSpec],
    mname: str,
    metadata: sa.MetaData,
) -> sa.Table:
    """The SQLAlchemy table: the columns plus the hidden version column, in its db schema."""
    l3 = schema.l3 or PostgresPolicy()
    table_name = check_identifier(l3.table or name, "table name", mname)
    db_schema = l3.db_schema or config.database_schema
    if db_schema is not None:
        check_identifier(db_schema, "database schema", mname)
    version = sa.Column(
        VERSION_COLUMN, sa.BigInteger(), nullable=False, server_default=sa.text("0")
    )
    return sa.Table(table_name, metadata, *(c.column for c in columns), version, schema=db_schema)


def add_field_indexes(table: sa.Table, columns: Sequence[ColumnSpec]) -> None:
    """``Field(index=True)``: one index per column, named without the database schema."""
    for c in columns:
        if c.meta.index and not c.meta.unique and not c.meta.primary_key:
            sa.Index(f"ix_{table.name}_{c.name}"[:63], table.c[c.name])


def add_declared_indexes(
    table: sa.Table, indexes: Sequence[Index], columns: Sequence[ColumnSpec], mname: str
) -> None:
    """``Schema(indexes=[...])``: each names stored, unencrypted fields."""
    by_field = {c.field: c for c in columns}
    for idx in indexes:
        if not isinstance(idx, Index) or not idx.fields:
            raise UnknownIndexFieldError(
                f"{mname}: indexes must be Index(fields=[...]) with at least one field",
                model=mname,
            )
        cols = [table.c[index_column(by_field, f, mname).name] for f in idx.fields]
        iname = idx.name or f"ix_{table.name}_{'_'.join(c.name for c in cols)}"
        check_identifier(iname, "index name", mname)
        sa.Index(iname, *cols, unique=idx.unique)


def index_column(by_field: dict[str, ColumnSpec], fname: str, mname: str) -> ColumnSpec:
    found = by_field.get(fname)
    if found is None:
        raise UnknownIndexFieldError(
            f"{mname}: Index names {fname!r}, which is not a stored field of the model "
            f"(stored fields: {', '.join(by_field)})",
            model=mname,
            field=fname,
        )
    if found.meta.encrypted:
        raise ConflictingFieldOptionsError(
            f"{mname}.{fname}: an encrypted field cannot be indexed", model=mname, field=fname
        )
    return found


def values_are_mutable(
    model: type[BaseModel], columns: Sequence[ColumnSpec], transient: frozenset[str]
) -> bool:
    """Whether values hold mutable containers, so that copies must be deep."""
    return any(c.value_kind in MUTABLE_KINDS for c in columns) or any(
        kind_of(unwrap_optional(model.model_fields[f].annotation)[0])
        in (None, (ColumnKind.JSON, None))
        for f in transient
    )


def cache_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """The static default of each field a cached copy resets (omit_cache, omit_l1, transient)."""
    defaults: dict[str, Any] = {}
    for fname, info in model.model_fields.items():
        meta = field_meta(info)
        static = static_default(info)
        if (meta.transient or meta.omit_cache or meta.omit_l1) and static is not UNSET:
            defaults[fname] = copy.deepcopy(static)
    return defaults


def l1_ttl(schema: Schema, config: Config, mname: str) -> float | None:
    ttl = schema.l1.ttl if schema.l1 and schema.l1.ttl is not None else config.default_l1_ttl
    return seconds(ttl, f"{mname} l1 ttl")


def l2_ttl(schema: Schema, config: Config, mname: str) -> float | None:
    """None: the schema's Redis keys never expire (``RedisPolicy(ttl=None)``)."""
    ttl = schema.l2.ttl if schema.l2 is not None else DEFAULT
    if ttl is DEFAULT:
        ttl = config.default_l2_ttl
    return _positive_l2_ttl(seconds(ttl, f"{mname} l2 ttl"), f"{mname} l2 ttl")


def ttl_min(remaining: float | None, tier_ttl: float | None) -> float | None:
    """The TTL a promoted value takes: the smaller of what is left and the tier's own."""
    if remaining is None:
        return tier_ttl
    if tier_ttl is None:
        return remaining
    return min(remaining, tier_ttl)
