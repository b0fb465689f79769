"""Columns: how a model field maps to a stored column, and the per-field rules.

``compile_column`` turns one pydantic field into a ``ColumnSpec`` (or ``None`` for a transient
field), one named rule at a time; ``strata.schema.compile_schema`` runs it over every field.
The type mapping (``kind_of``, ``sa_type``), DDL defaults, id coercion and the JSON fallback
used by the tiers live here too.
"""

from __future__ import annotations

import enum
import re
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sqlalchemy.dialects import postgresql

from strata.errors import (
    ConflictingFieldOptionsError,
    EncryptionKeyRequiredError,
    FieldDefaultRequiredError,
    InvalidModelError,
    UnsupportedTypeError,
)
from strata.fields import FieldMeta, field_meta

__all__ = [
    "MUTABLE_KINDS",
    "UNSET",
    "VERSION_COLUMN",
    "ColumnKind",
    "ColumnSpec",
    "aware_utc",
    "check_identifier",
    "compile_column",
    "static_default",
    "enum_to_text",
    "json_default",
    "kind_of",
    "pk_coercer",
    "unwrap_optional",
]

VERSION_COLUMN = "_strata_version"
"""Hidden BIGINT column: the row version L3 sets on every write (see DESIGN.md section 4)."""

UNSET: Any = object()
"""No static default (none, or a default factory)."""


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


MUTABLE_KINDS = {ColumnKind.JSON}


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
    default: Any  # the python default, UNSET when none (or a factory)
    column: sa.Column[Any]


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


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is Optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return unwrap_optional(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) != len(typing.get_args(annotation))
        if len(args) == 1:
            inner, _ = unwrap_optional(args[0])
            return inner, optional
        return annotation, optional
    return annotation, False


def kind_of(tp: Any) -> tuple[ColumnKind, type[enum.Enum] | None] | None:
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


def sa_type(kind: ColumnKind) -> sa.types.TypeEngine[Any]:
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


def server_default(default: Any) -> Any:
    """A DDL DEFAULT for a literal Python default, or None when there is none to give."""
    if default is UNSET or default is None:
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


def static_default(info: Any) -> Any:
    if info.default_factory is not None:
        return UNSET
    from pydantic_core import PydanticUndefined

    return UNSET if info.default is PydanticUndefined else info.default


def has_default(info: Any) -> bool:
    from pydantic_core import PydanticUndefined

    return info.default is not PydanticUndefined or info.default_factory is not None


def pk_coercer(pk: ColumnSpec) -> Callable[[Any], Any]:
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


# -- per-field rules: each checks one thing or derives one thing --------------------------


def compile_column(
    mname: str, fname: str, info: FieldInfo, *, has_cipher: bool
) -> ColumnSpec | None:
    """One field's column after every per-field rule, in order; None for a transient field."""
    meta = field_meta(info)
    check_transient_has_no_storage_options(meta, mname, fname)
    check_cache_flags_have_a_default(meta, info, mname, fname)
    check_primary_key_is_cached_in_clear(meta, mname, fname)
    check_encrypted_is_not_indexed(meta, mname, fname)
    check_encryption_key_is_set(meta, has_cipher, mname, fname)
    if meta.transient:
        return None
    value_kind, enum_type = column_kind(info, mname, fname)
    check_auto_timestamp(meta, value_kind, mname, fname)
    check_encrypted_is_not_bytes(meta, value_kind, mname, fname)
    colname = column_name(meta, mname, fname)
    nullable = column_nullable(meta, info)
    kind = ColumnKind.ENCRYPTED if meta.encrypted else value_kind
    static = static_default(info)
    return ColumnSpec(
        field=fname,
        name=colname,
        kind=kind,
        value_kind=value_kind,
        nullable=nullable,
        meta=meta,
        annotation=info.annotation,
        enum_type=enum_type,
        default=static,
        column=sa.Column(
            colname,
            sa_type(kind),
            primary_key=meta.primary_key,
            nullable=nullable,
            unique=meta.unique or None,
            index=None,  # named explicitly by the schema, without the database schema in it
            server_default=None if meta.encrypted else server_default(static),
        ),
    )


