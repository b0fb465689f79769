"""Model <-> bytes for L2, inside a versioned envelope.

    payload := b"S" | fmt (1 byte) | version (16 lowercase hex digits) | body

    fmt  b"j"  JSON body      {field name: JSON-mode value, ...}
         b"m"  msgpack body   the same mapping, packed
         b"t"  tombstone      no body: the row was deleted at ``version``

The header has a fixed width so the Redis tier's "only if newer" Lua script can compare
``string.sub(payload, 3, 18)`` without decoding anything. The body holds only the schema's
cached fields (omit_cache and transient fields never leave the process through L2; on decode
they take the model defaults). Encrypted fields are carried only as their ciphertext (the
same envelope L3 stores): base64 text in JSON bodies, raw bytes in msgpack bodies.

Fields are keyed by field name, never alias, and always validated from JSON (msgpack bodies
are re-serialised with orjson) so that strict models, custom aliases and bytes settings
round-trip exactly as ``model_validate_json`` would read them.

Size rules (``Config.compress_min_bytes``, ``Config.max_value_bytes``), for rows in L2 and
for the keyed cache alike:

    body longer than compress_min_bytes ──► body := b"Z" | zlib(body)   (header untouched)
    payload longer than max_value_bytes ──► ValueTooLargeError, nothing written

A compressed body starts with ``Z``, which neither a JSON object (``{``) nor a msgpack map
can, so payloads written before compression existed still decode. The header stays outside
the compressed part, so the Lua "only if newer" check reads it as before. ``max_value_bytes``
bounds the stored (compressed) size; decompression is bounded by INFLATE_LIMIT (512 MiB,
Redis's own value limit), so a hostile payload cannot inflate without end.

Keyed-cache entries (``encode_entry`` / ``decode_entry``) have their own envelope:

    entry := b"K1" | kind | key digest (8 bytes) | fresh_until (f64) | ttl (f64) | body
    kind  b"j" orjson value   b"b" raw bytes   b"n" a cached "no value" (negative entry)

The digest binds an entry to its key: an entry copied under another key is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import orjson
import pydantic
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from strata.crypto import FieldCipher
from strata.errors import CodecError, ValueTooLargeError
from strata.schema import ColumnKind, CompiledSchema

__all__ = [
    "FMT_JSON",
    "FMT_MSGPACK",
    "FMT_TOMBSTONE",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_VERSION",
    "ENTRY_HEADER_SIZE",
    "KIND_BYTES",
    "KIND_JSON",
    "KIND_NONE",
    "Entry",
    "ModelCodec",
    "Tombstone",
    "check_size",
    "compress_body",
    "decode_entry",
    "decompress_body",
    "encode_entry",
    "key_digest",
    "peek_version",
]

MAGIC = b"S"
FMT_JSON = b"j"
FMT_MSGPACK = b"m"
FMT_TOMBSTONE = b"t"
HEADER_SIZE = 18
MAX_VERSION = 2**64 - 1

_MAGIC_BYTE = MAGIC[0]
_J, _M, _T = FMT_JSON[0], FMT_MSGPACK[0], FMT_TOMBSTONE[0]
_HEX_DIGITS = b"0123456789abcdef"
_ZLIB = b"Z"
_ZLIB_BYTE = _ZLIB[0]
_ZLIB_LEVEL = 1  # fast: the payloads are JSON, which compresses well even at level 1
INFLATE_LIMIT = 512 * 1024 * 1024  # Redis's own value limit: nothing larger was ever stored


def compress_body(body: bytes, compress_min: int | None) -> bytes:
    """``body``, zlib-compressed behind a ``Z`` marker when longer than ``compress_min``
    (None: never) and when that saves space."""
    if compress_min is None or len(body) <= compress_min:
        return body
    packed = _ZLIB + zlib.compress(body, _ZLIB_LEVEL)
    return packed if len(packed) < len(body) else body


def decompress_body(body: bytes | memoryview, limit: int | None = INFLATE_LIMIT) -> bytes:
    """The inverse of ``compress_body``; uncompressed bodies pass through. CodecError for a
    corrupt stream or one that inflates beyond ``limit`` bytes."""
    if not body or body[0] != _ZLIB_BYTE:
        return bytes(body)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body[1:], limit or 0)
    except zlib.error as exc:
        raise CodecError(f"corrupt compressed body: {exc}") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise CodecError(f"compressed body is truncated or inflates beyond {limit} bytes")
    return out


def check_size(payload_size: int, limit: int | None, what: str) -> None:
    if limit is not None and payload_size > limit:
        raise ValueTooLargeError(
            f"{what}: {payload_size} bytes is more than max_value_bytes ({limit})",
            size=payload_size,
            limit=limit,
        )


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What a decoded tombstone payload yields: the row was deleted at ``version``."""

    version: int


