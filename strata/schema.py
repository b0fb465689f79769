"""Schemas: a Pydantic model plus per-tier policies, compiled once at ``register``.

Compilation checks everything up front (one primary key, defaults where needed, types with a
column mapping, index fields) and produces a ``CompiledSchema``: the columns with their
per-dialect converters, the SQLAlchemy ``Table`` (the one description of the table: DDL,
Alembic diff and SQL compilation all come from it) and the shape hash used in cache keys.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import re
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql

from strata.config import Config, Seconds, WriteMode, seconds
from strata.errors import (
    ConflictingFieldOptionsError,
    EncryptionKeyRequiredError,
    FieldDefaultRequiredError,
    InvalidModelError,
    InvalidPrimaryKeyError,
    MultiplePrimaryKeysError,
    NoPrimaryKeyError,
    UnknownIndexFieldError,
    UnsupportedTypeError,
)
from strata.fields import FieldMeta, field_meta
from strata.tiers.memory import Eviction

__all__ = [
    "VERSION_COLUMN",
    "ColumnKind",
    "ColumnSpec",
    "CompiledSchema",
    "Index",
    "MemPolicy",
    "PostgresPolicy",
    "RedisPolicy",
    "Schema",
    "SchemaHooks",
    "compile_schema",
]

VERSION_COLUMN = "_strata_version"
"""Hidden BIGINT column: the row version L3 sets on every write (see DESIGN.md section 4)."""

Hook = Callable[..., Any]


@dataclass(frozen=True)
class MemPolicy:
    """L1 settings. ``ttl=None`` takes ``Config.default_l1_ttl``."""

    ttl: Seconds | None = None
    max_entries: int | None = 10_000
    max_bytes: int | None = None
    eviction: Eviction = Eviction.LRU


@dataclass(frozen=True)
class RedisPolicy:
    """L2 settings. ``ttl=None`` takes ``Config.default_l2_ttl``; ``key_prefix`` overrides
    ``Config.key_prefix`` for this schema."""

    ttl: Seconds | None = None
    key_prefix: str | None = None


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


_UNSET: Any = object()


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


class ColumnKind(enum.Enum):
    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATETIME = "datetime"
    DATE = "date"
    TIME = "time"
    BYTES = "bytes"
    UUID = "uuid"
    DECIMAL = "decimal"
    ENUM = "enum"
    JSON = "json"
    ENCRYPTED = "encrypted"


_MUTABLE_KINDS = {ColumnKind.JSON}


@dataclass(slots=True)
class ColumnSpec:
    field: str
    name: str
    kind: ColumnKind
    value_kind: ColumnKind  # the kind of the value itself (differs from kind when encrypted)
    nullable: bool
    meta: FieldMeta
    annotation: Any
    enum_type: type[enum.Enum] | None
    default: Any  # the python default, _UNSET when none (or a factory)
    column: sa.Column[Any]


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


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(value: str, what: str, model: str, field_name: str | None = None) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise InvalidModelError(
            f"{model}: {what} {value!r} is not a valid SQL identifier "
            "(letters, digits and _, not starting with a digit, at most 63 characters)",
            model=model,
            field=field_name,
        )
    return value


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is Optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap_optional(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) != len(typing.get_args(annotation))
        if len(args) == 1:
            inner, _ = _unwrap_optional(args[0])
            return inner, optional
        return annotation, optional
    return annotation, False


def _kind_of(tp: Any) -> tuple[ColumnKind, type[enum.Enum] | None] | None:
    origin = typing.get_origin(tp)
    if origin is Literal:
        values = typing.get_args(tp)
        if all(isinstance(v, str) for v in values):
            return ColumnKind.TEXT, None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return ColumnKind.INT, None
        return None
    if origin in (list, dict, tuple, set, frozenset) or tp in (list, dict, tuple, set, frozenset):
        return ColumnKind.JSON, None
    if origin in (typing.Union, types.UnionType):
        return ColumnKind.JSON, None  # union of several non-None types: stored as JSON
    if not isinstance(tp, type):
        return None
    if issubclass(tp, enum.Enum):
        return ColumnKind.ENUM, tp
    if tp is bool:
        return ColumnKind.BOOL, None
    if issubclass(tp, BaseModel):
        return ColumnKind.JSON, None
    simple: list[tuple[type, ColumnKind]] = [
        (str, ColumnKind.TEXT),
        (int, ColumnKind.INT),
        (float, ColumnKind.FLOAT),
        (datetime, ColumnKind.DATETIME),
        (date, ColumnKind.DATE),
        (time, ColumnKind.TIME),
        (bytes, ColumnKind.BYTES),
        (uuid.UUID, ColumnKind.UUID),
        (Decimal, ColumnKind.DECIMAL),
    ]
    for base, kind in simple:
        if issubclass(tp, base):
            return kind, None
    return None


def _sa_type(kind: ColumnKind) -> sa.types.TypeEngine[Any]:
    """The column type: PostgreSQL first, SQLite affinities through variants."""
    match kind:
        case ColumnKind.TEXT | ColumnKind.ENUM:
            return sa.Text()
        case ColumnKind.INT:
            return sa.BigInteger()
        case ColumnKind.FLOAT:
            return sa.Double().with_variant(sa.Float(), "sqlite")
        case ColumnKind.BOOL:
            return sa.Boolean()
        case ColumnKind.DATETIME:
            return sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite")
        case ColumnKind.DATE:
            return sa.Date().with_variant(sa.Text(), "sqlite")
        case ColumnKind.TIME:
            return sa.Time().with_variant(sa.Text(), "sqlite")
        case ColumnKind.BYTES | ColumnKind.ENCRYPTED:
            return sa.LargeBinary()
        case ColumnKind.UUID:
            return sa.Uuid().with_variant(sa.Text(), "sqlite")
        case ColumnKind.DECIMAL:
            return sa.Numeric().with_variant(sa.Text(), "sqlite")
        case ColumnKind.JSON:
            return postgresql.JSONB().with_variant(sa.JSON(), "sqlite")
    raise AssertionError(kind)  # pragma: no cover


def _server_default(default: Any) -> Any:
    """A DDL DEFAULT for a literal Python default, or None when there is none to give."""
    if default is _UNSET or default is None:
        return None
    if isinstance(default, enum.Enum):
        default = enum_to_text(default)
    if isinstance(default, bool):
        return sa.true() if default else sa.false()
    if isinstance(default, int | float | Decimal):
        return sa.text(repr(default) if isinstance(default, float) else str(default))
    if isinstance(default, str):
        return default
    return None


def enum_to_text(value: enum.Enum) -> str:
    return value.value if isinstance(value.value, str) else value.name


def aware_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (documented); aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _static_default(info: Any) -> Any:
    if info.default_factory is not None:
        return _UNSET
    from pydantic_core import PydanticUndefined

    return _UNSET if info.default is PydanticUndefined else info.default


def _has_default(info: Any) -> bool:
    from pydantic_core import PydanticUndefined

    return info.default is not PydanticUndefined or info.default_factory is not None


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
    model = schema.model
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise InvalidModelError(
            f"Schema.model must be a pydantic BaseModel subclass, got {model!r}",
            model=getattr(model, "__name__", repr(model)),
        )
    mname = model.__name__
    name = schema.name if schema.name is not None else snake_case(mname)
    check_identifier(name, "schema name", mname)
    if schema.write_mode is not None and not isinstance(schema.write_mode, WriteMode):
        raise InvalidModelError(f"{mname}: write_mode must be a WriteMode", model=mname)
    for policy, policy_type in (
        (schema.l1, MemPolicy),
        (schema.l2, RedisPolicy),
        (schema.l3, PostgresPolicy),
    ):
        if policy is not None and not isinstance(policy, policy_type):
            raise InvalidModelError(
                f"{mname}: expected {policy_type.__name__} or None, got {policy!r}", model=mname
            )
    l2_prefix = schema.l2.key_prefix if schema.l2 is not None else None
    if l2_prefix is not None and (not l2_prefix or ":" in l2_prefix):
        raise InvalidModelError(
            f"{mname}: RedisPolicy.key_prefix must be non-empty without ':', got {l2_prefix!r}",
            model=mname,
        )
    if schema.l1 is None and schema.l2 is None and schema.l3 is None:
        raise InvalidModelError(f"{mname}: a schema needs at least one tier", model=mname)

    columns: list[ColumnSpec] = []
    pks: list[ColumnSpec] = []
    transient: set[str] = set()
    defaults: dict[str, Any] = {}
    for fname, info in model.model_fields.items():
        meta = field_meta(info)
        if meta.transient and (
            meta.primary_key or meta.omit_cache or meta.encrypted or meta.index or meta.unique
        ):
            raise ConflictingFieldOptionsError(
                f"{mname}.{fname}: a transient field is never stored, so it cannot also be "
                "a primary key, indexed, unique, encrypted or omit_cache",
                model=mname,
                field=fname,
            )
        for flag in ("omit_cache", "omit_l1", "transient"):
            if getattr(meta, flag) and not _has_default(info):
                raise FieldDefaultRequiredError(
                    f"{mname}.{fname}: a {flag} field needs a default (the value a cached copy "
                    "carries in its place)",
                    model=mname,
                    field=fname,
                )
        if meta.primary_key and (meta.omit_cache or meta.omit_l1 or meta.encrypted):
            raise ConflictingFieldOptionsError(
                f"{mname}.{fname}: the primary key cannot be omit_cache, omit_l1 or encrypted",
                model=mname,
                field=fname,
            )
        if meta.encrypted and (meta.index or meta.unique):
            raise ConflictingFieldOptionsError(
                f"{mname}.{fname}: an encrypted field cannot be indexed or unique "
                "(each write stores a different ciphertext)",
                model=mname,
                field=fname,
            )
        if meta.encrypted and not has_cipher:
            raise EncryptionKeyRequiredError(
                f"{mname}.{fname} is encrypted but Config.encryption_key is not set",
                model=mname,
                field=fname,
            )
        static = _static_default(info)
        if meta.transient:
            transient.add(fname)
            if static is not _UNSET:
                defaults[fname] = static
            continue
        inner, optional = _unwrap_optional(info.annotation)
        found = _kind_of(inner)
        if found is None:
            raise UnsupportedTypeError(
                f"{mname}.{fname}: type {info.annotation!r} has no column mapping (supported: "
                "str, int, float, bool, datetime, date, time, bytes, UUID, Decimal, Enum, "
                "Literal, nested models, list, dict, tuple, set, and X | None)",
                model=mname,
                field=fname,
            )
        value_kind, enum_type = found
        if meta.auto_now or meta.auto_now_add:
            if value_kind is not ColumnKind.DATETIME:
                raise ConflictingFieldOptionsError(
                    f"{mname}.{fname}: auto_now / auto_now_add need a datetime field",
                    model=mname,
                    field=fname,
                )
            if meta.auto_now and meta.auto_now_add:
                raise ConflictingFieldOptionsError(
                    f"{mname}.{fname}: choose auto_now or auto_now_add, not both",
                    model=mname,
                    field=fname,
                )
        if meta.encrypted and value_kind is ColumnKind.BYTES:
            raise ConflictingFieldOptionsError(
                f"{mname}.{fname}: encrypted bytes fields are not supported (the plaintext is "
                "JSON); keep the bytes base64-encoded in an encrypted str field",
                model=mname,
                field=fname,
            )
        colname = check_identifier(meta.column or fname, "column name", mname, fname)
        if colname == VERSION_COLUMN:
            raise InvalidModelError(
                f"{mname}.{fname}: the column name {VERSION_COLUMN} is reserved", model=mname
            )
        nullable = optional if meta.nullable is None else meta.nullable
        if meta.primary_key:
            nullable = False
        kind = ColumnKind.ENCRYPTED if meta.encrypted else value_kind
        server_default = None if meta.encrypted else _server_default(static)
        col: sa.Column[Any] = sa.Column(
            colname,
            _sa_type(kind),
            primary_key=meta.primary_key,
            nullable=nullable,
            unique=meta.unique or None,
            index=None,  # named explicitly below, without the database schema in the name
            server_default=server_default,
        )
        spec = ColumnSpec(
            field=fname,
            name=colname,
            kind=kind,
            value_kind=value_kind,
            nullable=nullable,
            meta=meta,
            annotation=info.annotation,
            enum_type=enum_type,
            default=static,
            column=col,
        )
        columns.append(spec)
        if meta.primary_key:
            pks.append(spec)
        if (meta.omit_cache or meta.omit_l1) and static is not _UNSET:
            defaults[fname] = static

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
    if _unwrap_optional(pk.annotation)[1]:
        raise InvalidPrimaryKeyError(
            f"{mname}.{pk.field}: a primary key cannot be Optional", model=mname, field=pk.field
        )
    names = [c.name for c in columns]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InvalidModelError(
            f"{mname}: column name(s) {sorted(dup)} used by more than one field", model=mname
        )

    by_field = {c.field: c for c in columns}
    l3 = schema.l3 or PostgresPolicy()
    table_name = check_identifier(l3.table or name, "table name", mname)
    db_schema = l3.db_schema or config.database_schema
    if db_schema is not None:
        check_identifier(db_schema, "database schema", mname)
    sa_columns = [c.column for c in columns]
    sa_columns.append(
        sa.Column(VERSION_COLUMN, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    )
    table = sa.Table(table_name, metadata, *sa_columns, schema=db_schema)
    for c in columns:
        if c.meta.index and not c.meta.unique and not c.meta.primary_key:
            sa.Index(f"ix_{table_name}_{c.name}"[:63], table.c[c.name])
    for idx in schema.indexes:
        if not isinstance(idx, Index) or not idx.fields:
            raise UnknownIndexFieldError(
                f"{mname}: indexes must be Index(fields=[...]) with at least one field",
                model=mname,
            )
        cols = []
        for f in idx.fields:
            found_spec = by_field.get(f)
            if found_spec is None:
                raise UnknownIndexFieldError(
                    f"{mname}: Index names {f!r}, which is not a stored field of the model "
                    f"(stored fields: {', '.join(by_field)})",
                    model=mname,
                    field=f,
                )
            if found_spec.meta.encrypted:
                raise ConflictingFieldOptionsError(
                    f"{mname}.{f}: an encrypted field cannot be indexed", model=mname, field=f
                )
            cols.append(table.c[found_spec.name])
        iname = idx.name or f"ix_{table_name}_{'_'.join(c.name for c in cols)}"
        check_identifier(iname, "index name", mname)
        sa.Index(iname, *cols, unique=idx.unique)

    omit_cache = frozenset(c.field for c in columns if c.meta.omit_cache)
    omit_l1 = frozenset(c.field for c in columns if c.meta.omit_l1)
    cached = [c for c in columns if not c.meta.omit_cache]
    mutable = any(c.value_kind in _MUTABLE_KINDS for c in columns) or any(
        _kind_of(_unwrap_optional(model.model_fields[f].annotation)[0])
        in (None, (ColumnKind.JSON, None))
        for f in transient
    )
    pk_coerce = _pk_coercer(pk)
    return CompiledSchema(
        name=name,
        model=model,
        source=schema,
        pk=pk,
        columns=columns,
        by_field=by_field,
        by_column={c.name: c for c in columns},
        cached_fields=frozenset(c.field for c in cached),
        l1_fields=frozenset(c.field for c in cached if not c.meta.omit_l1),
        omit_cache_fields=omit_cache,
        omit_l1_fields=omit_l1,
        transient_fields=frozenset(transient),
        encrypted=[c for c in columns if c.meta.encrypted],
        auto_now=[c.field for c in columns if c.meta.auto_now],
        auto_now_add=[c.field for c in columns if c.meta.auto_now_add],
        table=table,
        shape=_shape_hash(model, cached),
        mutable=mutable,
        l1_ttl=seconds(
            schema.l1.ttl if schema.l1 and schema.l1.ttl is not None else config.default_l1_ttl,
            f"{mname} l1 ttl",
        ),
        l2_ttl=seconds(
            schema.l2.ttl if schema.l2 and schema.l2.ttl is not None else config.default_l2_ttl,
            f"{mname} l2 ttl",
        ),
        write_mode=schema.write_mode or config.default_write_mode,
        hooks=schema.hooks or SchemaHooks(),
        defaults={k: copy.deepcopy(v) for k, v in defaults.items()},
        pk_coerce=pk_coerce,
    )


def _pk_coercer(pk: ColumnSpec) -> Callable[[Any], Any]:
    if pk.kind is ColumnKind.INT:
        return _coerce_int
    if pk.kind is ColumnKind.UUID:
        return _coerce_uuid
    return _coerce_str


def _coerce_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        raise TypeError(f"expected an int id, got {value!r}")
    return value


def _coerce_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        return uuid.UUID(value)
    raise TypeError(f"expected a UUID id, got {value!r}")


def _coerce_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str id, got {value!r}")
    return value


def json_default(value: Any) -> Any:
    """orjson fallback for values pydantic's JSON mode already turned into plain data."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def ttl_min(remaining: float | None, tier_ttl: float | None) -> float | None:
    """The TTL a promoted value takes: the smaller of what is left and the tier's own."""
    if remaining is None:
        return tier_ttl
    if tier_ttl is None:
        return remaining
    return min(remaining, tier_ttl)