def check_transient_has_no_storage_options(meta: FieldMeta, mname: str, fname: str) -> None:
    if meta.transient and (
        meta.primary_key or meta.omit_cache or meta.encrypted or meta.index or meta.unique
    ):
        raise ConflictingFieldOptionsError(
            f"{mname}.{fname}: a transient field is never stored, so it cannot also be "
            "a primary key, indexed, unique, encrypted or omit_cache",
            model=mname,
            field=fname,
        )


def check_cache_flags_have_a_default(
    meta: FieldMeta, info: FieldInfo, mname: str, fname: str
) -> None:
    for flag in ("omit_cache", "omit_l1", "transient"):
        if getattr(meta, flag) and not has_default(info):
            raise FieldDefaultRequiredError(
                f"{mname}.{fname}: a {flag} field needs a default (the value a cached copy "
                "carries in its place)",
                model=mname,
                field=fname,
            )


def check_primary_key_is_cached_in_clear(meta: FieldMeta, mname: str, fname: str) -> None:
    if meta.primary_key and (meta.omit_cache or meta.omit_l1 or meta.encrypted):
        raise ConflictingFieldOptionsError(
            f"{mname}.{fname}: the primary key cannot be omit_cache, omit_l1 or encrypted",
            model=mname,
            field=fname,
        )


def check_encrypted_is_not_indexed(meta: FieldMeta, mname: str, fname: str) -> None:
    if meta.encrypted and (meta.index or meta.unique):
        raise ConflictingFieldOptionsError(
            f"{mname}.{fname}: an encrypted field cannot be indexed or unique "
            "(each write stores a different ciphertext)",
            model=mname,
            field=fname,
        )


def check_encryption_key_is_set(meta: FieldMeta, has_cipher: bool, mname: str, fname: str) -> None:
    if meta.encrypted and not has_cipher:
        raise EncryptionKeyRequiredError(
            f"{mname}.{fname} is encrypted but Config.encryption_key is not set",
            model=mname,
            field=fname,
        )


def column_kind(
    info: FieldInfo, mname: str, fname: str
) -> tuple[ColumnKind, type[enum.Enum] | None]:
    """The kind of the field's value (Optional unwrapped); UnsupportedTypeError if none."""
    found = kind_of(unwrap_optional(info.annotation)[0])
    if found is None:
        raise UnsupportedTypeError(
            f"{mname}.{fname}: type {info.annotation!r} has no column mapping (supported: "
            "str, int, float, bool, datetime, date, time, bytes, UUID, Decimal, Enum, "
            "Literal, nested models, list, dict, tuple, set, and X | None)",
            model=mname,
            field=fname,
        )
    return found


def check_auto_timestamp(meta: FieldMeta, value_kind: ColumnKind, mname: str, fname: str) -> None:
    if not (meta.auto_now or meta.auto_now_add):
        return
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


def check_encrypted_is_not_bytes(
    meta: FieldMeta, value_kind: ColumnKind, mname: str, fname: str
) -> None:
    if meta.encrypted and value_kind is ColumnKind.BYTES:
        raise ConflictingFieldOptionsError(
            f"{mname}.{fname}: encrypted bytes fields are not supported (the plaintext is "
            "JSON); keep the bytes base64-encoded in an encrypted str field",
            model=mname,
            field=fname,
        )


def column_name(meta: FieldMeta, mname: str, fname: str) -> str:
    """``Field(column=...)`` or the field name; a valid identifier, not the version column."""
    colname = check_identifier(meta.column or fname, "column name", mname, fname)
    if colname == VERSION_COLUMN:
        raise InvalidModelError(
            f"{mname}.{fname}: the column name {VERSION_COLUMN} is reserved", model=mname
        )
    return colname


def column_nullable(meta: FieldMeta, info: FieldInfo) -> bool:
    """Optional means NULL-able unless ``Field(nullable=...)`` says otherwise; a key never is."""
    if meta.primary_key:
        return False
    return unwrap_optional(info.annotation)[1] if meta.nullable is None else meta.nullable
