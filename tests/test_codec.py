"""The L2 codec: every field type round-trips, secrets stay sealed, corruption is refused."""

from __future__ import annotations

import base64
import enum
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Literal

import orjson
import pydantic
import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from strata.codec import HEADER_SIZE, ModelCodec, Tombstone, peek_version
from strata.config import Config
from strata.crypto import FieldCipher, generate_key
from strata.errors import CodecError, DecryptionError
from strata.fields import Field
from strata.schema import CompiledSchema, Schema, compile_schema

Fmt = Literal["json", "msgpack"]
FORMATS: list[Fmt] = ["json", "msgpack"]
SECRET = "sk_live_7f3a9c1e-not-for-your-eyes"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    zip: str | None = None


class Everything(BaseModel):
    id: str = Field(primary_key=True)
    name: str
    count: int
    ratio: float
    active: bool
    seen_at: datetime
    born: date
    ref: uuid.UUID
    price: Decimal
    color: Color
    address: Address
    tags: list[str]
    attrs: dict[str, int]
    nickname: str | None = None
    at: time = time(0, 0)
    blob: bytes = b""
    maybe_blob: bytes | None = None
    pair: tuple[int, str] = (0, "")
    kind: Literal["x", "y"] = "x"
    password_hash: str = Field(default="", omit_cache=True)
    scratch: str = Field(default="", transient=True)


class Account(BaseModel):
    id: int = Field(primary_key=True)
    owner: str
    api_key: str = Field(default="", encrypted=True)
    pins: list[int] = Field(default_factory=list, encrypted=True)


class Other(BaseModel):
    id: str = Field(primary_key=True)
    required_elsewhere: int


def compiled(model: type[BaseModel], key: str | None = None) -> CompiledSchema:
    config = Config(encryption_key=key or generate_key())
    return compile_schema(
        Schema(name=model.__name__.lower(), model=model),
        config,
        has_cipher=True,
        metadata=sa.MetaData(),
    )


def everything(**changes: Any) -> Everything:
    value = Everything(
        id="e1",
        name="Zoë ✓",
        count=-42,
        ratio=0.1,
        active=True,
        seen_at=datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC),
        born=date(1990, 2, 28),
        ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        price=Decimal("19.990"),
        color=Color.BLUE,
        address=Address(city="Oslo", zip=None),
        tags=["a", "b"],
        attrs={"x": 1, "y": 2},
        nickname=None,
        at=time(23, 59, 58, 999),
        blob=b"\x00\xff\xfe not utf-8 \x80",
        maybe_blob=None,
        pair=(3, "three"),
        kind="y",
        password_hash="argon2$secret-hash",
        scratch="temp",
    )
    return value.model_copy(update=changes)


@pytest.fixture
def cs() -> CompiledSchema:
    return compiled(Everything)


@pytest.fixture
def key() -> str:
    return generate_key()


@pytest.fixture
def account_cs(key: str) -> CompiledSchema:
    return compiled(Account, key)


def decoded(codec: ModelCodec, payload: bytes) -> tuple[BaseModel, int]:
    result = codec.decode(payload)
    assert not isinstance(result, Tombstone)
    return result


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_field_type_round_trips(cs: CompiledSchema, fmt: Fmt) -> None:
    codec = ModelCodec(cs, None, fmt)
    original = everything()

    value, version = decoded(codec, codec.encode(original, 7))

    expected = original.model_copy(update={"password_hash": "", "scratch": ""})
    assert value == expected
    assert version == 7
    assert isinstance(value, Everything)
    assert value.price == Decimal("19.990")
    assert value.seen_at.tzinfo is not None


@pytest.mark.parametrize("blob", [b"", b"plain", b"\xff\x00\x80", bytes(range(256))])
@pytest.mark.parametrize("fmt", FORMATS)
def test_any_bytes_round_trip(cs: CompiledSchema, fmt: Fmt, blob: bytes) -> None:
    codec = ModelCodec(cs, None, fmt)

    value, _ = decoded(codec, codec.encode(everything(blob=blob, maybe_blob=blob), 1))

    assert isinstance(value, Everything)
    assert (value.blob, value.maybe_blob) == (blob, blob)


def test_bytes_that_are_not_base64_raise_codec_error(cs: CompiledSchema) -> None:
    codec = ModelCodec(cs, None)
    body = orjson.loads(codec.encode(everything(), 1)[HEADER_SIZE:])
    body["blob"] = "not base64!"

    with pytest.raises(CodecError, match="base64"):
        codec.decode(b"Sj0000000000000001" + orjson.dumps(body))


