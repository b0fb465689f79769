"""What travels on the invalidation channel: ``Invalidation`` and ``Heartbeat`` (JSON),
and ``decode_message`` for whatever the bus finds there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import orjson

from strata.errors import CodecError

__all__ = ["Heartbeat", "Invalidation", "InvalidationOp", "decode_message"]

InvalidationOp = Literal["set", "delete", "invalidate_all"]
_OPS: Final[frozenset[str]] = frozenset(get_args(InvalidationOp))
_HEARTBEAT_OP: Final = "heartbeat"


def _is_id(value: object) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _is_version(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One invalidation: a single key (``id``), a batch (``ids``) or a whole schema.

    ``versions`` is parallel to ``ids``; an empty ``versions`` on a batch means "no versions"
    and is normalised to ``(None,) * len(ids)``. Construction checks the shape and raises
    ``ValueError`` for a message that could not be sent.
    """

    schema: str
    op: InvalidationOp
    origin: str
    id: str | int | None = None
    version: int | None = None
    ids: tuple[str | int, ...] = ()
    versions: tuple[int | None, ...] = ()
    shape: str | None = None  # the writer's cache shape: other shapes drop their own L2 copy
    # The writer's ``Config.key_prefix`` (its app): the bus stamps it on publish, and a
    # receiver of another prefix ignores the message. None: a sender that predates it.
    prefix: str | None = None

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"invalidation op must be one of {sorted(_OPS)}")
        ids = tuple(self.ids)
        versions = tuple(self.versions)
        if ids and not versions:
            versions = (None,) * len(ids)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "versions", versions)
        if len(versions) != len(ids):
            raise ValueError("invalidation 'versions' must be empty or as long as 'ids'")
        if self.op == "invalidate_all":
            if self.id is not None or ids:
                raise ValueError("an 'invalidate_all' invalidation carries no id nor ids")
        elif (self.id is None) == (not ids):
            raise ValueError(f"{self.op!r} invalidation needs exactly one of 'id' or 'ids'")
        if ids and self.version is not None:
            raise ValueError("a batch invalidation carries 'versions', not 'version'")

    @property
    def is_batch(self) -> bool:
        return bool(self.ids)

    def keys(self) -> list[tuple[str | int, int | None]]:
        """The ``(id, version)`` pairs this message covers; empty for ``invalidate_all``."""
        if self.ids:
            return list(zip(self.ids, self.versions, strict=True))
        if self.id is not None:
            return [(self.id, self.version)]
        return []

    def encode(self) -> bytes:
        """JSON bytes; ``ids``/``versions`` only for a batch. ``CodecError`` if not encodable."""
        body: dict[str, Any] = {
            "schema": self.schema,
            "id": self.id,
            "op": self.op,
            "origin": self.origin,
            "version": self.version,
        }
        if self.ids:
            body["ids"] = list(self.ids)
            body["versions"] = list(self.versions)
        if self.shape is not None:
            body["shape"] = self.shape
        if self.prefix is not None:
            body["prefix"] = self.prefix
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise CodecError(f"invalidation message cannot be encoded: {exc}") from exc

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview | str) -> Invalidation:
        """The message in ``raw``; ``CodecError`` if it is malformed or a heartbeat."""
        message = decode_message(raw)
        if isinstance(message, Heartbeat):
            raise CodecError("invalidation message: a heartbeat, not an invalidation")
        return message


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The bus's liveness probe: published by each instance, only its sender looks at it."""

    origin: str
    seq: int

    def encode(self) -> bytes:
        return orjson.dumps({"op": _HEARTBEAT_OP, "origin": self.origin, "seq": self.seq})


def _field_error(name: str, expected: str) -> CodecError:
    # Fixed text per kind of fault (no values): the bus logs each distinct text once.
    return CodecError(f"invalidation message: {name!r} must be {expected}")


def decode_message(raw: bytes | bytearray | memoryview | str) -> Invalidation | Heartbeat:
    """Whatever the bus may find on its channel: an ``Invalidation`` or a ``Heartbeat``.

    Raises ``CodecError`` for anything else. Unknown extra keys are ignored, so a newer
    sender can add fields without breaking older receivers.
    """
    if not isinstance(raw, bytes | bytearray | memoryview | str):
        raise CodecError("invalidation message: not bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CodecError("invalidation message: not valid JSON") from exc
    if not isinstance(body, dict):
        raise CodecError("invalidation message: not a JSON object")
    origin = body.get("origin")
    if not isinstance(origin, str) or not origin:
        raise _field_error("origin", "a non-empty string")
    op = body.get("op")
    if op == _HEARTBEAT_OP:
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise _field_error("seq", "an integer")
        return Heartbeat(origin=origin, seq=seq)
    if op not in _OPS:
        raise _field_error("op", "one of " + ", ".join(sorted(_OPS)))
    schema = body.get("schema")
    if not isinstance(schema, str) or not schema:
        raise _field_error("schema", "a non-empty string")
    id_ = body.get("id")
    if id_ is not None and not _is_id(id_):
        raise _field_error("id", "a string, an integer or null")
    version = body.get("version")
    if not _is_version(version):
        raise _field_error("version", "an integer or null")
    ids = body.get("ids", [])
    if not isinstance(ids, list) or not all(_is_id(i) for i in ids):
        raise _field_error("ids", "a list of strings or integers")
    versions = body.get("versions", [])
    if not isinstance(versions, list) or not all(_is_version(v) for v in versions):
        raise _field_error("versions", "a list of integers or nulls")
    shape = body.get("shape")
    if shape is not None and not isinstance(shape, str):
        raise _field_error("shape", "a string or null")
    prefix = body.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise _field_error("prefix", "a string or null")
    try:
        return Invalidation(
            schema=schema,
            op=op,
            origin=origin,
            id=id_,
            version=version,
            ids=tuple(ids),
            versions=tuple(versions),
            shape=shape,
            prefix=prefix,
        )
    except ValueError as exc:
        raise CodecError(f"invalidation message: {exc}") from exc
