"""Per-schema runtime state and the conversions between models and L3 rows.

A ``SchemaRuntime`` is everything the router resolves once per registered schema: its L1
store, L2 codec and key prefixes, the fields a cached copy leaves out, and how a model
becomes a canonical L3 row (encrypting sealed columns) and back.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import pydantic
from pydantic import BaseModel

from strata.codec import ModelCodec
from strata.config import Config
from strata.crypto import FieldCipher
from strata.errors import InvalidValueError
from strata.schema import VERSION_COLUMN, ColumnKind, CompiledSchema, enum_to_text
from strata.tiers.memory import MemoryTier

__all__ = ["TOMBSTONE_TTL", "SchemaRuntime", "call_hook", "default_of", "fire_and_forget"]

TOMBSTONE_TTL = 5.0
"""How long a versioned delete tombstone lives in L1 and L2 (seconds)."""


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class SchemaRuntime:
    """Everything the router needs per registered schema, resolved once."""

    __slots__ = (
        "aad_table",
        "cipher",
        "codec",
        "coerce",
        "column_fields",
        "cs",
        "encrypted",
        "enum_by_name",
        "epoch",
        "gen_key",
        "hooks",
        "json_fields",
        "key_prefix",
        "l1",
        "l1_reset",
        "l1_ttl",
        "l2_on",
        "l2_ttl",
        "l3_on",
        "mode",
        "model",
        "mutable",
        "name",
        "negative",
        "pk_column",
        "pk_field",
        "query_prefix",
        "renames",
        "replica_url",
        "simple_rows",
    )

    def __init__(
        self,
        cs: CompiledSchema,
        config: Config,
        cipher: FieldCipher | None,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.cs = cs
        self.cipher = cipher
        self.name = cs.name
        self.model = cs.model
        self.hooks = cs.hooks
        self.mode = cs.write_mode
        self.mutable = cs.mutable
        self.coerce = cs.coerce_id
        self.l1_ttl = cs.l1_ttl
        self.l2_ttl = cs.l2_ttl
        self.l2_on = cs.has_l2 and config.redis_url is not None
        self.l3_on = cs.has_l3
        self.negative: dict[Any, float] = {}
        self.epoch = 0
        self.pk_field = cs.pk.field
        self.pk_column = cs.pk.name
        self.aad_table = cs.table.name
        policy = cs.source.l1
        self.l1: MemoryTier[Any, BaseModel] | None = None
        if policy is not None:
            on_evict = cs.hooks.on_evict
            self.l1 = MemoryTier(
                ttl=cs.l1_ttl,
                max_entries=policy.max_entries,
                max_bytes=policy.max_bytes,
                eviction=policy.eviction,
                on_evict=(lambda k, v: fire_and_forget(on_evict, k, v)) if on_evict else None,
                on_error=on_error,
                tombstone_ttl=TOMBSTONE_TTL,
            )
        self.codec: ModelCodec | None = None
        self.key_prefix = ""
        self.gen_key = ""
        self.query_prefix = ""
        l3 = cs.source.l3
        self.replica_url = l3.read_replica if l3 is not None else None
        if self.l2_on:
            self.codec = ModelCodec(
                cs,
                cipher,
                "msgpack" if config.codec == "msgpack" else "json",
                compress_min=config.compress_min_bytes,
                max_bytes=config.max_value_bytes,
            )
            l2 = cs.source.l2
            prefix = (l2.key_prefix if l2 is not None else None) or config.key_prefix
            self.key_prefix = f"{prefix}:{cs.name}:{cs.shape}:"
            # Cached search results: {prefix}:{schema}:{shape}:q:{generation}:{digest}. Every
            # write bumps the generation (in the same round trip as its L2 write).
            self.gen_key = f"{prefix}:{cs.name}:gen"
            self.query_prefix = f"{prefix}:{cs.name}:{cs.shape}:q:"
        # Fields a cached copy must not carry: reset to their defaults in L1.
        reset: dict[str, Any] = {}
        for f in cs.omit_cache_fields | cs.omit_l1_fields | cs.transient_fields:
            reset[f] = default_of(cs.model, f)
        self.l1_reset = reset
        self.column_fields = {c.field for c in cs.columns}
        self.json_fields = {
            c.field for c in cs.columns if c.value_kind is ColumnKind.JSON or c.meta.encrypted
        }
        self.encrypted = cs.encrypted
        self.renames = [(c.name, c.field) for c in cs.columns if c.name != c.field]
        self.enum_by_name = [
            c
            for c in cs.columns
            if c.enum_type is not None
            and not c.meta.encrypted
            and not all(isinstance(m.value, str) for m in c.enum_type)
        ]
        self.simple_rows = not (self.renames or self.encrypted or self.enum_by_name)

    def key(self, id: Any) -> str:
        return f"{self.key_prefix}{id}"

    def l1_copy(self, value: BaseModel) -> BaseModel:
        """The private copy L1 keeps: omitted fields at their defaults, nothing shared."""
        if self.l1_reset:
            return value.model_copy(update=self.l1_reset, deep=True)
        return value.model_copy(deep=self.mutable)

    def out(self, value: BaseModel) -> BaseModel:
        return value.model_copy(deep=self.mutable)

    def check_id(self, id: Any) -> Any:
        """The id coerced to the primary key type; InvalidValueError when it cannot be."""
        try:
            return self.coerce(id)
        except (TypeError, ValueError) as exc:
            raise InvalidValueError(f"{self.name}: bad id {id!r}: {exc}", schema=self.name) from exc

    def check_value(self, value: Any) -> BaseModel:
        """A model of this schema (a dict is validated into one); InvalidValueError."""
        if type(value) is self.model or isinstance(value, self.model):
            return value
        if isinstance(value, Mapping):
            try:
                return self.model.model_validate(value)
            except pydantic.ValidationError as exc:
                raise InvalidValueError(f"{self.name}: {exc}", schema=self.name) from exc
        raise InvalidValueError(
            f"{self.name} takes {self.model.__name__} values (or dicts), "
            f"got {type(value).__name__}",
            schema=self.name,
        )

    def check_size(self, value: BaseModel) -> None:
        """ValueTooLargeError, before anything is written, when the value's L2 payload would
        exceed ``Config.max_value_bytes`` (a no-op without a limit or without L2)."""
        codec = self.codec
        if codec is not None and codec.max_bytes is not None:
            codec.encode(value, 0)

    def stamp(self, value: BaseModel) -> BaseModel:
        """A private copy of the value with auto timestamps set; the caller's object is
        never stored by reference."""
        cs = self.cs
        if cs.auto_now or cs.auto_now_add:
            now = datetime.now(UTC)
            update = dict.fromkeys(cs.auto_now, now)
            for f in cs.auto_now_add:
                current = getattr(value, f)
                update[f] = current if isinstance(current, datetime) else now
            return value.model_copy(update=update, deep=self.mutable)
        return value.model_copy(deep=self.mutable)

    def to_row(self, value: BaseModel, id: Any) -> dict[str, Any]:
        """Canonical L3 row (column -> value); encrypted columns sealed here."""
        data = value.model_dump(include=self.column_fields)
        if self.json_fields:
            data.update(value.model_dump(mode="json", include=self.json_fields))
        row: dict[str, Any] = {}
        for spec in self.cs.columns:
            v = data[spec.field]
            if v is not None:
                kind = spec.kind
                if kind is ColumnKind.ENCRYPTED:
                    assert self.cipher is not None
                    v = self.cipher.encrypt(
                        orjson.dumps(v), FieldCipher.aad(self.aad_table, id, spec.name)
                    )
                elif kind is ColumnKind.ENUM:
                    v = enum_to_text(v) if not isinstance(v, str) else v
                elif kind is ColumnKind.DATETIME and v.tzinfo is None:
                    v = v.replace(tzinfo=UTC)
            row[spec.name] = v
        return row

    def from_row(self, row: dict[str, Any]) -> tuple[BaseModel, int]:
        version = row.pop(VERSION_COLUMN, 0) or 0
        if not self.simple_rows:
            pk = row[self.pk_column]
            for spec in self.encrypted:
                blob = row.get(spec.name)
                if blob is not None:
                    assert self.cipher is not None
                    plain = self.cipher.decrypt(
                        blob, FieldCipher.aad(self.aad_table, pk, spec.name)
                    )
                    row[spec.name] = orjson.loads(plain)
            for spec in self.enum_by_name:
                v = row.get(spec.name)
                if v is not None and spec.enum_type is not None:
                    row[spec.name] = spec.enum_type[v]
            for column, field in self.renames:
                row[field] = row.pop(column)
        try:
            return self.model.model_validate(row), int(version)
        except pydantic.ValidationError as exc:
            raise InvalidValueError(
                f"{self.name}: a stored row does not fit the model: {exc}", schema=self.name
            ) from exc

    def sealed(self, row: Mapping[str, Any]) -> dict[str, bytes]:
        """The encrypted columns of an L3 row, by field, before decryption (L2 reuses them)."""
        if not self.encrypted:
            return {}
        return {s.field: row[s.name] for s in self.encrypted if row.get(s.name) is not None}


def default_of(model: type[BaseModel], field: str) -> Any:
    info = model.model_fields[field]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


_HOOK_TASKS: set[asyncio.Future[Any]] = set()


def fire_and_forget(hook: Callable[..., Any], *args: Any) -> None:
    """on_evict runs inside a synchronous L1 call: an async hook is scheduled, and kept
    referenced until done."""
    result = hook(*args)
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result)
        _HOOK_TASKS.add(task)
        task.add_done_callback(_HOOK_TASKS.discard)