@pytest.mark.parametrize("fmt", FORMATS)
def test_payload_starts_with_the_documented_header(cs: CompiledSchema, fmt: Fmt) -> None:
    payload = ModelCodec(cs, None, fmt).encode(everything(), 0xABC)

    assert payload[:HEADER_SIZE] == b"S" + fmt[0].encode() + b"0000000000000abc"


@pytest.mark.parametrize("fmt", FORMATS)
def test_omit_cache_field_is_absent_from_payload_and_default_on_decode(
    cs: CompiledSchema, fmt: Fmt
) -> None:
    codec = ModelCodec(cs, None, fmt)

    payload = codec.encode(everything(password_hash="argon2$secret-hash"), 1)
    value, _ = decoded(codec, payload)

    assert b"argon2$secret-hash" not in payload
    assert b"password_hash" not in payload
    assert isinstance(value, Everything)
    assert value.password_hash == ""


@pytest.mark.parametrize("fmt", FORMATS)
def test_transient_field_is_not_written(cs: CompiledSchema, fmt: Fmt) -> None:
    codec = ModelCodec(cs, None, fmt)

    payload = codec.encode(everything(scratch="temp-value"), 1)

    assert b"temp-value" not in payload
    value, _ = decoded(codec, payload)
    assert isinstance(value, Everything)
    assert value.scratch == ""


@pytest.mark.parametrize("version", [0, 1, 2**32, 2**63, 2**64 - 1])
@pytest.mark.parametrize("fmt", FORMATS)
def test_version_is_preserved(cs: CompiledSchema, fmt: Fmt, version: int) -> None:
    codec = ModelCodec(cs, None, fmt)
    payload = codec.encode(everything(), version)

    assert decoded(codec, payload)[1] == version
    assert peek_version(payload) == version


