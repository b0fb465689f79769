"""Per-schema settings, resolved once at ``register`` and never changed afterwards.

A ``Binding`` says how one registered schema maps onto the tiers: its L2 codec and key
layout, TTLs, the fields a cached copy leaves out, how ids and values are checked, and how a
model becomes an L3 row (``rows``). It holds no mutable state: the L1 store, the negative
cache and the write path's queue live with the router (``router.core.Route``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic
from pydantic import BaseModel

from strata.codec import ModelCodec
from strata.config import Config
from strata.crypto import FieldCipher
from strata.errors import InvalidValueError, MissingPrimaryKeyError
from strata.router.rows import RowMapper
from strata.schema import CompiledSchema
from strata.tiers.memory_copy import Copier

__all__ = ["Binding", "default_of"]

"""How long a versioned delete tombstone lives in L1 and L2 (seconds)."""


class Binding:
    """Everything the router needs to know about one schema, resolved once."""

    __slots__ = (
        "auto_fields",
        "cipher",
        "codec",
        "coerce",
        "copier",
        "copy_out",
        "cs",
        "gen_key",
        "get_hooks",
        "has_l1",
        "hooks",
        "key_prefix",
        "l1_reset",
        "l1_ttl",
        "l2_on",
        "l2_ttl",
        "l3_on",
        "mode",
        "model",
        "mutable",
        "name",
        "omitted",
        "pk_column",
        "pk_field",
        "query_prefix",
        "replica_url",
        "rows",
    )

    def __init__(
        self, cs: CompiledSchema, config: Config, cipher: FieldCipher | None, *, l2: bool
    ) -> None:
        self.cs = cs
        self.cipher = cipher
        self.name = cs.name
        self.model = cs.model
        self.hooks = cs.hooks
        self.get_hooks = cs.hooks.before_get is not None or cs.hooks.after_get is not None
        self.mode = cs.write_mode
        self.mutable = cs.mutable
        self.copier = Copier(cs.model, mutable=cs.mutable)
        self.copy_out = self.copier.out  # the caller's copy of a held value
        self.auto_fields = frozenset(cs.auto_now) | frozenset(cs.auto_now_add)
        self.coerce = cs.coerce_id
        self.l1_ttl = cs.l1_ttl
        self.l2_ttl = cs.l2_ttl
        self.has_l1 = cs.source.l1 is not None
        self.l2_on = cs.has_l2 and l2
        self.l3_on = cs.has_l3
        self.pk_field = cs.pk.field
        self.pk_column = cs.pk.name
        self.rows = RowMapper(cs, cipher)
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
            l2p = cs.source.l2
            prefix = (l2p.key_prefix if l2p is not None else None) or config.key_prefix
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
        # Omitted fields (omit_cache / omit_l1) by column: a cached copy does not know them,
        # so a write of a value that did not assign them keeps what L3 stores.
        self.omitted = {
            c.name: c.field
            for c in cs.columns
            if c.field in cs.omit_cache_fields or c.field in cs.omit_l1_fields
        }

    def key(self, id: Any) -> str:
        return f"{self.key_prefix}{id}"

    def l1_copy(self, value: BaseModel) -> BaseModel:
        """The private copy L1 keeps: omitted fields at their defaults, nothing shared."""
        if self.l1_reset:
            copy = value.model_copy(update=self.l1_reset, deep=True)
            # Their values are unknown here, not assigned: a set of this copy keeps them.
            copy.__pydantic_fields_set__.difference_update(self.l1_reset)
            self.copier.intern(copy)
            return copy
        return self.copier.keep(value)

    def kept(self, value: BaseModel) -> frozenset[str]:
        """The omitted columns this value did not assign: an existing row keeps them."""
        if not self.omitted:
            return frozenset()
        assigned = value.model_fields_set
        return frozenset(c for c, f in self.omitted.items() if f not in assigned)

    def out(self, value: BaseModel) -> BaseModel:
        return self.copier.out(value)

    def check_id(self, id: Any) -> Any:
        """The id coerced to the primary key type; InvalidValueError when it cannot be
        (a str id must also be valid UTF-8: a lone surrogate can reach no tier)."""
        try:
            id = self.coerce(id)
        except (TypeError, ValueError) as exc:
            raise InvalidValueError(f"{self.name}: bad id {id!r}: {exc}", schema=self.name) from exc
        if id == "":  # no tier can tell an empty key from a missing one
            raise MissingPrimaryKeyError(
                f"{self.name}: the primary key {self.pk_field!r} is an empty string",
                schema=self.name,
            )
        if type(id) is str and not id.isascii():
            try:
                id.encode()
            except UnicodeEncodeError as exc:
                raise InvalidValueError(
                    f"{self.name}: bad id {id!r}: not valid UTF-8 ({exc.reason})",
                    schema=self.name,
                ) from exc
        return id

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

    def stamp(self, value: BaseModel, now: datetime | None = None) -> BaseModel:
        """A private copy of the value with auto timestamps set; the caller's object is
        never stored by reference. The copy is the Copier's (a shallow one for a model of
        immutable values), the timestamps written into it as ``model_copy(update=...)``
        would (assigned, no validation). ``now``: one batch's time (default: now)."""
        copy = self.copier.keep_copy(value)
        cs = self.cs
        if cs.auto_now or cs.auto_now_add:
            if now is None:
                now = datetime.now(UTC)
            d = copy.__dict__
            for f in cs.auto_now:
                d[f] = now
            for f in cs.auto_now_add:
                if not isinstance(d.get(f), datetime):
                    d[f] = now
            copy.__pydantic_fields_set__.update(self.auto_fields)
        return self.rows.normalised(copy)

    def l1_share(self, value: BaseModel) -> BaseModel:
        """What L1 keeps of a write's private copy that no caller gets and nothing changes
        (a write-behind path's: the queue or journal has it, callers get copies): the copy
        itself, or a copy with the omitted fields reset when there are any."""
        if self.l1_reset:
            return self.l1_copy(value)
        self.copier.intern(value)
        return value


def default_of(model: type[BaseModel], field: str) -> Any:
    info = model.model_fields[field]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default
