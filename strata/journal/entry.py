"""Journal entries: what one write-behind write looks like in the Redis Stream.

    stream entry := s schema | i id | v version | o "set" / "delete" | r row | k L2 key

``r`` is the write's L3 row exactly as ``RowMapper.to_row`` makes it (encrypted columns
already sealed: the journal never holds their plaintext), with the omitted columns the writer
did not assign, packed with msgpack. msgpack carries bytes as bytes (any byte string, UTF-8
or not) and the few value types an L3 row holds that msgpack has no type for (datetimes,
dates, times, UUIDs, decimals) as extension types, so a row comes back as it went in.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from strata.errors import (
    CodecError,
    IntegrityError,
    InvalidValueError,
    TierError,
    TierUnavailableError,
)

__all__ = ["JournalEntry", "decode_entry", "is_refusal", "pack", "unpack"]

_DATETIME, _DATE, _TIME, _UUID, _DECIMAL, _BIGINT = 1, 2, 3, 4, 5, 6


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(_TIME, value.isoformat().encode())
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_UUID, value.bytes)
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_DECIMAL, str(value).encode())
    if isinstance(value, int):  # beyond 64 bits
        return msgpack.ExtType(_BIGINT, str(value).encode())
    if isinstance(value, frozenset | set | tuple):
        return list(value)
    raise TypeError(f"cannot journal a value of type {type(value).__name__}")


def _ext(code: int, data: bytes) -> Any:
    if code == _DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == _DATE:
        return dt.date.fromisoformat(data.decode())
    if code == _TIME:
        return dt.time.fromisoformat(data.decode())
    if code == _UUID:
        return uuid.UUID(bytes=data)
    if code == _DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _BIGINT:
        return int(data.decode())
    return msgpack.ExtType(code, data)


def pack(value: Any) -> bytes:
    """msgpack with the extension types above; InvalidValueError for anything else."""
    try:
        packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValueError(f"write-behind journal: {exc}") from exc
    return packed


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_ext, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"write-behind journal: bad entry: {exc}") from exc


@dataclass(slots=True)
class JournalEntry:
    """One write as read back from the journal."""

    schema: str
    id: Any
    version: int
    op: Literal["set", "delete"]
    row: dict[str, Any] | None  # the L3 row (sealed), None for a delete
    kept: frozenset[str] = frozenset()  # omitted columns the writer did not assign
    key: str = ""  # its L2 key (physical)
    stream_ids: list[bytes] = field(default_factory=list)  # entries it stands for


def encode_row(row: Mapping[str, Any] | None, kept: frozenset[str]) -> bytes:
    """The ``r`` field: the row and its kept columns (empty for a delete)."""
    return b"" if row is None else pack([dict(row), sorted(kept)])


def decode_entry(schema: str, stream_id: bytes, fields: Mapping[bytes, bytes]) -> JournalEntry:
    """A stream entry as a JournalEntry; CodecError when it is not one."""
    try:
        op = fields[b"o"].decode()
        version = int(fields[b"v"])
        id = unpack(fields[b"i"])
        raw = fields.get(b"r", b"")
        key = fields.get(b"k", b"").decode()
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"write-behind journal: bad entry {stream_id!r}: {exc}") from exc
    if op not in ("set", "delete"):
        raise CodecError(f"write-behind journal: bad op {op!r} in entry {stream_id!r}")
    row: dict[str, Any] | None = None
    kept: frozenset[str] = frozenset()
    if op == "set":
        row_kept = unpack(raw)
        if not isinstance(row_kept, list) or len(row_kept) != 2:
            raise CodecError(f"write-behind journal: bad row in entry {stream_id!r}")
        row, kept = dict(row_kept[0]), frozenset(row_kept[1])
    return JournalEntry(schema, id, version, op, row, kept, key, [stream_id])  # type: ignore[arg-type]


def is_refusal(exc: BaseException) -> bool:
    """The one place that decides: did L3 refuse these rows (dead letter) or fail (retry)?"""
    if isinstance(exc, TierUnavailableError):
        return False
    if isinstance(exc, IntegrityError | InvalidValueError | CodecError):
        return True
    cause = exc.__cause__
    return (
        isinstance(exc, TierError)
        and cause is not None
        and any(c.__name__ in ("DataError", "DataException") for c in type(cause).__mro__)
    )