@pytest.mark.parametrize("version", [-1, 2**64])
def test_version_outside_unsigned_64_bits_is_refused(cs: CompiledSchema, version: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        ModelCodec(cs, None).encode(everything(), version)


def test_versions_compare_as_fixed_width_strings(cs: CompiledSchema) -> None:
    codec = ModelCodec(cs, None)
    versions = [0, 9, 10, 15, 16, 255, 2**32, 2**63, 2**64 - 1]

    headers = [codec.encode(everything(), v)[2:HEADER_SIZE] for v in versions]

    assert headers == sorted(headers)


def test_encoding_a_value_of_another_model_is_a_type_error(cs: CompiledSchema) -> None:
    with pytest.raises(TypeError):
        ModelCodec(cs, None).encode(Other(id="o", required_elsewhere=1), 1)


class Strict(BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    id: str = Field(primary_key=True)
    seen_at: datetime
    ref: uuid.UUID
    nick: str = pydantic.Field(default="", alias="nickName")

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def shout(self) -> str:
        return self.id.upper()


@pytest.mark.parametrize("fmt", FORMATS)
def test_strict_model_with_alias_and_computed_field_round_trips(fmt: Fmt) -> None:
    codec = ModelCodec(compiled(Strict), None, fmt)
    original = Strict(
        id="s1",
        seen_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ref=uuid.UUID(int=7),
        nickName="zed",
    )

    value, _ = decoded(codec, codec.encode(original, 1))

    assert value == original


class StrictVault(BaseModel):
    model_config = pydantic.ConfigDict(strict=True)

    id: uuid.UUID = Field(primary_key=True)
    seen_at: datetime
    color: Color
    blob: bytes
    secret: str = Field(default="", encrypted=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strict_model_with_bytes_and_encrypted_field_round_trips(key: str, fmt: Fmt) -> None:
    codec = ModelCodec(compiled(StrictVault, key), FieldCipher(key), fmt)
    original = StrictVault(
        id=uuid.UUID(int=42),
        seen_at=datetime(2024, 1, 2, tzinfo=UTC),
        color=Color.RED,
        blob=b"\xff\xfe",
        secret=SECRET,
    )

    payload = codec.encode(original, 1)
    value, _ = decoded(codec, payload)

    assert SECRET.encode() not in payload
    assert value == original


# --------------------------------------------------------------------------- tombstones


@pytest.mark.parametrize("version", [0, 5, 2**63])
def test_tombstone_round_trips(cs: CompiledSchema, version: int) -> None:
    codec = ModelCodec(cs, None)

    payload = codec.tombstone(version)

    assert payload == b"St%016x" % version
    assert codec.decode(payload) == Tombstone(version)
    assert peek_version(payload) == version


def test_tombstone_decodes_in_a_codec_of_any_format(cs: CompiledSchema) -> None:
    payload = ModelCodec(cs, None, "json").tombstone(3)

    assert ModelCodec(cs, None, "msgpack").decode(payload) == Tombstone(3)


def test_payload_decodes_in_a_codec_of_the_other_format(cs: CompiledSchema) -> None:
    payload = ModelCodec(cs, None, "msgpack").encode(everything(), 4)

    value, version = decoded(ModelCodec(cs, None, "json"), payload)

    assert value == everything(password_hash="", scratch="")
    assert version == 4


# --------------------------------------------------------------------------- encryption


@pytest.mark.parametrize("fmt", FORMATS)
def test_encrypted_field_is_written_only_as_ciphertext(
    account_cs: CompiledSchema, key: str, fmt: Fmt
) -> None:
    codec = ModelCodec(account_cs, FieldCipher(key), fmt)

    payload = codec.encode(Account(id=1, owner="ann", api_key=SECRET, pins=[4711, 1234]), 2)

    assert SECRET.encode() not in payload
    assert b"4711" not in payload
    assert orjson.dumps(SECRET) not in payload
    assert b"ann" in payload  # the plain field is there, so the check above means something


@pytest.mark.parametrize("fmt", FORMATS)
def test_encrypted_field_decrypts_back(account_cs: CompiledSchema, key: str, fmt: Fmt) -> None:
    codec = ModelCodec(account_cs, FieldCipher(key), fmt)
    original = Account(id=1, owner="ann", api_key=SECRET, pins=[4711, 1234])

    value, version = decoded(codec, codec.encode(original, 2))

    assert value == original
    assert version == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_given_ciphertext_is_used_as_is(account_cs: CompiledSchema, key: str, fmt: Fmt) -> None:
    cipher = FieldCipher(key)
    codec = ModelCodec(account_cs, cipher, fmt)
    sealed = cipher.encrypt(
        orjson.dumps("from-l3"), FieldCipher.aad(account_cs.table.name, 9, "api_key")
    )

    payload = codec.encode(
        Account(id=9, owner="bo", api_key="from-l3"), 1, ciphertexts={"api_key": sealed}
    )

    carried = base64.b64encode(sealed) if fmt == "json" else sealed
    assert carried in payload
    value, _ = decoded(codec, payload)
    assert isinstance(value, Account)
    assert value.api_key == "from-l3"


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_key_raises_decryption_error(account_cs: CompiledSchema, key: str, fmt: Fmt) -> None:
    payload = ModelCodec(account_cs, FieldCipher(key), fmt).encode(
        Account(id=1, owner="ann", api_key=SECRET), 1
    )
    stranger = ModelCodec(account_cs, FieldCipher(generate_key()), fmt)

    with pytest.raises(DecryptionError):
        stranger.decode(payload)


def test_ciphertext_moved_to_another_row_does_not_decrypt(
    account_cs: CompiledSchema, key: str
) -> None:
    codec = ModelCodec(account_cs, FieldCipher(key))
    body = orjson.loads(codec.encode(Account(id=1, owner="ann", api_key=SECRET), 1)[18:])
    body["id"] = 2

    with pytest.raises(DecryptionError):
        codec.decode(b"Sj0000000000000001" + orjson.dumps(body))


def test_codec_for_encrypted_schema_needs_a_cipher(account_cs: CompiledSchema) -> None:
    with pytest.raises(ValueError, match="FieldCipher"):
        ModelCodec(account_cs, None)


# --------------------------------------------------------------------------- corruption


@pytest.fixture(params=FORMATS)
def good(request: pytest.FixtureRequest, cs: CompiledSchema) -> tuple[ModelCodec, bytes]:
    codec = ModelCodec(cs, None, request.param)
    return codec, codec.encode(everything(), 12)


def test_truncated_payload_raises_codec_error(good: tuple[ModelCodec, bytes]) -> None:
    codec, payload = good
    for cut in (0, 1, 2, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3, len(payload) - 1):
        with pytest.raises(CodecError):
            codec.decode(payload[:cut])


def test_wrong_magic_byte_raises_codec_error(good: tuple[ModelCodec, bytes]) -> None:
    codec, payload = good
    with pytest.raises(CodecError, match="magic"):
        codec.decode(b"X" + payload[1:])


@pytest.mark.parametrize("fmt", [b"x", b"J", b"\x00"])
def test_unknown_format_byte_raises_codec_error(good: tuple[ModelCodec, bytes], fmt: bytes) -> None:
    codec, payload = good
    with pytest.raises(CodecError, match="format"):
        codec.decode(payload[:1] + fmt + payload[2:])


@pytest.mark.parametrize(
    "digits",
    [b"000000000000000g", b"00000000000000AB", b"0x00000000000001", b" 00000000000001f", b"-1"],
)
def test_bad_hex_version_raises_codec_error(good: tuple[ModelCodec, bytes], digits: bytes) -> None:
    codec, payload = good
    corrupt = payload[:2] + digits.ljust(16, b"0") + payload[HEADER_SIZE:]

    with pytest.raises(CodecError):
        codec.decode(corrupt)
    assert peek_version(corrupt) is None


@pytest.mark.parametrize("body", [b"\xff\xfe garbage", b"[1, 2, 3]", b"{", b"\xc1", b"null"])
def test_garbage_body_raises_codec_error(good: tuple[ModelCodec, bytes], body: bytes) -> None:
    codec, payload = good
    with pytest.raises(CodecError):
        codec.decode(payload[:HEADER_SIZE] + body)


@pytest.mark.parametrize("fmt", FORMATS)
def test_body_of_another_model_raises_codec_error(cs: CompiledSchema, fmt: Fmt) -> None:
    foreign = ModelCodec(compiled(Other), None, fmt).encode(Other(id="o", required_elsewhere=3), 1)

    with pytest.raises(CodecError) as info:
        ModelCodec(cs, None, fmt).decode(foreign)
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_tombstone_with_a_body_raises_codec_error(cs: CompiledSchema) -> None:
    with pytest.raises(CodecError):
        ModelCodec(cs, None).decode(b"St0000000000000001{}")


def test_corrupt_ciphertext_raises(account_cs: CompiledSchema, key: str) -> None:
    codec = ModelCodec(account_cs, FieldCipher(key))
    body = orjson.loads(codec.encode(Account(id=1, owner="ann", api_key=SECRET), 1)[18:])

    body["api_key"] = "***not base64***"
    with pytest.raises(CodecError, match="base64"):
        codec.decode(b"Sj0000000000000001" + orjson.dumps(body))

    body["api_key"] = base64.b64encode(b"\x01\x02k1" + bytes(40)).decode()
    with pytest.raises(DecryptionError):
        codec.decode(b"Sj0000000000000001" + orjson.dumps(body))


def test_peek_version_of_a_non_envelope_is_none() -> None:
    for value in (b"", b"S", b"hello world, not an envelope", b"Sz0000000000000001"):
        assert peek_version(value) is None


# --------------------------------------------------------------------------- size rules


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_large_compressible_row_is_compressed_and_reads_back(
    cs: CompiledSchema, fmt: Fmt
) -> None:
    codec = ModelCodec(cs, None, fmt, compress_min=1024)
    original = everything(name="x" * 100_000)

    payload = codec.encode(original, 5)

    assert len(payload) < 10_000
    assert payload[HEADER_SIZE : HEADER_SIZE + 1] == b"Z"
    assert peek_version(payload) == 5  # the header stays readable for the Lua check
    value, version = decoded(codec, payload)
    assert (value.name, version) == (original.name, 5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", FORMATS)
def test_payloads_written_without_compression_still_decode(cs: CompiledSchema, fmt: Fmt) -> None:
    old = ModelCodec(cs, None, fmt).encode(everything(name="y" * 50_000), 3)
    new = ModelCodec(cs, None, fmt, compress_min=1024)

    value, _ = decoded(new, old)

    assert value.name == "y" * 50_000  # type: ignore[attr-defined]


def test_a_row_payload_over_max_bytes_is_refused(cs: CompiledSchema) -> None:
    from strata.errors import ValueTooLargeError

    codec = ModelCodec(cs, None, compress_min=None, max_bytes=2_000)
    with pytest.raises(ValueTooLargeError) as caught:
        codec.encode(everything(name="z" * 5_000), 1)
    assert (caught.value.limit, caught.value.size > 2_000) == (2_000, True)


def test_a_corrupt_compressed_body_is_a_codec_error(cs: CompiledSchema) -> None:
    codec = ModelCodec(cs, None, compress_min=1024)
    payload = codec.encode(everything(name="q" * 50_000), 1)
    with pytest.raises(CodecError):
        codec.decode(payload[:-20])


def test_a_cache_entry_moved_to_another_key_is_refused() -> None:
    from strata.codec import KIND_JSON, decode_entry, encode_entry

    payload = encode_entry(
        "{p:cache}:a", KIND_JSON, b"1", fresh_until=0, ttl=0, compress_min=None, max_bytes=None
    )
    assert decode_entry("{p:cache}:a", payload).value() == 1
    with pytest.raises(CodecError):
        decode_entry("{p:cache}:b", payload)