def _header(fmt: bytes, version: int) -> bytes:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, got {version!r}")
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version must fit in an unsigned 64-bit integer, got {version}")
    return b"S%c%016x" % (fmt[0], version)


def _version(payload: bytes) -> int:
    """The header's version; CodecError unless the first 18 bytes are a valid header."""
    if len(payload) < HEADER_SIZE:
        raise CodecError(f"payload truncated ({len(payload)} bytes, header needs {HEADER_SIZE})")
    if payload[0] != _MAGIC_BYTE:
        raise CodecError(f"not a Strata payload (magic byte {payload[:1]!r})")
    digits = payload[2:HEADER_SIZE]
    # int(x, 16) alone would also take "0x", "_", "+" and spaces: demand the canonical form.
    if digits.translate(None, _HEX_DIGITS):
        raise CodecError(f"bad version in payload header: {bytes(digits)!r}")
    return int(digits, 16)


def peek_version(payload: bytes) -> int | None:
    """The version of a valid envelope (any fmt, tombstones included), else None."""
    try:
        version = _version(payload)
    except CodecError:
        return None
    return version if payload[1] in (_J, _M, _T) else None


class ModelCodec:
    """Encodes and decodes one schema's values for L2."""

    __slots__ = (
        "_bytes",
        "_cipher",
        "_compress_min",
        "_encrypted",
        "_fmt",
        "_include",
        "_json",
        "_max_bytes",
        "_model",
        "_pk_field",
        "_plain",
        "_serializer",
        "_table",
        "_validator",
        "cs",
        "fmt",
    )

    def __init__(
        self,
        cs: CompiledSchema,
        cipher: FieldCipher | None,
        fmt: Literal["json", "msgpack"] = "json",
        *,
        compress_min: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if fmt not in ("json", "msgpack"):
            raise ValueError(f"codec fmt must be 'json' or 'msgpack', got {fmt!r}")
        encrypted = [spec for spec in cs.encrypted if spec.field in cs.cached_fields]
        if encrypted and cipher is None:
            raise ValueError(f"{cs.name}: encrypted fields need a FieldCipher")
        self.cs = cs
        self.fmt = fmt
        self._compress_min = compress_min
        self._max_bytes = max_bytes
        self._json = fmt == "json"
        self._fmt = FMT_JSON if self._json else FMT_MSGPACK
        self._cipher = cipher
        self._encrypted = [(spec.field, spec.name) for spec in encrypted]
        self._model = cs.model
        self._serializer = cs.model.__pydantic_serializer__
        self._validator = cs.model.__pydantic_validator__
        self._pk_field = cs.pk.field
        self._table = cs.table.name
        # bytes fields bypass pydantic's JSON mode (which insists on UTF-8): base64 text in
        # JSON bodies, raw in msgpack, and such schemas validate in (lax) Python mode.
        self._bytes = [
            spec.field
            for spec in cs.columns
            if spec.value_kind is ColumnKind.BYTES
            and not spec.meta.encrypted
            and spec.field in cs.cached_fields
        ]
        self._plain = not self._encrypted and not self._bytes
        # include=None serialises every field, which is cheaper than naming them all.
        # (Not with computed fields: include=None would write them, and a model with
        # extra="forbid" would then refuse its own payload.)
        everything = (
            self._plain
            and cs.cached_fields >= cs.model.model_fields.keys()
            and not cs.model.model_computed_fields
        )
        self._include: set[str] | None = (
            None if everything else set(cs.cached_fields).difference(self._bytes)
        )

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    # ----------------------------------------------------------------- encode

    def encode(
        self,
        value: BaseModel,
        version: int,
        ciphertexts: Mapping[str, bytes] | None = None,
    ) -> bytes:
        """The payload for ``value`` at row ``version``.

        Encrypted fields are written as ``ciphertexts[field]`` when given (the envelope L3
        holds), else encrypted here; their plaintext never enters the payload. Bodies over
        ``compress_min`` are compressed; a payload over ``max_bytes`` raises
        ValueTooLargeError.
        """
        payload = self._encode(value, version, ciphertexts)
        if self._compress_min is not None and len(payload) > self._compress_min + HEADER_SIZE:
            payload = payload[:HEADER_SIZE] + compress_body(
                payload[HEADER_SIZE:], self._compress_min
            )
        check_size(len(payload), self._max_bytes, f"{self.cs.name}: cached row")
        return payload

    def _encode(
        self,
        value: BaseModel,
        version: int,
        ciphertexts: Mapping[str, bytes] | None,
    ) -> bytes:
        if not isinstance(value, self._model):
            raise TypeError(f"{self.cs.name}: expected {self._model.__name__}, got {value!r}")
        header = _header(self._fmt, version)
        try:
            if self._json and self._plain:
                return header + self._serializer.to_json(
                    value, include=self._include, by_alias=False
                )
            data: dict[str, Any] = self._serializer.to_python(
                value, mode="json", include=self._include, by_alias=False
            )
        except PydanticSerializationError as exc:
            raise CodecError(f"{self.cs.name}: cannot serialise value: {exc}") from exc
        if self._encrypted:
            self._seal(value, data, ciphertexts)
        for fname in self._bytes:
            raw = getattr(value, fname)
            data[fname] = (
                base64.b64encode(raw).decode("ascii") if self._json and raw is not None else raw
            )
        try:
            body: bytes = (
                orjson.dumps(data) if self._json else msgpack.packb(data, use_bin_type=True)
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"{self.cs.name}: cannot encode value: {exc}") from exc
        return header + body

    def _seal(
        self, value: BaseModel, data: dict[str, Any], ciphertexts: Mapping[str, bytes] | None
    ) -> None:
        assert self._cipher is not None
        pk = getattr(value, self._pk_field)
        as_text = self._json
        for fname, column in self._encrypted:
            blob = ciphertexts.get(fname) if ciphertexts is not None else None
            if blob is None:
                plaintext = orjson.dumps(data[fname])
                blob = self._cipher.encrypt(plaintext, FieldCipher.aad(self._table, pk, column))
            data[fname] = base64.b64encode(blob).decode("ascii") if as_text else bytes(blob)

    def tombstone(self, version: int) -> bytes:
        return _header(FMT_TOMBSTONE, version)

    # ----------------------------------------------------------------- decode

    def decode(self, payload: bytes) -> tuple[BaseModel, int] | Tombstone:
        """``(value, version)``, or a Tombstone. CodecError for anything that is not a
        payload of this schema; DecryptionError when an encrypted field does not decrypt."""
        version = _version(payload)
        fmt = payload[1]
        if len(payload) > HEADER_SIZE and payload[HEADER_SIZE] == _ZLIB_BYTE and fmt != _T:
            payload = payload[:HEADER_SIZE] + decompress_body(memoryview(payload)[HEADER_SIZE:])
        if fmt == _J:
            if self._plain:
                return self._validate(payload[HEADER_SIZE:]), version
            try:
                data = orjson.loads(payload[HEADER_SIZE:])
            except orjson.JSONDecodeError as exc:
                raise CodecError(f"{self.cs.name}: invalid JSON body: {exc}") from exc
        elif fmt == _M:
            try:
                data = msgpack.unpackb(payload[HEADER_SIZE:], raw=False)
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise CodecError(f"{self.cs.name}: invalid msgpack body: {exc}") from exc
        elif fmt == _T:
            if len(payload) != HEADER_SIZE:
                raise CodecError(f"{self.cs.name}: tombstone with a body")
            return Tombstone(version)
        else:
            raise CodecError(f"{self.cs.name}: unknown payload format {payload[1:2]!r}")
        if not isinstance(data, dict):
            raise CodecError(f"{self.cs.name}: body is not a mapping")
        if self._encrypted:
            self._open(data)
        if self._bytes:
            return self._validate_python(data), version
        try:
            body = orjson.dumps(data)
        except TypeError as exc:  # msgpack bytes where JSON has none
            raise CodecError(f"{self.cs.name}: body holds a non-JSON value: {exc}") from exc
        return self._validate(body), version

    def _open(self, data: dict[str, Any]) -> None:
        assert self._cipher is not None
        pk = data.get(self._pk_field)
        for fname, column in self._encrypted:
            blob = data.get(fname)
            if blob is None:
                continue  # absent: the model default applies (and validation decides)
            if isinstance(blob, str):
                try:
                    blob = base64.b64decode(blob, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise CodecError(f"{self.cs.name}.{fname}: ciphertext is not base64") from exc
            elif not isinstance(blob, bytes):
                raise CodecError(f"{self.cs.name}.{fname}: ciphertext is not bytes")
            plaintext = self._cipher.decrypt(blob, FieldCipher.aad(self._table, pk, column))
            if self._bytes:
                try:
                    data[fname] = orjson.loads(plaintext)
                except orjson.JSONDecodeError as exc:
                    raise CodecError(
                        f"{self.cs.name}.{fname}: decrypted value is not JSON"
                    ) from exc
            else:
                # Already JSON: splice it in as is instead of loading and dumping it again.
                data[fname] = orjson.Fragment(plaintext)

    def _validate_python(self, data: dict[str, Any]) -> BaseModel:
        for fname in self._bytes:
            raw = data.get(fname)
            if isinstance(raw, str):
                try:
                    data[fname] = base64.b64decode(raw, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise CodecError(f"{self.cs.name}.{fname}: bytes are not base64") from exc
        try:
            # Lax: the values are JSON-mode text (datetimes, UUIDs, ...), even for strict models.
            value: BaseModel = self._validator.validate_python(
                data, strict=False, by_alias=False, by_name=True
            )
        except pydantic.ValidationError as exc:
            raise self._invalid(exc) from (None if self._encrypted else exc)
        return value

    def _validate(self, body: bytes) -> BaseModel:
        try:
            value: BaseModel = self._validator.validate_json(body, by_alias=False, by_name=True)
        except pydantic.ValidationError as exc:
            # pydantic's message quotes the input, which may hold decrypted values.
            raise self._invalid(exc) from (None if self._encrypted else exc)
        return value

    def _invalid(self, exc: pydantic.ValidationError) -> CodecError:
        return CodecError(
            f"{self.cs.name}: payload does not validate as {self._model.__name__} "
            f"({exc.error_count()} error(s), first: {exc.errors()[0]['msg']})"
        )


# ------------------------------------------------------------------ keyed-cache entries

_ENTRY_MAGIC = b"K1"
_ENTRY_HEAD = struct.Struct(">2sc8sdd")
ENTRY_HEADER_SIZE = _ENTRY_HEAD.size
KIND_JSON = b"j"
KIND_BYTES = b"b"
KIND_NONE = b"n"


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded keyed-cache entry. ``fresh_until`` (epoch seconds, 0 = forever) ends its
    fresh life; ``ttl`` is the life it was written with (0 = none), for refresh-ahead."""

    kind: bytes
    body: bytes
    fresh_until: float
    ttl: float

    @property
    def negative(self) -> bool:
        return self.kind == KIND_NONE

    def value(self) -> Any:
        if self.kind == KIND_BYTES:
            return self.body
        if self.kind == KIND_NONE:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise CodecError(f"keyed cache entry: invalid JSON body: {exc}") from exc


def key_digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


def encode_entry(
    key: str,
    kind: bytes,
    body: bytes,
    *,
    fresh_until: float,
    ttl: float,
    compress_min: int | None,
    max_bytes: int | None,
) -> bytes:
    """The stored form of one keyed-cache value (see the module docstring)."""
    head = _ENTRY_HEAD.pack(_ENTRY_MAGIC, kind, key_digest(key), fresh_until, ttl)
    payload = head + compress_body(body, compress_min)
    check_size(len(payload), max_bytes, f"keyed cache {key!r}")
    return payload


def decode_entry(key: str, payload: bytes) -> Entry:
    """CodecError unless ``payload`` is an entry written for ``key``."""
    if len(payload) < ENTRY_HEADER_SIZE or payload[:2] != _ENTRY_MAGIC:
        raise CodecError(f"keyed cache {key!r}: not a cache entry")
    _, kind, digest, fresh_until, ttl = _ENTRY_HEAD.unpack_from(payload)
    if digest != key_digest(key):
        raise CodecError(f"keyed cache {key!r}: entry was written for another key")
    if kind not in (KIND_JSON, KIND_BYTES, KIND_NONE):
        raise CodecError(f"keyed cache {key!r}: unknown entry kind {kind!r}")
    body = decompress_body(memoryview(payload)[ENTRY_HEADER_SIZE:])
    return Entry(kind, body, fresh_until, ttl)
